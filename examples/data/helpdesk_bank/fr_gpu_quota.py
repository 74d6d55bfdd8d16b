"""Intentions « quota GPU » (heures A100/H100), français."""

LANG = "fr"
CATEGORY = "gpu_quota"

INTENTS = [
    {
        "intent": "check_usage",
        "questions": [
            "Comment savoir combien d'heures GPU il reste à mon projet {project} ?",
            "Où voir notre consommation A100 et H100 ?",
            "Existe-t-il une commande pour afficher ma consommation GPU du semestre ?",
            "Peut-on voir la consommation GPU de chaque membre de {project} ?",
        ],
        "answers": [
            "Lancez `alpin-quota --gpu` sur un nœud de connexion : la commande affiche, pour chacun de vos projets, les heures A100 et H100 attribuées, consommées et restantes pour le semestre en cours. Ajoutez `--project {project} --by-user` pour voir la répartition entre les membres. Les chiffres sont mis à jour toutes les heures.",
            "`alpin-quota --gpu --project {project}` donne l'allocation, la consommation et le solde, séparément pour les heures A100 et H100. Avec `--by-user`, vous obtenez la consommation de chaque membre. Les données sont rafraîchies toutes les heures : les jobs très récents peuvent ne pas encore apparaître.",
        ],
        "followups": [
            {
                "q": [
                    "Le décompte inclut-il les jobs encore en cours ?",
                    "Les jobs en cours sont déjà déduits ?",
                ],
                "a": [
                    "Non, seuls les jobs terminés sont comptés, avec un délai d'une heure au plus. Un job en cours est décompté à sa fin, selon sa durée réelle.",
                ],
            },
        ],
    },
    {
        "intent": "request_more",
        "questions": [
            "Notre projet {project} n'a presque plus d'heures GPU, comment en demander davantage ?",
            "Comment demander {hours} heures H100 supplémentaires ?",
            "Quelle est la procédure pour augmenter notre allocation GPU ?",
            "Il nous faut plus de temps A100 avant la date limite de l'article. À qui m'adresser ?",
        ],
        "answers": [
            "Le responsable du projet peut déposer une demande de complément sur https://moncompte.calcul-alpin.fr, dans « Projets » > {project} > « Demander des ressources ». Indiquez le type de GPU, le nombre d'heures (par exemple {hours}) et une courte justification avec votre consommation actuelle. Les demandes sont examinées sous 5 jours ouvrés ; les petits compléments sont souvent accordés plus vite.",
            "Les heures supplémentaires se demandent par le responsable du projet sur le portail : https://moncompte.calcul-alpin.fr, « Projets » > {project} > « Demander des ressources ». Précisez le type de GPU, le volume (par exemple {hours} heures) et le besoin. Le comité d'attribution répond sous 5 jours ouvrés.",
        ],
        "followups": [
            {
                "q": [
                    "Je ne suis pas responsable du projet, je peux faire la demande moi-même ?",
                    "Un simple membre peut-il déposer la demande ?",
                ],
                "a": [
                    "Seul le responsable du projet, ou un suppléant qu'il a désigné, peut la déposer. Si vous gérez souvent ces demandes, demandez-lui de vous ajouter comme suppléant sur la page du projet dans le portail.",
                ],
            },
        ],
    },
    {
        "intent": "h100_accounting",
        "questions": [
            "Les heures H100 sont-elles comptées comme les heures A100 ?",
            "Si j'utilise un H100 pendant une heure, est-ce déduit de nos heures A100 ?",
            "Le temps GPU est-il facturé sur la durée demandée ou la durée réelle ?",
            "Est-ce que je paie pour les 4 GPU si mon job n'en utilise qu'un ?",
        ],
        "answers": [
            "Les heures A100 et H100 sont deux enveloppes distinctes : un job H100 ne consomme que des heures H100. Le décompte correspond au nombre de GPU alloués multiplié par la durée réelle, pas par le `--time` demandé. Si vous allouez 4 GPU et n'en utilisez qu'un, les 4 sont décomptés : ne demandez que ce que votre code utilise vraiment.",
            "Chaque type de GPU a son propre solde, donc l'usage des H100 ne touche jamais vos heures A100. Vous êtes décompté pour les GPU alloués multipliés par la durée réelle : un job avec `--gres=gpu:h100:2` qui tourne 3 heures coûte 6 heures H100. Les GPU alloués mais inutilisés sont aussi comptés.",
        ],
    },
    {
        "intent": "quota_exhausted",
        "questions": [
            "Mes jobs GPU restent en attente avec la raison AssocGrpGRESMinutes. Qu'est-ce que ça veut dire ?",
            "Le job {job} ne démarre pas et la raison mentionne GrpGRES. C'est notre quota ?",
            "Que se passe-t-il quand notre projet n'a plus d'heures GPU ?",
            "Tous nos jobs GPU sont bloqués depuis ce matin, avons-nous atteint notre limite ?",
        ],
        "answers": [
            "La raison d'attente `AssocGrpGRESMinutes` signifie que le projet a épuisé ses heures pour ce type de GPU. Les jobs restent dans la file mais ne démarreront pas tant que des heures ne sont pas ajoutées. Vérifiez avec `alpin-quota --gpu` et demandez à votre responsable de projet un complément ; en attendant, vous pouvez annuler les jobs avec `scancel` ou passer sur l'autre type de GPU s'il vous reste des heures.",
            "Cette raison indique que l'allocation GPU du projet est épuisée. Confirmez avec `alpin-quota --gpu`. Vos jobs démarreront automatiquement dès qu'un complément sera accordé, inutile de les resoumettre ; vous pouvez aussi les soumettre sur un autre projet disposant d'heures grâce à `--account`.",
        ],
    },
    {
        "intent": "request_gpus",
        "questions": [
            "Comment demander {gpus} GPU A100 dans mon job ?",
            "Quelle est la bonne syntaxe --gres pour les H100 ?",
            "Comment m'assurer que mon job tourne sur un nœud H100 et pas A100 ?",
            "Combien de GPU puis-je demander sur un seul nœud ?",
        ],
        "answers": [
            "Utilisez la partition `gpu` et précisez le type dans `--gres` : `#SBATCH --partition=gpu` et `#SBATCH --gres=gpu:a100:{gpus}` pour des A100, ou `--gres=gpu:h100:{gpus}` pour des H100. Chaque nœud a 4 GPU d'un seul type : demandez-en 4 au plus par nœud. Ajoutez aussi `--account={project}` pour que les heures soient décomptées sur le bon projet.",
            "Écrivez `#SBATCH --partition=gpu` et `#SBATCH --gres=gpu:h100:{gpus}` (ou `gpu:a100:{gpus}`) : c'est le type indiqué dans `--gres` qui détermine le nœud. Les nœuds ont 4 GPU chacun ; au-delà, il faut plusieurs nœuds avec `--nodes`. Dans le job, `nvidia-smi` liste les GPU obtenus.",
        ],
    },
    {
        "intent": "choose_account",
        "questions": [
            "Je fais partie de deux projets. Comment choisir celui sur lequel mes heures GPU sont décomptées ?",
            "Comment lister les comptes Slurm que j'ai le droit d'utiliser ?",
            "Mon job a été décompté sur le mauvais projet, comment l'éviter ?",
            "À quoi sert l'option --account ?",
        ],
        "answers": [
            "Ajoutez `#SBATCH --account={project}` à votre script pour décompter les heures sur ce projet. `sacctmgr show assoc user=$USER format=account%20` liste les comptes que vous pouvez utiliser. Sans `--account`, c'est votre compte par défaut qui est utilisé ; vous pouvez le changer sur le portail, dans « Profil ».",
            "Les heures sont décomptées sur le compte indiqué par `--account`, par exemple `sbatch --account={project} job.sh`. Listez vos comptes avec `sacctmgr show assoc user=$USER format=account%20`. Un décompte déjà fait ne peut pas être déplacé : précisez toujours l'option si vous travaillez sur plusieurs projets.",
        ],
    },
    {
        "intent": "gpu_utilisation",
        "questions": [
            "Comment vérifier que mon job {job} utilise vraiment les GPU ?",
            "Puis-je lancer nvidia-smi sur le nœud où tourne mon job ?",
            "Mon entraînement semble lent, comment voir l'utilisation GPU pendant le job ?",
            "Peut-on surveiller la mémoire GPU d'un job en cours ?",
        ],
        "answers": [
            "Rattachez-vous au job en cours avec `srun --jobid={job} --overlap nvidia-smi` : vous verrez l'utilisation et la mémoire de ses GPU. Pour un suivi continu, utilisez `srun --jobid={job} --overlap nvidia-smi -l 5`. Une utilisation faible vient souvent du chargement des données : essayez plus de workers dans le DataLoader.",
            "Lancez `srun --jobid={job} --overlap --pty nvidia-smi` depuis un nœud de connexion pour voir les GPU du job. Si l'utilisation reste basse, vérifiez le nombre de cœurs demandés (`--cpus-per-task`) et le chargement des données. Après le job, `seff {job}` résume l'efficacité CPU et mémoire.",
        ],
    },
]
