"""Intentions « fine-tuning » (multi-GPU, checkpoints, cache Hugging Face, nœuds hors ligne), français."""

LANG = "fr"
CATEGORY = "finetuning"

INTENTS = [
    {
        "intent": "offline_download",
        "questions": [
            "Mon job de fine-tuning n'arrive pas à télécharger {model} depuis le Hub Hugging Face. Pourquoi ?",
            "from_pretrained reste bloqué puis échoue avec une erreur de connexion sur le nœud de calcul.",
            "Les nœuds de calcul ont-ils accès à internet ?",
            "Comment utiliser {model} dans un job si les nœuds sont hors ligne ?",
        ],
        "answers": [
            "Les nœuds de calcul n'ont pas accès à internet : les téléchargements doivent se faire d'abord sur un nœud de connexion. Lancez-y `huggingface-cli download {model}` (avec `HF_HOME` pointant vers l'espace projet), puis ajoutez `export HF_HUB_OFFLINE=1` à votre script de job pour que `from_pretrained(\"{model}\")` lise le cache local sans tenter le réseau.",
            "Seuls les nœuds de connexion accèdent à internet. Téléchargez les poids à l'avance avec `huggingface-cli download {model}` sur un nœud de connexion, avec le même `HF_HOME` que dans le job. Dans le script sbatch, définissez `export HF_HUB_OFFLINE=1` : le modèle est alors chargé depuis le cache au lieu d'attendre le réseau.",
        ],
        "followups": [
            {
                "q": [
                    "Le modèle est soumis à autorisation, comment m'authentifier ?",
                    "On me dit qu'il faut accepter la licence et se connecter d'abord.",
                ],
                "a": [
                    "Acceptez la licence sur la page du modèle dans le Hub, puis lancez `huggingface-cli login` sur un nœud de connexion et collez un jeton d'accès ; il est enregistré sous `HF_HOME`. Le téléchargement fonctionnera ensuite, et les jobs liront seulement la copie locale.",
                ],
            },
            {
                "q": [
                    "C'est pareil pour les jeux de données du Hub ?",
                    "Et pour les datasets, même principe ?",
                ],
                "a": [
                    "Oui. Chargez ou téléchargez le jeu de données une fois sur un nœud de connexion (par exemple avec `huggingface-cli download --repo-type dataset <nom>`), puis définissez `export HF_DATASETS_OFFLINE=1` dans le job, en plus de `HF_HUB_OFFLINE=1`.",
                ],
            },
        ],
    },
    {
        "intent": "hf_home",
        "questions": [
            "Où mettre le cache Hugging Face sur Mont-Blanc ?",
            "Mon home s'est rempli après le téléchargement de {model}. Comment déplacer le cache HF ?",
            "C'est quoi HF_HOME et quelle valeur lui donner ?",
            "Mon équipe peut-elle partager un même cache Hugging Face au lieu de tout retélécharger ?",
        ],
        "answers": [
            "Par défaut, le cache va dans `~/.cache/huggingface`, ce qui remplit vite vos 50 Go de home. Ajoutez `export HF_HOME=/work/{project}/hf_cache` à votre `~/.bashrc` pour que les nœuds de connexion et les jobs utilisent le même emplacement. Tous les membres du projet peuvent pointer vers ce répertoire et partager les modèles téléchargés. Supprimez ensuite l'ancien cache avec `rm -rf ~/.cache/huggingface`.",
            "Définissez `export HF_HOME=/work/{project}/hf_cache` dans votre `~/.bashrc` : toutes les bibliothèques Hugging Face y rangeront modèles, jeux de données et jeton. Comme `/work` est partagé par le projet, vos collègues qui utilisent le même `HF_HOME` réutilisent les poids sans les retélécharger. Effacez ensuite `~/.cache/huggingface` pour libérer votre home.",
        ],
    },
    {
        "intent": "multi_gpu_single_node",
        "questions": [
            "Comment faire un fine-tuning sur {gpus} GPU d'un même nœud ?",
            "Quel script sbatch pour accelerate launch avec plusieurs A100 ?",
            "Vaut-il mieux torchrun ou accelerate pour l'entraînement multi-GPU sur le cluster ?",
            "Mon entraînement n'utilise qu'un GPU alors que j'en ai demandé {gpus}. Qu'est-ce qui cloche ?",
        ],
        "answers": [
            "Demandez les GPU avec `#SBATCH --partition=gpu`, `#SBATCH --gres=gpu:a100:{gpus}` et environ 8 CPU par GPU (`--cpus-per-task`). Lancez ensuite un processus par GPU avec `accelerate launch --num_processes {gpus} train.py` ou `torchrun --nproc_per_node={gpus} train.py` : les deux conviennent. Un simple `python train.py` n'utilise qu'un GPU.",
            "En plus d'allouer les GPU, il faut lancer un processus par GPU. Dans le job, utilisez `torchrun --nproc_per_node={gpus} train.py` ou `accelerate launch --num_processes {gpus} train.py`, avec `#SBATCH --gres=gpu:a100:{gpus}` dans l'en-tête. Vérifiez avec `nvidia-smi` que chaque GPU affiche un processus.",
        ],
        "followups": [
            {
                "q": [
                    "Combien de CPU dois-je demander en plus ?",
                    "Faut-il aussi demander des cœurs CPU ?",
                ],
                "a": [
                    "Chaque nœud GPU a 32 cœurs pour ses 4 GPU : demandez environ 8 cœurs par GPU, soit `#SBATCH --cpus-per-task={cpus}` pour {gpus} GPU avec une seule tâche. Cela laisse assez de cœurs aux workers du DataLoader.",
                ],
            },
        ],
    },
    {
        "intent": "multi_node",
        "questions": [
            "Comment lancer un entraînement sur deux nœuds avec torchrun ?",
            "Il me faut 8 H100 pour mon fine-tuning, comment configurer un job multi-nœuds ?",
            "Que doit valoir MASTER_ADDR dans un job Slurm multi-nœuds ?",
            "Mon entraînement multi-nœuds bloque à l'initialisation NCCL, une idée ?",
        ],
        "answers": [
            "Demandez `--nodes=2`, `--ntasks-per-node=1` et `--gres=gpu:h100:4`, puis dans le script définissez `MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)` et lancez `srun torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:29500 train.py`. En cas de blocage NCCL, ajoutez `export NCCL_DEBUG=INFO` et envoyez-nous le log.",
            "Lancez un `torchrun` par nœud via `srun` : `#SBATCH --nodes=2 --ntasks-per-node=1 --gres=gpu:h100:4`, puis `srun torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:29500 train.py`. `MASTER_ADDR` est le premier nœud de l'allocation, obtenu avec `scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1`. Pour un blocage NCCL, `NCCL_DEBUG=INFO` montre où ça s'arrête.",
        ],
    },
    {
        "intent": "checkpoints_scratch",
        "questions": [
            "Où mon job de fine-tuning doit-il écrire ses checkpoints ?",
            "Mes checkpoints de {model} ont rempli mon quota, où les mettre ?",
            "Est-ce raisonnable d'enregistrer les checkpoints dans /work ?",
            "Comment éviter de perdre mes checkpoints à cause de la purge du scratch ?",
        ],
        "answers": [
            "Écrivez les checkpoints dans `/scratch/{user}/checkpoints` : c'est rapide et il y a 10 To, alors que le home n'a que 50 Go. Limitez le nombre conservé (par exemple `save_total_limit=2` dans le Trainer). Le scratch est purgé après 30 jours sans accès et n'est pas sauvegardé : copiez le modèle final dans `/work/{project}` à la fin de l'entraînement.",
            "Utilisez `/scratch/{user}/checkpoints` comme répertoire de sortie pendant l'entraînement, et ne gardez que les derniers checkpoints avec `save_total_limit`. Une fois terminé, copiez celui que vous voulez garder avec `rsync -a` vers `/work/{project}`, car les fichiers non utilisés depuis 30 jours sur le scratch sont supprimés.",
        ],
    },
    {
        "intent": "resume_after_timeout",
        "questions": [
            "Mon entraînement a atteint la limite de 48 heures. Comment reprendre là où il s'est arrêté ?",
            "Comment reprendre un entraînement du Trainer Hugging Face depuis le dernier checkpoint ?",
            "Peut-on enchaîner automatiquement des jobs pour un long fine-tuning ?",
            "Le job {job} a dépassé son temps en plein milieu d'une epoch, j'ai tout perdu ?",
        ],
        "answers": [
            "Vous conservez tout jusqu'au dernier checkpoint enregistré. Resoumettez le même script avec `trainer.train(resume_from_checkpoint=True)`, qui reprend le checkpoint le plus récent de `output_dir`. Pour enchaîner automatiquement, soumettez le job suivant avec `sbatch --dependency=afterany:{job} train.sh` : il démarrera à la fin du précédent.",
            "Rien n'est perdu jusqu'à votre dernier checkpoint. Avec le Trainer, appelez `trainer.train(resume_from_checkpoint=True)` sur le même `output_dir` : il restaure le modèle, l'optimiseur et le scheduler. Enchaînez les jobs avec `sbatch --dependency=afterany:{job} train.sh` et sauvegardez assez souvent (par exemple toutes les heures) pour limiter les pertes.",
        ],
    },
    {
        "intent": "wandb_offline",
        "questions": [
            "Puis-je utiliser Weights & Biases depuis les nœuds de calcul ?",
            "wandb.init bloque dans mon job, comment journaliser sans internet ?",
            "Comment synchroniser mes runs wandb hors ligne ?",
            "Y a-t-il un moyen de suivre mes courbes d'entraînement si les nœuds sont hors ligne ?",
        ],
        "answers": [
            "Les nœuds de calcul ne peuvent pas joindre wandb.ai : définissez `export WANDB_MODE=offline` dans votre script de job, et les runs sont stockés localement dans `wandb/`. Ensuite, depuis un nœud de connexion, lancez `wandb sync wandb/offline-run-*` pour les envoyer. Autre option : les logs TensorBoard sur `/scratch`, consultables via un tunnel SSH.",
            "Passez en mode hors ligne : `export WANDB_MODE=offline` dans le job, puis `wandb sync wandb/offline-run-*` sur un nœud de connexion, qui a internet. Vous pouvez lancer la synchronisation régulièrement pendant l'entraînement pour suivre la progression. TensorBoard est une alternative, puisqu'il n'écrit que des fichiers locaux.",
        ],
    },
    {
        "intent": "cuda_oom",
        "questions": [
            "Mon fine-tuning de {model} plante avec CUDA out of memory. Que faire ?",
            "torch.OutOfMemoryError sur un A100 80 Go, des conseils ?",
            "Comment faire tenir le fine-tuning d'un modèle 7B sur nos GPU ?",
            "Faut-il passer sur H100 pour éviter les erreurs de mémoire ?",
        ],
        "answers": [
            "Les nœuds A100 et H100 ont tous deux 80 Go par GPU : changer de type n'aidera pas pour la mémoire. Réduisez la taille de batch par GPU en augmentant l'accumulation de gradients, activez `gradient_checkpointing=True` et entraînez en bf16. Pour un fine-tuning complet, répartissez le modèle sur plusieurs GPU avec FSDP ou DeepSpeed ZeRO-3 ; LoRA réduit aussi fortement la mémoire.",
            "Les deux types de GPU ont 80 Go : concentrez-vous sur la configuration d'entraînement, avec bf16, un batch par GPU plus petit compensé par l'accumulation de gradients, et le gradient checkpointing. Si le modèle ne tient toujours pas en fine-tuning complet, utilisez FSDP sur plusieurs GPU, ou un adaptateur LoRA.",
        ],
    },
]
