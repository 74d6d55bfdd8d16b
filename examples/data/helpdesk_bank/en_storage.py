"""Storage intents (quotas, purge, transfers), English."""

LANG = "en"
CATEGORY = "storage"

INTENTS = [
    {
        "intent": "quotas_overview",
        "questions": [
            "What are the storage spaces on Mont-Blanc and their quotas?",
            "What's the difference between home, work and scratch?",
            "Where should I store my datasets?",
            "Which directories are backed up?",
            "How much space do I get in my home directory?",
        ],
        "answers": [
            "There are three spaces: `/home/{user}` (50 GB, backed up nightly, for code and configs), `/work/{project}` (1 TB per project, shared, not purged but not backed up) and `/scratch/{user}` (10 TB, fast, no backup, files unused for 30 days are purged). Keep datasets you reuse in `/work`, and put temporary job data and checkpoints in `/scratch`.",
            "Home (`/home/{user}`, 50 GB) is the only backed-up space, so keep code and important small files there. Project data goes to `/work/{project}` (1 TB shared, no purge, no backup), and large temporary files to `/scratch/{user}` (10 TB, purged after 30 days without access). Datasets usually belong in `/work`, staged to `/scratch` for heavy I/O.",
        ],
        "followups": [
            {
                "q": [
                    "Can the work quota be increased?",
                    "1 TB is not enough for our project, can we get more in /work?",
                ],
                "a": [
                    'Yes, the project leader can ask for more `/work` space on the portal, under "Projects" > "Request resources", with an estimate of the volume needed. Increases up to 5 TB are usually granted within a few days.',
                ],
            },
        ],
    },
    {
        "intent": "check_usage",
        "questions": [
            "How do I check how much of my storage quota I'm using?",
            "Is there a command to see my home and scratch usage?",
            "How can I find which folders take the most space?",
            "I think I'm close to my quota on /work/{project}, how do I check?",
            "How do I see how full my scratch and home are?",
        ],
        "answers": [
            "Run `alpin-quota` on a login node: it shows used space and file counts against the limits for your home, scratch and projects. To find what takes space, use `du -sh * | sort -h` inside a directory, or `ncdu /work/{project}` for an interactive view.",
            "`alpin-quota` lists the space and number of files used in `/home/{user}`, `/scratch/{user}` and `/work/{project}`, with their limits. Then `du -sh * | sort -h` (or the interactive `ncdu`) shows which subdirectories are the largest.",
        ],
    },
    {
        "intent": "purge_policy",
        "questions": [
            "Are files on scratch deleted automatically?",
            "Some of my files disappeared from /scratch/{user}. What happened?",
            "How long can I keep data on scratch?",
            "Do I get a warning before the scratch purge?",
            "Can you restore files removed by the scratch purge?",
        ],
        "answers": [
            "Files on `/scratch` not accessed for 30 days are deleted by a nightly purge, and scratch is not backed up, so purged files cannot be restored. You receive an email listing files due for deletion 7 days before. Copy results you want to keep to `/work/{project}` or download them.",
            "Scratch is for temporary data: files untouched for 30 days are purged automatically, with a warning email 7 days in advance. There is no backup, so support cannot recover them. Move anything important to `/work/{project}` or your home directory.",
        ],
    },
    {
        "intent": "upload_rsync",
        "questions": [
            "How do I copy my dataset from my laptop to the cluster?",
            "What's the best way to transfer {size} of data to Mont-Blanc?",
            "My scp upload keeps breaking. Is there something resumable?",
            "How do I upload a folder to my scratch directory?",
            "Which host should I use for large uploads?",
        ],
        "answers": [
            "Use rsync, which can resume interrupted transfers: `rsync -avP data/ {user}@mont-blanc.calcul-alpin.fr:/scratch/{user}/`. For transfers above about 100 GB, connect to the data transfer node instead: `rsync -avP data/ {user}@dtn.calcul-alpin.fr:/scratch/{user}/`. Re-running the same command continues where it stopped.",
            "rsync is the most reliable option: `rsync -avP data/ {user}@mont-blanc.calcul-alpin.fr:/scratch/{user}/` shows progress and skips files already transferred, so you can just rerun it after a cut. For big volumes (over about 100 GB), use `dtn.calcul-alpin.fr` as the host, which is dedicated to transfers.",
        ],
        "followups": [
            {
                "q": [
                    "Should I compress the data before sending it?",
                    "Is it better to tar everything first?",
                ],
                "a": [
                    "For many small files, yes: a single `tar` archive transfers much faster and is kinder to the file system. For already compressed data (images, videos, parquet), `rsync -avP` as is works fine; avoid adding `-z` for those.",
                ],
            },
        ],
    },
    {
        "intent": "download_scp",
        "questions": [
            "How do I download my results from the cluster to my computer?",
            "What's the scp command to fetch a file from /work/{project}?",
            "Can I copy files from Mont-Blanc to my laptop with a GUI?",
            "How do I get my output files back?",
            "What command copies a results folder from the cluster back to my machine?",
        ],
        "answers": [
            "Run the command from your own computer, not from the cluster: `scp {user}@mont-blanc.calcul-alpin.fr:/work/{project}/results.tar.gz .` for one file, or `rsync -avP {user}@mont-blanc.calcul-alpin.fr:/work/{project}/results/ ./results/` for a folder. Graphical clients such as FileZilla or WinSCP also work with SFTP on the same host.",
            "From your laptop, use `rsync -avP {user}@mont-blanc.calcul-alpin.fr:/work/{project}/results/ ./results/` (resumable) or `scp` for a single file. If you prefer a GUI, connect FileZilla or WinSCP in SFTP mode to `mont-blanc.calcul-alpin.fr` with your SSH key.",
        ],
    },
    {
        "intent": "home_full",
        "questions": [
            "My home is full and I don't know why. What usually fills it?",
            "Disk quota exceeded in /home/{user}, how do I free space?",
            "I can't even save a file, it says my home quota is exceeded.",
            "What hidden folders take space in my home directory?",
            "I get Disk quota exceeded in my home directory. How do I clean it up?",
        ],
        "answers": [
            "Hidden caches are the usual suspects: `~/.cache/pip`, `~/.cache/huggingface`, `~/.conda` and `~/.local`. Check with `du -sh ~/.[!.]* | sort -h`, then clear caches with `pip cache purge` and `conda clean -a`. To prevent it, point caches to your project space, e.g. `export HF_HOME=/work/{project}/hf_cache` in your `~/.bashrc`.",
            "Run `du -sh ~/.[!.]* ~/* | sort -h` to see what is big; caches (`~/.cache`, `~/.conda`) are often several GB. `pip cache purge` and `conda clean -a` free them safely. Then move conda environments and the Hugging Face cache to `/work/{project}` so your 50 GB home stays for code and configs.",
        ],
    },
    {
        "intent": "inode_quota",
        "questions": [
            "alpin-quota says I'm at my file limit but I have plenty of space left. How?",
            "What is the file count quota on /work?",
            "My job fails with Disk quota exceeded although the volume is fine.",
            "I have millions of small files in my dataset. Is that a problem?",
            "Why does the quota tool complain about the number of files?",
        ],
        "answers": [
            "Besides volume, each space limits the number of files: 500,000 in home and 2 million per project in `/work`. Millions of small files hit that limit and also slow down the file system. Pack them into archives (`tar`), or into formats like HDF5, WebDataset shards or Parquet; `alpin-quota` shows both limits.",
            "Each space limits both volume and file count (inodes): home allows 500,000 files and `/work/{project}` 2 million, so you can hit the file limit with space left. Group small files into archives or shard formats such as WebDataset or Parquet, and remove unneeded environments or caches, which contain many files. Check progress with `alpin-quota`.",
        ],
    },
]
