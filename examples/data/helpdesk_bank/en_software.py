"""Software intents (modules, conda/venv, Apptainer), English."""

LANG = "en"
CATEGORY = "software"

INTENTS = [
    {
        "intent": "module_avail",
        "questions": [
            "How do I see which software is installed on Mont-Blanc?",
            "Is GROMACS available on the cluster?",
            "module avail doesn't show the package I need. How do I search properly?",
            "How do I find all the versions of a library available as modules?",
            "What's the difference between module avail and module spider?",
        ],
        "answers": [
            "Software is provided as environment modules. `module avail` lists what can be loaded right now, while `module spider <name>` searches the whole tree, including modules that need a compiler or MPI loaded first. For example, `module spider gromacs` shows every version and what to load before it.",
            "Use `module spider <name>` to search all installed versions (e.g. `module spider gromacs`), then `module spider gromacs/<version>` to see the prerequisites. `module avail` only shows modules loadable with your current environment, which is why some packages seem missing.",
        ],
    },
    {
        "intent": "module_load_cuda",
        "questions": [
            "How do I load CUDA on the GPU nodes?",
            "Which CUDA version should I use with PyTorch on Mont-Blanc?",
            "nvcc: command not found on the GPU node. What am I missing?",
            "How do I load cuda 12.4 in my job script?",
            "What module do I load to get the CUDA toolkit?",
        ],
        "answers": [
            "Load it with `module load cuda/12.4` (add the same line to your job script, after the `#SBATCH` lines). `module list` confirms what is loaded and `nvcc --version` should then work. If you install PyTorch with pip, its wheels ship their own CUDA runtime, so the module is only needed for compiling CUDA code.",
            "CUDA is not loaded by default: run `module load cuda/12.4`, then `nvcc --version` to check. Put the `module load` line in your sbatch script so compute jobs get the same environment. Pip PyTorch wheels bundle their CUDA runtime, so only pick the module version that matches if you compile extensions.",
        ],
        "followups": [
            {
                "q": [
                    "Should I also load cudnn separately?",
                    "Do I need a cuDNN module as well?",
                ],
                "a": [
                    "Only if you compile code against it: `module load cudnn/9.1-cuda12` matches CUDA 12.4. PyTorch installed with pip already includes cuDNN, so you don't need the module for running it.",
                ],
            },
        ],
    },
    {
        "intent": "install_request",
        "questions": [
            "Could you install a software package I need on the cluster?",
            "The version of OpenFOAM I need isn't available. Can support add it?",
            "Can I install software myself without root?",
            "How do I ask for a new module to be installed?",
            "Can the support team add a package to the module system?",
        ],
        "answers": [
            "You can install most tools yourself in your project space, e.g. with pip, conda or by compiling into `/work/{project}/opt`; no root is needed. For widely used software, email support@calcul-alpin.fr with the name, version and a link, and we will consider adding it as a module. Allow about a week for new installations.",
            "Many packages can be installed without root in `/work/{project}` using pip, conda or Apptainer containers. If several users need it, send the name, version and download link to support@calcul-alpin.fr and we will evaluate a system-wide module. Installation typically takes a few working days.",
        ],
    },
    {
        "intent": "conda_env",
        "questions": [
            "Can I use conda on Mont-Blanc?",
            "How do I create a conda environment without filling my home directory?",
            "My conda env in home hit the quota. Where should environments live?",
            "What's the recommended way to set up conda for a project?",
            "Is there a conda module or should I install Miniconda myself?",
        ],
        "answers": [
            "Conda is provided: `module load miniforge` gives you conda and mamba, no need to install your own. Create environments in your project space to spare your 50 GB home, e.g. `conda create -p /work/{project}/envs/myenv python=3.11`, and activate with `conda activate /work/{project}/envs/myenv`. Also run `conda config --add pkgs_dirs /work/{project}/conda_pkgs` so the package cache stays out of home.",
            "Load the provided installation with `module load miniforge`. Environments and the package cache should go to `/work/{project}`, not home: use `conda create -p /work/{project}/envs/myenv python=3.11` and `conda config --add pkgs_dirs /work/{project}/conda_pkgs`. Create environments on a login node, since compute nodes have no internet access.",
        ],
        "followups": [
            {
                "q": [
                    "How do I activate that environment inside an sbatch script?",
                    "And in a batch job, what do I put in the script?",
                ],
                "a": [
                    'Add `module load miniforge` then `conda activate /work/{project}/envs/myenv` before your command. If activation complains, insert `eval "$(conda shell.bash hook)"` after the module load.',
                ],
            },
        ],
    },
    {
        "intent": "python_venv",
        "questions": [
            "How do I create a Python virtual environment on the cluster?",
            "Should I use venv or conda for a pip-only project?",
            "pip install fails on the compute node with a network error. Why?",
            "Where should I put my venv?",
            "What's the recommended way to use pip packages on Mont-Blanc?",
        ],
        "answers": [
            "For pip-only projects a venv is simplest: `module load python/3.11`, then `python -m venv /work/{project}/venvs/myenv` and `source /work/{project}/venvs/myenv/bin/activate`. Run `pip install` on a login node: compute nodes have no internet access, so pip fails there with network errors. In your job, load the same Python module before activating.",
            "Create it in your project space: `module load python/3.11 && python -m venv /work/{project}/venvs/myenv`, then activate it with `source /work/{project}/venvs/myenv/bin/activate`. Install packages from a login node, because compute nodes cannot reach the internet. Use the same `module load python/3.11` in your jobs, or the venv will break.",
        ],
    },
    {
        "intent": "apptainer_run",
        "questions": [
            "How do I run a container on Mont-Blanc?",
            "Can I use a Docker Hub image on the cluster?",
            "How do I give my Apptainer container access to the GPUs?",
            "How do I pull a container image when compute nodes have no internet?",
            "My container can't see /scratch. How do I mount it?",
        ],
        "answers": [
            "Use Apptainer: `module load apptainer`, then on a login node pull the image with `apptainer pull pytorch.sif docker://pytorch/pytorch:latest` (login nodes have internet, compute nodes don't). In your job, run `apptainer exec --nv --bind /scratch,/work pytorch.sif python train.py`; `--nv` exposes the GPUs and `--bind` mounts the file systems.",
            "Containers run with Apptainer. Pull images on a login node, e.g. `apptainer pull myimage.sif docker://<image>`, and store the `.sif` file in `/work/{project}`. In jobs, `apptainer exec --nv --bind /scratch,/work myimage.sif <command>` gives the container the GPUs and your data directories.",
        ],
    },
    {
        "intent": "docker_unavailable",
        "questions": [
            "Is Docker installed on Mont-Blanc?",
            "docker: command not found. How do I run my Dockerfile?",
            "Why can't we use Docker on the cluster?",
            "How do I build my own container image without root?",
            "Can I run docker run on the GPU nodes?",
        ],
        "answers": [
            "Docker is not available because it requires root privileges. Use Apptainer instead: it runs Docker images directly (`apptainer pull docker://<image>`). To build your own image, write an Apptainer definition file and run `apptainer build --fakeroot myimage.sif myimage.def` on a login node after `module load apptainer`.",
            "For security reasons Docker is not installed on shared nodes, but Apptainer can run any Docker image: `apptainer pull docker://<image>`. You can also build unprivileged with `apptainer build --fakeroot myimage.sif myimage.def`, or build with Docker on your laptop, push to a registry and pull it here.",
        ],
    },
]
