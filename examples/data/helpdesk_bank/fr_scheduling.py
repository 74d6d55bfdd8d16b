"""Intentions « ordonnancement » (Slurm), français."""

LANG = "fr"
CATEGORY = "scheduling"

INTENTS = [
    {
        "intent": "submit_batch",
        "questions": [
            "Comment soumettre un job en batch sur Mont-Blanc ?",
            "Quel est le script Slurm minimal pour lancer mon programme Python sur le cluster ?",
            "Je n'ai jamais utilisé Slurm, comment lancer un job avec sbatch ?",
            "Où trouver la sortie d'un job soumis avec sbatch ?",
        ],
        "answers": [
            "Écrivez un script, par exemple `job.sh`, commençant par `#!/bin/bash` et quelques directives : `#SBATCH --partition=cpu`, `#SBATCH --time=02:00:00`, `#SBATCH --account={project}`, puis vos commandes (`module load python/3.11` et `python mon_script.py`). Soumettez-le avec `sbatch job.sh` ; Slurm affiche l'identifiant du job. La sortie est écrite dans `slurm-<jobid>.out` dans le répertoire de soumission, sauf si vous précisez `#SBATCH --output`.",
            "Placez vos commandes dans un script shell avec des lignes `#SBATCH` en tête, par exemple `--partition=cpu`, `--cpus-per-task=1`, `--time=01:00:00` et `--account={project}`. Lancez `sbatch job.sh` depuis un nœud de connexion et notez l'identifiant renvoyé. Par défaut, la sortie standard va dans `slurm-<jobid>.out`.",
        ],
        "followups": [
            {
                "q": [
                    "Et comment demander plus de mémoire ?",
                    "Et si mon programme a besoin de 32 Go de RAM ?",
                ],
                "a": [
                    "Ajoutez `#SBATCH --mem=32G` au script (mémoire par nœud). Sans cette option, vous avez la valeur par défaut de la partition, 4 Go par cœur, et un job qui dépasse sa demande est tué avec l'état OUT_OF_MEMORY.",
                ],
            },
            {
                "q": [
                    "Comment savoir combien de mémoire le job a réellement utilisé ?",
                    "Peut-on voir le pic de mémoire après coup ?",
                ],
                "a": [
                    "Une fois le job terminé, lancez `seff <jobid>` : la commande indique le pic de mémoire et l'efficacité CPU. `sacct -j <jobid> --format=JobID,MaxRSS,Elapsed` donne les mêmes informations par étape.",
                ],
            },
        ],
    },
    {
        "intent": "check_queue",
        "questions": [
            "Comment voir mes jobs dans la file d'attente ?",
            "Quelle commande affiche uniquement mes jobs en cours et en attente ?",
            "Comment vérifier si le job {job} tourne encore ?",
            "Peut-on savoir quand mon job en attente va démarrer ?",
        ],
        "answers": [
            "Utilisez `squeue -u $USER` : vous verrez vos jobs avec leur état (R en cours, PD en attente) et la raison de l'attente. Pour un seul job, `squeue -j {job}` fonctionne aussi. `squeue -u $USER --start` donne l'heure de démarrage estimée par Slurm, qui peut évoluer selon les autres jobs.",
            "`squeue -u $USER` liste tous vos jobs ; la colonne ST donne l'état et NODELIST(REASON) explique l'attente. Pour un job précis, essayez `squeue -j {job}`, ou `sacct -j {job}` s'il est déjà terminé. L'option `--start` affiche une estimation de l'heure de démarrage.",
        ],
    },
    {
        "intent": "cancel_job",
        "questions": [
            "Comment annuler le job {job} ?",
            "J'ai soumis un job avec de mauvais paramètres, comment l'arrêter ?",
            "Est-ce que je peux annuler tous mes jobs d'un coup ?",
            "Comment retirer seulement mes jobs en attente de la file ?",
        ],
        "answers": [
            "Lancez `scancel {job}` pour annuler un job, qu'il soit en attente ou en cours. Pour tout annuler, utilisez `scancel -u $USER` ; pour ne supprimer que les jobs en attente, ajoutez `--state=PENDING`. Un job annulé apparaît avec l'état CANCELLED dans `sacct`.",
            "`scancel {job}` arrête immédiatement un job donné. `scancel -u $USER` supprime tous vos jobs et `scancel -u $USER --state=PENDING` uniquement ceux qui attendent encore. Pour un job array, `scancel {job}_3` annule une seule tâche.",
        ],
    },
    {
        "intent": "partitions_limits",
        "questions": [
            "Quelles partitions existent sur Mont-Blanc et quelles sont leurs limites de temps ?",
            "Quelle est la durée maximale que je peux demander pour un job ?",
            "Mon calcul dure 4 jours, quelle partition choisir ?",
            "Quelle différence entre les partitions cpu, gpu et long ?",
        ],
        "answers": [
            "Il y a trois partitions principales : `cpu` (par défaut, jusqu'à 24 heures), `gpu` (nœuds A100 et H100, jusqu'à 48 heures) et `long` (CPU uniquement, jusqu'à 7 jours). Un calcul CPU de 4 jours va donc sur `--partition=long`. Vous pouvez afficher les partitions et leurs limites avec `sinfo -s` ou `scontrol show partition`.",
            "`cpu` est la partition par défaut, limitée à 24 heures ; `gpu` regroupe les nœuds A100 et H100 avec une limite de 48 heures ; `long` accepte des jobs CPU jusqu'à 7 jours. Demandez la durée avec par exemple `#SBATCH --time=4-00:00:00`. `sinfo -s` affiche les partitions et leurs limites actuelles.",
        ],
        "followups": [
            {
                "q": [
                    "Il existe aussi une partition longue pour les GPU ?",
                    "Et si mon entraînement GPU dépasse 48 heures ?",
                ],
                "a": [
                    "Les jobs GPU sont limités à 48 heures ; il n'existe pas de partition longue pour les GPU. Pour un entraînement plus long, sauvegardez des checkpoints régulièrement et enchaînez les jobs avec `sbatch --dependency=afterany:<jobid> job.sh`, chaque job reprenant au dernier checkpoint.",
                ],
            },
        ],
    },
    {
        "intent": "job_array",
        "questions": [
            "Comment lancer le même script sur {n} fichiers d'entrée différents ?",
            "Pouvez-vous m'expliquer les job arrays de Slurm ?",
            "Je dois lancer {n} jobs similaires, y a-t-il mieux qu'une boucle de sbatch ?",
            "Comment récupérer l'indice de la tâche dans un job array ?",
        ],
        "answers": [
            "Utilisez un job array : `sbatch --array=1-{n} job.sh` soumet {n} tâches à partir d'un seul script. Dans le script, `$SLURM_ARRAY_TASK_ID` donne l'indice, par exemple `python run.py --input data_$SLURM_ARRAY_TASK_ID.txt`. Vous pouvez limiter le nombre de tâches simultanées avec `--array=1-{n}%10`.",
            "Un job array regroupe des tâches similaires sous un même identifiant : `sbatch --array=1-{n} job.sh` en crée {n}. Chaque tâche lit son indice dans `$SLURM_ARRAY_TASK_ID` pour choisir son fichier. Ajoutez `%5` après l'intervalle (`--array=1-{n}%5`) pour avoir au plus 5 tâches en même temps.",
        ],
        "followups": [
            {
                "q": [
                    "Comment annuler une seule tâche du job array ?",
                    "Une des tâches est bloquée, je peux annuler juste celle-là ?",
                ],
                "a": [
                    "Utilisez `scancel <jobid>_<indice>` pour annuler une seule tâche, par exemple `scancel 123456_7`. `scancel <jobid>` sans indice annule tout le job array.",
                ],
            },
        ],
    },
    {
        "intent": "pending_reason",
        "questions": [
            "Mon job {job} est en attente depuis des heures sur la partition {partition}. Pourquoi ?",
            "Que signifient les raisons Priority et Resources dans squeue ?",
            "squeue indique QOSMaxJobsPerUserLimit pour mon job, qu'est-ce que ça veut dire ?",
            "Pourquoi mon job ne démarre pas alors que je vois des nœuds libres ?",
        ],
        "answers": [
            "Regardez la colonne REASON de `squeue -j {job}`. `Resources` signifie que votre job est le prochain mais attend que des nœuds se libèrent ; `Priority`, que d'autres jobs passent avant ; `QOSMaxJobsPerUserLimit`, que vous avez déjà le nombre maximal de jobs en cours. Une demande `--time` plus courte démarre souvent plus tôt grâce au backfill.",
            "Lancez `squeue -j {job}` et regardez la raison. Avec `Priority`, les jobs au fair-share plus élevé passent d'abord ; avec `Resources`, le vôtre est le suivant. Des nœuds libres peuvent être réservés pour un job plus gros : réduire votre `--time` permet au backfill de le placer plus tôt. `QOSMaxJobsPerUserLimit` indique simplement la limite de jobs par utilisateur.",
        ],
    },
    {
        "intent": "timeout",
        "questions": [
            "Mon job s'est terminé avec l'état TIMEOUT, que s'est-il passé ?",
            "Le job {job} a été tué avant la fin, le log indique DUE TO TIME LIMIT.",
            "Comment donner plus de temps à mon job ?",
            "Peut-on prolonger la durée d'un job déjà en cours ?",
        ],
        "answers": [
            "TIMEOUT signifie que le job a atteint la durée `--time` demandée et que Slurm l'a arrêté. Resoumettez avec une valeur plus grande, par exemple `#SBATCH --time=20:00:00`, dans la limite de la partition (24 h sur `cpu`, 48 h sur `gpu`, 7 jours sur `long`). Vous ne pouvez pas prolonger un job en cours ; pour une exception ponctuelle, écrivez à support@calcul-alpin.fr avec l'identifiant du job.",
            "Le job a épuisé la durée demandée. Augmentez `#SBATCH --time` (voir `sinfo -s` pour les limites) ou faites en sorte que votre programme sauvegarde des checkpoints pour reprendre. Les utilisateurs ne peuvent pas prolonger un job en cours ; support@calcul-alpin.fr peut accorder une petite rallonge si vous envoyez l'identifiant avant la fin.",
        ],
    },
    {
        "intent": "interactive_session",
        "questions": [
            "Comment obtenir un shell interactif sur un nœud de calcul ?",
            "Je veux déboguer mon code en interactif sur un nœud GPU, comment faire ?",
            "Est-ce que je peux lancer mes calculs directement sur le nœud de connexion ?",
            "Quel est l'équivalent Slurm d'une connexion à un nœud de calcul ?",
        ],
        "answers": [
            "Les nœuds de connexion servent à éditer, compiler et soumettre ; les calculs lourds y sont arrêtés. Pour un shell interactif, utilisez `srun --partition=cpu --time=01:00:00 --pty bash`, ou sur un nœud GPU `srun --partition=gpu --gres=gpu:a100:1 --time=01:00:00 --account={project} --pty bash`. Quittez le shell pour libérer les ressources.",
            "Demandez une allocation interactive avec `srun --pty bash` et vos options, par exemple `srun --partition=gpu --gres=gpu:a100:1 --time=00:30:00 --account={project} --pty bash`. Vous arrivez sur le nœud de calcul dès que les ressources sont libres. Merci de ne pas lancer de calculs sur les nœuds de connexion.",
        ],
    },
]
