"""Intentions « logiciels » (modules, conda/venv, Apptainer), français."""

LANG = "fr"
CATEGORY = "software"

INTENTS = [
    {
        "intent": "module_avail",
        "questions": [
            "Comment voir les logiciels installés sur Mont-Blanc ?",
            "GROMACS est-il disponible sur le cluster ?",
            "module avail n'affiche pas le logiciel dont j'ai besoin, comment bien chercher ?",
            "Quelle différence entre module avail et module spider ?",
        ],
        "answers": [
            "Les logiciels sont fournis sous forme de modules. `module avail` liste ce qui est chargeable tout de suite, tandis que `module spider <nom>` cherche dans toute l'arborescence, y compris les modules qui demandent de charger d'abord un compilateur ou MPI. Par exemple, `module spider gromacs` affiche toutes les versions et ce qu'il faut charger avant.",
            "Utilisez `module spider <nom>` pour chercher toutes les versions installées (par exemple `module spider gromacs`), puis `module spider gromacs/<version>` pour voir les prérequis. `module avail` ne montre que les modules chargeables dans votre environnement actuel, d'où l'impression qu'il en manque.",
        ],
    },
    {
        "intent": "module_load_cuda",
        "questions": [
            "Comment charger CUDA sur les nœuds GPU ?",
            "Quelle version de CUDA utiliser avec PyTorch sur Mont-Blanc ?",
            "nvcc : commande introuvable sur le nœud GPU, qu'est-ce qui me manque ?",
            "Comment charger cuda 12.4 dans mon script de job ?",
        ],
        "answers": [
            "Chargez-le avec `module load cuda/12.4` (ajoutez la même ligne dans votre script de job, après les lignes `#SBATCH`). `module list` confirme ce qui est chargé, et `nvcc --version` devrait alors fonctionner. Si vous installez PyTorch avec pip, ses wheels embarquent leur propre runtime CUDA : le module n'est utile que pour compiler du code CUDA.",
            "CUDA n'est pas chargé par défaut : lancez `module load cuda/12.4`, puis `nvcc --version` pour vérifier. Mettez la ligne `module load` dans votre script sbatch pour que les jobs aient le même environnement. Les wheels PyTorch de pip contiennent leur runtime CUDA ; la version du module compte seulement si vous compilez des extensions.",
        ],
        "followups": [
            {
                "q": [
                    "Faut-il aussi charger cudnn à part ?",
                    "J'ai besoin d'un module cuDNN en plus ?",
                ],
                "a": [
                    "Seulement si vous compilez du code qui l'utilise : `module load cudnn/9.1-cuda12` correspond à CUDA 12.4. PyTorch installé avec pip inclut déjà cuDNN, le module n'est donc pas nécessaire pour l'exécuter.",
                ],
            },
        ],
    },
    {
        "intent": "install_request",
        "questions": [
            "Pourriez-vous installer un logiciel dont j'ai besoin sur le cluster ?",
            "La version d'OpenFOAM qu'il me faut n'est pas disponible, le support peut-il l'ajouter ?",
            "Puis-je installer un logiciel moi-même sans être root ?",
            "Comment demander l'installation d'un nouveau module ?",
        ],
        "answers": [
            "Vous pouvez installer la plupart des outils vous-même dans l'espace du projet, avec pip, conda ou en compilant dans `/work/{project}/opt` ; aucun droit root n'est nécessaire. Pour un logiciel largement utilisé, écrivez à support@calcul-alpin.fr avec le nom, la version et un lien : nous étudierons son ajout en module. Comptez environ une semaine pour une nouvelle installation.",
            "Beaucoup de logiciels s'installent sans root dans `/work/{project}` avec pip, conda ou un conteneur Apptainer. Si plusieurs utilisateurs en ont besoin, envoyez le nom, la version et le lien de téléchargement à support@calcul-alpin.fr et nous évaluerons un module commun. L'installation prend en général quelques jours ouvrés.",
        ],
    },
    {
        "intent": "conda_env",
        "questions": [
            "Peut-on utiliser conda sur Mont-Blanc ?",
            "Comment créer un environnement conda sans remplir mon répertoire personnel ?",
            "Mon environnement conda dans le home a dépassé le quota. Où mettre les environnements ?",
            "Y a-t-il un module conda ou dois-je installer Miniconda moi-même ?",
        ],
        "answers": [
            "Conda est fourni : `module load miniforge` donne accès à conda et mamba, inutile d'installer votre propre version. Créez vos environnements dans l'espace projet pour préserver vos 50 Go de home, par exemple `conda create -p /work/{project}/envs/monenv python=3.11`, puis activez-le avec `conda activate /work/{project}/envs/monenv`. Lancez aussi `conda config --add pkgs_dirs /work/{project}/conda_pkgs` pour sortir le cache du home.",
            "Chargez l'installation fournie avec `module load miniforge`. Les environnements et le cache de paquets doivent aller dans `/work/{project}`, pas dans le home : `conda create -p /work/{project}/envs/monenv python=3.11` et `conda config --add pkgs_dirs /work/{project}/conda_pkgs`. Créez-les depuis un nœud de connexion, car les nœuds de calcul n'ont pas accès à internet.",
        ],
        "followups": [
            {
                "q": [
                    "Comment activer cet environnement dans un script sbatch ?",
                    "Et dans un job batch, qu'est-ce que je mets dans le script ?",
                ],
                "a": [
                    'Ajoutez `module load miniforge` puis `conda activate /work/{project}/envs/monenv` avant votre commande. Si l\'activation échoue, insérez `eval "$(conda shell.bash hook)"` juste après le chargement du module.',
                ],
            },
        ],
    },
    {
        "intent": "python_venv",
        "questions": [
            "Comment créer un environnement virtuel Python sur le cluster ?",
            "Vaut-il mieux venv ou conda pour un projet qui n'utilise que pip ?",
            "pip install échoue sur le nœud de calcul avec une erreur réseau. Pourquoi ?",
            "Où dois-je placer mon venv ?",
        ],
        "answers": [
            "Pour un projet pip uniquement, un venv suffit : `module load python/3.11`, puis `python -m venv /work/{project}/venvs/monenv` et `source /work/{project}/venvs/monenv/bin/activate`. Faites les `pip install` sur un nœud de connexion : les nœuds de calcul n'ont pas internet et pip y échoue avec une erreur réseau. Dans vos jobs, chargez le même module Python avant d'activer le venv.",
            "Créez-le dans l'espace projet : `module load python/3.11 && python -m venv /work/{project}/venvs/monenv`, puis activez-le avec `source /work/{project}/venvs/monenv/bin/activate`. Installez les paquets depuis un nœud de connexion, car les nœuds de calcul n'accèdent pas à internet. Utilisez le même `module load python/3.11` dans vos jobs, sinon le venv ne fonctionnera pas.",
        ],
    },
    {
        "intent": "apptainer_run",
        "questions": [
            "Comment lancer un conteneur sur Mont-Blanc ?",
            "Puis-je utiliser une image Docker Hub sur le cluster ?",
            "Comment donner accès aux GPU à mon conteneur Apptainer ?",
            "Mon conteneur ne voit pas /scratch, comment le monter ?",
        ],
        "answers": [
            "Utilisez Apptainer : `module load apptainer`, puis sur un nœud de connexion récupérez l'image avec `apptainer pull pytorch.sif docker://pytorch/pytorch:latest` (les nœuds de connexion ont internet, pas les nœuds de calcul). Dans le job, lancez `apptainer exec --nv --bind /scratch,/work pytorch.sif python train.py` : `--nv` donne accès aux GPU et `--bind` monte les systèmes de fichiers.",
            "Les conteneurs s'exécutent avec Apptainer. Récupérez les images sur un nœud de connexion, par exemple `apptainer pull monimage.sif docker://<image>`, et rangez le fichier `.sif` dans `/work/{project}`. Dans les jobs, `apptainer exec --nv --bind /scratch,/work monimage.sif <commande>` donne au conteneur les GPU et vos répertoires de données.",
        ],
    },
    {
        "intent": "docker_unavailable",
        "questions": [
            "Docker est-il installé sur Mont-Blanc ?",
            "docker : commande introuvable. Comment utiliser mon Dockerfile ?",
            "Pourquoi ne peut-on pas utiliser Docker sur le cluster ?",
            "Comment construire ma propre image de conteneur sans être root ?",
        ],
        "answers": [
            "Docker n'est pas disponible car il nécessite les droits root. Utilisez plutôt Apptainer, qui exécute directement les images Docker (`apptainer pull docker://<image>`). Pour construire votre image, écrivez un fichier de définition Apptainer et lancez `apptainer build --fakeroot monimage.sif monimage.def` sur un nœud de connexion, après `module load apptainer`.",
            "Pour des raisons de sécurité, Docker n'est pas installé sur les nœuds partagés, mais Apptainer sait exécuter n'importe quelle image Docker : `apptainer pull docker://<image>`. Vous pouvez aussi construire sans privilèges avec `apptainer build --fakeroot monimage.sif monimage.def`, ou construire avec Docker sur votre portable, pousser l'image dans un registre et la récupérer ici.",
        ],
    },
]
