"""Fine-tuning intents (multi-GPU, checkpoints, Hugging Face cache, offline nodes), English."""

LANG = "en"
CATEGORY = "finetuning"

INTENTS = [
    {
        "intent": "offline_download",
        "questions": [
            "My fine-tuning job can't download {model} from the Hugging Face Hub. Why?",
            "from_pretrained hangs and then fails with a connection error on the compute node.",
            "Do compute nodes have internet access?",
            "How do I get a model from the Hub onto the cluster for training?",
            "What's the right way to use {model} in a job if the nodes are offline?",
        ],
        "answers": [
            'Compute nodes have no internet access, so downloads must happen on a login node first. Run `huggingface-cli download {model}` there (with `HF_HOME` pointing to your project space), then add `export HF_HUB_OFFLINE=1` to your job script so `from_pretrained("{model}")` reads from the local cache without trying the network.',
            "Only login nodes can reach the internet. Download the weights beforehand with `huggingface-cli download {model}` on a login node, using the same `HF_HOME` as in your job. In the sbatch script, set `export HF_HUB_OFFLINE=1`; the model then loads from the cache instead of timing out on the network.",
        ],
        "followups": [
            {
                "q": [
                    "The model is gated. How do I authenticate?",
                    "It says I need to accept the licence and log in first.",
                ],
                "a": [
                    "Accept the licence on the model page of the Hub, then run `huggingface-cli login` on a login node and paste an access token; it is stored under `HF_HOME`. The download will then work, and jobs only read the local copy.",
                ],
            },
            {
                "q": [
                    "Does the same apply to datasets from the Hub?",
                    "And for datasets, same thing?",
                ],
                "a": [
                    "Yes. Load or download the dataset once on a login node (for example with `huggingface-cli download --repo-type dataset <name>`), then set `export HF_DATASETS_OFFLINE=1` in the job alongside `HF_HUB_OFFLINE=1`.",
                ],
            },
        ],
    },
    {
        "intent": "hf_home",
        "questions": [
            "Where should I put the Hugging Face cache on Mont-Blanc?",
            "My home filled up after downloading {model}. How do I move the HF cache?",
            "What is HF_HOME and what should I set it to?",
            "Can my team share one Hugging Face cache instead of everyone downloading the same models?",
            "How do I stop transformers from saving models into my home directory?",
        ],
        "answers": [
            "By default the cache goes to `~/.cache/huggingface`, which quickly fills your 50 GB home. Add `export HF_HOME=/work/{project}/hf_cache` to your `~/.bashrc` so login nodes and jobs use the same location. Everyone in your project can point to this directory and share downloaded models. Then remove the old cache with `rm -rf ~/.cache/huggingface`.",
            "Set `export HF_HOME=/work/{project}/hf_cache` in your `~/.bashrc`; all Hugging Face libraries then store models, datasets and your token there. Since `/work` is shared by the project, teammates using the same `HF_HOME` reuse the weights instead of downloading them again. Delete `~/.cache/huggingface` afterwards to free your home.",
        ],
    },
    {
        "intent": "multi_gpu_single_node",
        "questions": [
            "How do I fine-tune on {gpus} GPUs on one node?",
            "What's a good sbatch script for accelerate launch with several A100s?",
            "Should I use torchrun or accelerate for multi-GPU training on the cluster?",
            "My training only uses one GPU although I requested {gpus}. What's wrong?",
            "Can you show me how to launch a {gpus}-GPU fine-tuning with accelerate?",
        ],
        "answers": [
            "Request the GPUs with `#SBATCH --partition=gpu`, `#SBATCH --gres=gpu:a100:{gpus}` and about 8 CPUs per GPU (`--cpus-per-task`). Then start one process per GPU with `accelerate launch --num_processes {gpus} train.py`, or `torchrun --nproc_per_node={gpus} train.py`; both work. Running `python train.py` directly only uses one GPU.",
            "Besides allocating the GPUs, you need one process per GPU. In your job, use `torchrun --nproc_per_node={gpus} train.py` or `accelerate launch --num_processes {gpus} train.py`, with `#SBATCH --gres=gpu:a100:{gpus}` in the header. Check with `nvidia-smi` that every GPU shows a process.",
        ],
        "followups": [
            {
                "q": [
                    "How many CPUs should I request alongside?",
                    "Do I need to ask for CPU cores too?",
                ],
                "a": [
                    "Each GPU node has 32 cores for its 4 GPUs, so request about 8 cores per GPU: `#SBATCH --cpus-per-task={cpus}` for {gpus} GPUs with a single task. That leaves enough cores for the DataLoader workers.",
                ],
            },
        ],
    },
    {
        "intent": "multi_node",
        "questions": [
            "How do I run a training on two nodes with torchrun?",
            "I need 8 H100s for my fine-tuning. How do I set up a multi-node job?",
            "What's MASTER_ADDR supposed to be in a Slurm multi-node job?",
            "My multi-node run hangs at NCCL init. Any advice?",
            "What does a two-node torchrun sbatch script look like?",
        ],
        "answers": [
            "Request `--nodes=2`, `--ntasks-per-node=1` and `--gres=gpu:h100:4`, then in the script set `MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)` and run `srun torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:29500 train.py`. If it hangs at NCCL init, add `export NCCL_DEBUG=INFO` and send us the log.",
            "Use one `torchrun` per node launched by `srun`: `#SBATCH --nodes=2 --ntasks-per-node=1 --gres=gpu:h100:4`, then `srun torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:29500 train.py`. `MASTER_ADDR` is the first node of the allocation, from `scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1`. For NCCL hangs, `NCCL_DEBUG=INFO` shows where it stops.",
        ],
    },
    {
        "intent": "checkpoints_scratch",
        "questions": [
            "Where should my fine-tuning job write its checkpoints?",
            "My checkpoints for {model} filled my quota. Where should they go?",
            "Is it OK to save checkpoints to /work?",
            "How do I avoid losing checkpoints to the scratch purge?",
            "Which filesystem is best for saving training checkpoints?",
        ],
        "answers": [
            "Write checkpoints to `/scratch/{user}/checkpoints`: it is fast and has 10 TB, whereas home is only 50 GB. Limit how many you keep (e.g. `save_total_limit=2` in the Trainer). Scratch is purged after 30 days without access and not backed up, so copy the final model to `/work/{project}` when training ends.",
            "Use `/scratch/{user}/checkpoints` as the output directory during training, and keep only the last few checkpoints with `save_total_limit`. When you are done, copy the checkpoint you want to keep with `rsync -a` to `/work/{project}`, because files untouched on scratch for 30 days are deleted.",
        ],
    },
    {
        "intent": "resume_after_timeout",
        "questions": [
            "My training hit the 48-hour limit. How do I continue from where it stopped?",
            "How do I resume a Hugging Face Trainer run from the last checkpoint?",
            "Can I automatically chain jobs for a long fine-tuning?",
            "Job {job} timed out in the middle of an epoch, did I lose everything?",
            "How can I restart my fine-tuning from the last saved step after a timeout?",
        ],
        "answers": [
            "You keep everything up to the last saved checkpoint. Resubmit the same script with `trainer.train(resume_from_checkpoint=True)`, which picks the latest checkpoint in `output_dir`. To chain automatically, submit the next job with `sbatch --dependency=afterany:{job} train.sh`; it starts when the previous one ends.",
            "Nothing is lost up to your last checkpoint. With the Trainer, call `trainer.train(resume_from_checkpoint=True)` on the same `output_dir` and it resumes model, optimizer and scheduler state. Chain runs with `sbatch --dependency=afterany:{job} train.sh`, and save often enough (e.g. every hour) to limit lost work.",
        ],
    },
    {
        "intent": "wandb_offline",
        "questions": [
            "Can I use Weights & Biases from compute nodes?",
            "wandb.init hangs in my job. How do I log without internet?",
            "How do I sync my offline wandb runs?",
            "Is there a way to follow my training curves if nodes are offline?",
            "How do I use wandb if the compute nodes have no internet?",
        ],
        "answers": [
            "Compute nodes cannot reach wandb.ai, so set `export WANDB_MODE=offline` in your job script; runs are stored locally under `wandb/`. Afterwards, from a login node, run `wandb sync wandb/offline-run-*` to upload them. Alternatively, TensorBoard logs on `/scratch` can be viewed through an SSH tunnel.",
            "Use offline mode: `export WANDB_MODE=offline` in the job, then `wandb sync wandb/offline-run-*` on a login node, which has internet. You can run the sync periodically while training to follow progress. TensorBoard is another option, since it only writes local files.",
        ],
    },
    {
        "intent": "cuda_oom",
        "questions": [
            "My fine-tuning of {model} crashes with CUDA out of memory. What can I do?",
            "torch.OutOfMemoryError on an A100 80GB, any tips?",
            "How do I fit a 7B model fine-tuning on the GPUs I have?",
            "Should I switch to H100 to avoid out-of-memory errors?",
            "I run out of GPU memory when fine-tuning, what are the usual fixes?",
        ],
        "answers": [
            "A100 and H100 nodes both have 80 GB per GPU, so switching type won't help with memory. Lower the per-device batch size and raise gradient accumulation, enable `gradient_checkpointing=True` and train in bf16. For a full fine-tuning, shard the model across GPUs with FSDP or DeepSpeed ZeRO-3; LoRA also cuts memory a lot.",
            "Both GPU types have 80 GB, so focus on the training setup: bf16, a smaller per-device batch with gradient accumulation, and gradient checkpointing. If the model still doesn't fit for full fine-tuning, use FSDP across several GPUs, or a LoRA adapter instead.",
        ],
    },
]
