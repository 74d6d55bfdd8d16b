"""Scheduling intents (Slurm), English."""

LANG = "en"
CATEGORY = "scheduling"

INTENTS = [
    {
        "intent": "submit_batch",
        "questions": [
            "How do I submit a batch job on Mont-Blanc?",
            "What's the minimal Slurm script to run my Python program on the cluster?",
            "I've never used Slurm. How do I launch a job with sbatch?",
            "Can you give me an example sbatch script for a single-core job?",
            "Where do I find the output of a job I submitted with sbatch?",
        ],
        "answers": [
            "Write a script, e.g. `job.sh`, starting with `#!/bin/bash` and a few directives: `#SBATCH --partition=cpu`, `#SBATCH --time=02:00:00`, `#SBATCH --account={project}`, then your commands (`module load python/3.11` and `python my_script.py`). Submit it with `sbatch job.sh`; Slurm prints the job id. Output goes to `slurm-<jobid>.out` in the submission directory unless you set `#SBATCH --output`.",
            "Put your commands in a shell script with `#SBATCH` lines at the top, for example `--partition=cpu`, `--cpus-per-task=1`, `--time=01:00:00` and `--account={project}`. Run `sbatch job.sh` from a login node and note the job id it returns. Standard output is written to `slurm-<jobid>.out` by default.",
        ],
        "followups": [
            {
                "q": [
                    "And how do I ask for more memory?",
                    "What if my program needs 32 GB of RAM?",
                ],
                "a": [
                    "Add `#SBATCH --mem=32G` to the script (memory per node). Without it you get the partition default of 4 GB per core, and a job exceeding its request is killed with an OUT_OF_MEMORY state.",
                ],
            },
            {
                "q": [
                    "How can I check how much memory the job actually used?",
                    "Is there a way to see the peak memory afterwards?",
                ],
                "a": [
                    "Once the job has finished, run `seff <jobid>`: it reports the peak memory and CPU efficiency. `sacct -j <jobid> --format=JobID,MaxRSS,Elapsed` gives the same data per step.",
                ],
            },
        ],
    },
    {
        "intent": "check_queue",
        "questions": [
            "How can I see my jobs in the queue?",
            "Which command lists only my running and pending jobs?",
            "How do I check whether job {job} is still running?",
            "Is there a way to see when my pending job will start?",
            "What's the squeue command for my own jobs only?",
        ],
        "answers": [
            "Use `squeue -u $USER` to list your jobs with their state (R for running, PD for pending) and the pending reason. For a single job, `squeue -j {job}` works too. `squeue -u $USER --start` shows Slurm's estimated start time for pending jobs, which can shift as other jobs finish.",
            "`squeue -u $USER` shows all your jobs; the ST column gives the state and NODELIST(REASON) explains why a job waits. For a specific job, try `squeue -j {job}`, or `sacct -j {job}` if it has already finished. Add `--start` to get an estimated start time.",
        ],
    },
    {
        "intent": "cancel_job",
        "questions": [
            "How do I cancel job {job}?",
            "I submitted a job with the wrong parameters, how do I kill it?",
            "Can I cancel all my jobs at once?",
            "What's the command to stop a running Slurm job?",
            "How do I remove only my pending jobs from the queue?",
        ],
        "answers": [
            "Run `scancel {job}` to cancel a job, whether it is pending or running. To cancel everything you own, use `scancel -u $USER`; to drop only the pending ones, add `--state=PENDING`. A cancelled job shows the state CANCELLED in `sacct`.",
            "`scancel {job}` stops one job immediately. `scancel -u $USER` removes all your jobs, and `scancel -u $USER --state=PENDING` only the ones still waiting. For a job array, `scancel {job}_3` cancels a single task.",
        ],
    },
    {
        "intent": "partitions_limits",
        "questions": [
            "Which partitions are available on Mont-Blanc and what are their time limits?",
            "What's the maximum walltime I can request?",
            "My job needs 4 days. Which partition should I use?",
            "What's the difference between the cpu, gpu and long partitions?",
            "How do I list the partitions and their limits myself?",
        ],
        "answers": [
            "There are three main partitions: `cpu` (default, up to 24 hours), `gpu` (A100 and H100 nodes, up to 48 hours) and `long` (CPU only, up to 7 days). A 4-day CPU job therefore goes to `--partition=long`. You can list partitions and limits yourself with `sinfo -s` or `scontrol show partition`.",
            "`cpu` is the default partition with a 24-hour limit, `gpu` hosts the A100 and H100 nodes with a 48-hour limit, and `long` allows CPU jobs up to 7 days. Request the time with `#SBATCH --time=4-00:00:00` for example. `sinfo -s` prints the current partitions and their limits.",
        ],
        "followups": [
            {
                "q": [
                    "Is there a long partition for GPU jobs too?",
                    "What if my GPU training needs more than 48 hours?",
                ],
                "a": [
                    "GPU jobs are limited to 48 hours; there is no long GPU partition. For longer trainings, save checkpoints regularly and chain jobs with `sbatch --dependency=afterany:<jobid> job.sh`, so each job resumes from the last checkpoint.",
                ],
            },
        ],
    },
    {
        "intent": "job_array",
        "questions": [
            "How do I run the same script on {n} different input files?",
            "Can you explain Slurm job arrays?",
            "I need to launch {n} similar jobs, is there something better than a loop of sbatch?",
            "How do I get the task index inside a job array?",
            "Is there a way to submit a parameter sweep of {n} runs as one job?",
        ],
        "answers": [
            "Use a job array: `sbatch --array=1-{n} job.sh` submits {n} tasks from one script. Inside the script, `$SLURM_ARRAY_TASK_ID` gives the index, e.g. `python run.py --input data_$SLURM_ARRAY_TASK_ID.txt`. You can cap concurrency with `--array=1-{n}%10`, and `%A_%a` in `--output` names the logs per task.",
            "A job array groups similar tasks under one job id: `sbatch --array=1-{n} job.sh` creates {n} of them. Each task reads its index from `$SLURM_ARRAY_TASK_ID` to pick its input file. Add `%5` after the range (`--array=1-{n}%5`) if you want at most 5 tasks running at once.",
        ],
        "followups": [
            {
                "q": [
                    "How do I cancel just one task of the array?",
                    "One of the tasks is stuck, can I cancel only that one?",
                ],
                "a": [
                    "Use `scancel <jobid>_<index>` to cancel a single task, for example `scancel 123456_7`. `scancel <jobid>` without an index cancels the whole array.",
                ],
            },
        ],
    },
    {
        "intent": "pending_reason",
        "questions": [
            "My job {job} has been pending for hours on the {partition} partition. Why?",
            "What do the reasons Priority and Resources mean in squeue?",
            "squeue shows my job waiting with reason QOSMaxJobsPerUserLimit. What does that mean?",
            "Why doesn't my job start even though I see idle nodes?",
            "Job stuck in PD state, how can I understand the reason?",
        ],
        "answers": [
            "Check the REASON column of `squeue -j {job}`. `Resources` means your job is next but waits for nodes to free up; `Priority` means other jobs are ahead of yours; `QOSMaxJobsPerUserLimit` means you already have the maximum number of running jobs. Shorter `--time` requests often start sooner thanks to backfill.",
            "Run `squeue -j {job}` and look at the reason. With `Priority`, jobs with higher fair-share come first; with `Resources`, yours is next in line. Idle nodes may be reserved for a larger job, so lowering your `--time` lets backfill slot yours in earlier. `QOSMaxJobsPerUserLimit` simply means you hit the per-user running-job cap.",
        ],
    },
    {
        "intent": "timeout",
        "questions": [
            "My job ended with state TIMEOUT. What happened?",
            "Job {job} was killed before finishing, the log says DUE TO TIME LIMIT.",
            "How do I give my job more time?",
            "Can I extend the time limit of a job that is already running?",
            "Slurm cancelled my job because of the time limit. How do I avoid that next time?",
        ],
        "answers": [
            "TIMEOUT means the job reached the `--time` you requested and Slurm stopped it. Resubmit with a larger value, e.g. `#SBATCH --time=20:00:00`, within the partition limit (24 h on `cpu`, 48 h on `gpu`, 7 days on `long`). Users cannot extend a running job; for a one-off exception, email support@calcul-alpin.fr with the job id.",
            "The job used up its requested walltime. Increase `#SBATCH --time` (check `sinfo -s` for partition limits) or make your program save checkpoints so it can resume. Running jobs cannot be extended by users; support@calcul-alpin.fr may grant a small extension if you send the job id before it ends.",
        ],
    },
    {
        "intent": "interactive_session",
        "questions": [
            "How do I get an interactive shell on a compute node?",
            "I want to debug my code interactively on a GPU node. How?",
            "Can I run things directly on the login node?",
            "What's the Slurm equivalent of logging into a compute node?",
            "How do I open a shell on a GPU node for quick tests?",
        ],
        "answers": [
            "Login nodes are only for editing, compiling and submitting; heavy runs there get killed. For an interactive shell, use `srun --partition=cpu --time=01:00:00 --pty bash`, or on a GPU node `srun --partition=gpu --gres=gpu:a100:1 --time=01:00:00 --account={project} --pty bash`. Exit the shell to release the resources.",
            "Request an interactive allocation with `srun --pty bash` plus your options, e.g. `srun --partition=gpu --gres=gpu:a100:1 --time=00:30:00 --account={project} --pty bash`. You land on the compute node once the resources are free. Please avoid running computations on the login nodes.",
        ],
    },
]
