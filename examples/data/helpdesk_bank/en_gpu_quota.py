"""GPU quota intents (A100/H100 hours), English."""

LANG = "en"
CATEGORY = "gpu_quota"

INTENTS = [
    {
        "intent": "check_usage",
        "questions": [
            "How can I check how many GPU hours my project {project} has left?",
            "Where do I see our A100 and H100 consumption?",
            "Is there a command to show my GPU usage this semester?",
            "How do I know how much of our GPU allocation we've burned?",
            "Can I see per-user GPU consumption for {project}?",
        ],
        "answers": [
            "Run `alpin-quota --gpu` on a login node: it shows, for each of your projects, the A100 and H100 hours allocated, consumed and remaining for the current semester. Add `--project {project} --by-user` to see the split between members. Figures are updated every hour.",
            "`alpin-quota --gpu --project {project}` prints the allocation, consumption and balance for A100 and H100 hours separately. With `--by-user` you get the consumption of each member. Data is refreshed hourly, so very recent jobs may not show up yet.",
        ],
        "followups": [
            {
                "q": [
                    "Does the count include jobs that are still running?",
                    "Are running jobs already deducted?",
                ],
                "a": [
                    "No, only finished jobs are counted, with a delay of up to one hour. Running jobs are charged when they end, based on their actual elapsed time.",
                ],
            },
        ],
    },
    {
        "intent": "request_more",
        "questions": [
            "Our project {project} is almost out of GPU hours. How do we request more?",
            "How do I apply for an extra {hours} H100 hours?",
            "What's the procedure to increase our GPU allocation?",
            "We need more A100 time before the paper deadline. Who do I ask?",
            "How long does it take to get extra GPU hours approved?",
        ],
        "answers": [
            'The project leader can submit a supplement request on https://moncompte.calcul-alpin.fr under "Projects" > {project} > "Request resources". Indicate the GPU type, the number of hours (for example {hours}) and a short justification with your current usage. Requests are reviewed within 5 working days; small supplements are usually granted faster.',
            'Additional hours are requested by the project leader through the portal: https://moncompte.calcul-alpin.fr, "Projects" > {project} > "Request resources". State the GPU type, the amount (e.g. {hours} hours) and why you need it. The allocation committee answers within 5 working days.',
        ],
        "followups": [
            {
                "q": [
                    "I'm not the project leader, can I submit it myself?",
                    "Can a regular member file the request?",
                ],
                "a": [
                    "Only the project leader or a deputy they designated can submit it. Ask your project leader to add you as deputy in the project page of the portal if you will handle these requests regularly.",
                ],
            },
        ],
    },
    {
        "intent": "h100_accounting",
        "questions": [
            "Are H100 hours counted the same way as A100 hours?",
            "If I use an H100 for one hour, is it deducted from our A100 hours?",
            "How is GPU time charged, by requested time or actual time?",
            "Do I pay for all 4 GPUs if my job only uses one of them?",
            "How exactly are GPU hours computed on Mont-Blanc?",
        ],
        "answers": [
            "A100 and H100 hours are separate pools: H100 jobs only consume H100 hours. Charges are the number of allocated GPUs times the actual elapsed time, not the requested `--time`. If you allocate 4 GPUs and use only one, all 4 are charged, so request only what your code really uses.",
            "Each GPU type has its own balance, so H100 usage never touches your A100 hours. You are charged for allocated GPUs times real elapsed time: a job with `--gres=gpu:h100:2` running 3 hours costs 6 H100 hours. Idle GPUs in your allocation are charged too.",
        ],
    },
    {
        "intent": "quota_exhausted",
        "questions": [
            "My GPU jobs stay pending with reason AssocGrpGRESMinutes. What does that mean?",
            "Job {job} won't start and the reason mentions GrpGRES. Is it our quota?",
            "What happens when our project runs out of GPU hours?",
            "All our GPU jobs are stuck since this morning, did we hit our limit?",
            "Does the pending reason AssocGrpGRESMinutes mean we're out of hours?",
        ],
        "answers": [
            "The pending reason `AssocGrpGRESMinutes` means the project has used up its GPU hours for that GPU type. Pending jobs stay in the queue but won't start until hours are added. Check with `alpin-quota --gpu` and ask your project leader to request a supplement; meanwhile you can cancel the jobs with `scancel` or switch to another GPU type if you still have hours there.",
            "That reason indicates the project's GPU allocation is exhausted. Confirm with `alpin-quota --gpu`. Your jobs will start automatically once a supplement is granted, so you don't need to resubmit; alternatively, submit under another project with remaining hours using `--account`.",
        ],
    },
    {
        "intent": "request_gpus",
        "questions": [
            "How do I request {gpus} A100 GPUs in my job?",
            "What's the right --gres syntax for H100s?",
            "How do I make sure my job lands on an H100 node and not an A100?",
            "How many GPUs can I ask for on a single node?",
            "How should I write the gres line to get {gpus} H100s?",
        ],
        "answers": [
            "Use the `gpu` partition and name the type in `--gres`: `#SBATCH --partition=gpu` and `#SBATCH --gres=gpu:a100:{gpus}` for A100s, or `--gres=gpu:h100:{gpus}` for H100s. Each node has 4 GPUs of a single type, so ask for at most 4 per node. Also add `--account={project}` so the hours are charged to the right project.",
            "Write `#SBATCH --partition=gpu` and `#SBATCH --gres=gpu:h100:{gpus}` (or `gpu:a100:{gpus}`); the type in `--gres` decides the node type. Nodes have 4 GPUs each, so beyond 4 you need several nodes with `--nodes`. Inside the job, `nvidia-smi` lists the GPUs you received.",
        ],
    },
    {
        "intent": "choose_account",
        "questions": [
            "I belong to two projects. How do I choose which one my GPU hours are charged to?",
            "How can I list the Slurm accounts I'm allowed to use?",
            "My job was charged to the wrong project, how do I avoid that?",
            "What is the --account option for?",
            "How do I charge a job to project {project} instead of my default one?",
        ],
        "answers": [
            'Add `#SBATCH --account={project}` to your script to charge that project. `sacctmgr show assoc user=$USER format=account%20` lists the accounts you can use. Without `--account`, your default account is used; you can change the default on the portal under "Profile".',
            "Hours are charged to the account given by `--account`, e.g. `sbatch --account={project} job.sh`. List your accounts with `sacctmgr show assoc user=$USER format=account%20`. Charges already made cannot be moved, so set the option explicitly when you work on several projects.",
        ],
    },
    {
        "intent": "gpu_utilisation",
        "questions": [
            "How can I check whether my job {job} really uses the GPUs?",
            "Can I run nvidia-smi on the node where my job is running?",
            "My training seems slow, how do I see GPU utilisation during the job?",
            "Is there a way to monitor GPU memory of a running job?",
            "Can I watch nvidia-smi for a job that's already running?",
        ],
        "answers": [
            "Attach to the running job with `srun --jobid={job} --overlap nvidia-smi`; it shows utilisation and memory for the GPUs of that job. For continuous monitoring, use `srun --jobid={job} --overlap nvidia-smi -l 5`. Low utilisation often points to a data loading bottleneck, so try more DataLoader workers.",
            "Run `srun --jobid={job} --overlap --pty nvidia-smi` from a login node to see the job's GPUs. If utilisation stays low, check the number of CPU cores you requested (`--cpus-per-task`) and your data loading. After the job, `seff {job}` summarises CPU and memory efficiency.",
        ],
    },
]
