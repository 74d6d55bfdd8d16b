"""Intentions « stockage » (quotas, purge, transferts), français."""

LANG = "fr"
CATEGORY = "storage"

INTENTS = [
    {
        "intent": "quotas_overview",
        "questions": [
            "Quels sont les espaces de stockage sur Mont-Blanc et leurs quotas ?",
            "Quelle différence entre home, work et scratch ?",
            "Où dois-je stocker mes jeux de données ?",
            "Quels répertoires sont sauvegardés ?",
        ],
        "answers": [
            "Il y a trois espaces : `/home/{user}` (50 Go, sauvegardé chaque nuit, pour le code et la configuration), `/work/{project}` (1 To par projet, partagé, ni purgé ni sauvegardé) et `/scratch/{user}` (10 To, rapide, sans sauvegarde, fichiers inutilisés depuis 30 jours supprimés). Gardez les jeux de données réutilisés dans `/work` et mettez les données temporaires et les checkpoints dans `/scratch`.",
            "Le home (`/home/{user}`, 50 Go) est le seul espace sauvegardé : gardez-y le code et les petits fichiers importants. Les données du projet vont dans `/work/{project}` (1 To partagé, pas de purge, pas de sauvegarde), et les gros fichiers temporaires dans `/scratch/{user}` (10 To, purgé après 30 jours sans accès). Les jeux de données vivent en général dans `/work` et sont copiés dans `/scratch` pour les calculs intensifs en E/S.",
        ],
        "followups": [
            {
                "q": [
                    "Peut-on augmenter le quota de work ?",
                    "1 To ne suffit pas pour notre projet, peut-on avoir plus dans /work ?",
                ],
                "a": [
                    "Oui, le responsable du projet peut demander plus d'espace `/work` sur le portail, dans « Projets » > « Demander des ressources », en estimant le volume nécessaire. Les augmentations jusqu'à 5 To sont généralement accordées en quelques jours.",
                ],
            },
        ],
    },
    {
        "intent": "check_usage",
        "questions": [
            "Comment vérifier l'occupation de mon quota de stockage ?",
            "Y a-t-il une commande pour voir l'occupation de mon home et de mon scratch ?",
            "Comment trouver les dossiers qui prennent le plus de place ?",
            "Je crois être proche du quota sur /work/{project}, comment vérifier ?",
        ],
        "answers": [
            "Lancez `alpin-quota` sur un nœud de connexion : la commande affiche l'espace et le nombre de fichiers utilisés par rapport aux limites pour votre home, votre scratch et vos projets. Pour trouver ce qui prend de la place, utilisez `du -sh * | sort -h` dans un répertoire, ou `ncdu /work/{project}` pour une vue interactive.",
            "`alpin-quota` donne l'espace et le nombre de fichiers utilisés dans `/home/{user}`, `/scratch/{user}` et `/work/{project}`, avec les limites. Ensuite, `du -sh * | sort -h` (ou `ncdu`, en interactif) montre les sous-répertoires les plus volumineux.",
        ],
    },
    {
        "intent": "purge_policy",
        "questions": [
            "Les fichiers du scratch sont-ils supprimés automatiquement ?",
            "Des fichiers ont disparu de /scratch/{user}, que s'est-il passé ?",
            "Combien de temps puis-je garder des données sur le scratch ?",
            "Pouvez-vous restaurer des fichiers supprimés par la purge du scratch ?",
        ],
        "answers": [
            "Les fichiers de `/scratch` non consultés depuis 30 jours sont supprimés par une purge nocturne, et le scratch n'est pas sauvegardé, donc ils ne peuvent pas être restaurés. Vous recevez 7 jours avant un e-mail listant les fichiers concernés. Copiez les résultats à conserver dans `/work/{project}` ou téléchargez-les.",
            "Le scratch sert aux données temporaires : les fichiers non utilisés depuis 30 jours sont purgés automatiquement, avec un e-mail d'avertissement 7 jours avant. Il n'y a pas de sauvegarde, le support ne peut donc pas les récupérer. Déplacez tout ce qui compte vers `/work/{project}` ou votre home.",
        ],
    },
    {
        "intent": "upload_rsync",
        "questions": [
            "Comment copier mon jeu de données depuis mon portable vers le cluster ?",
            "Quelle est la meilleure façon de transférer {size} de données vers Mont-Blanc ?",
            "Mon transfert scp coupe sans arrêt, existe-t-il une solution qui reprend ?",
            "Comment envoyer un dossier dans mon répertoire scratch ?",
        ],
        "answers": [
            "Utilisez rsync, qui reprend les transferts interrompus : `rsync -avP data/ {user}@mont-blanc.calcul-alpin.fr:/scratch/{user}/`. Au-delà d'environ 100 Go, passez plutôt par le nœud de transfert : `rsync -avP data/ {user}@dtn.calcul-alpin.fr:/scratch/{user}/`. Relancer la même commande reprend là où elle s'était arrêtée.",
            "rsync est l'option la plus fiable : `rsync -avP data/ {user}@mont-blanc.calcul-alpin.fr:/scratch/{user}/` affiche la progression et saute les fichiers déjà copiés, il suffit donc de relancer après une coupure. Pour de gros volumes (plus de 100 Go environ), utilisez l'hôte `dtn.calcul-alpin.fr`, dédié aux transferts.",
        ],
        "followups": [
            {
                "q": [
                    "Faut-il compresser les données avant l'envoi ?",
                    "Vaut-il mieux tout mettre dans un tar d'abord ?",
                ],
                "a": [
                    "Pour beaucoup de petits fichiers, oui : une seule archive `tar` se transfère bien plus vite et ménage le système de fichiers. Pour des données déjà compressées (images, vidéos, parquet), `rsync -avP` tel quel convient ; évitez alors l'option `-z`.",
                ],
            },
        ],
    },
    {
        "intent": "download_scp",
        "questions": [
            "Comment récupérer mes résultats du cluster sur mon ordinateur ?",
            "Quelle commande scp pour rapatrier un fichier de /work/{project} ?",
            "Puis-je copier des fichiers de Mont-Blanc vers mon portable avec une interface graphique ?",
            "Comment rapatrier mes fichiers de sortie ?",
        ],
        "answers": [
            "Lancez la commande depuis votre ordinateur, pas depuis le cluster : `scp {user}@mont-blanc.calcul-alpin.fr:/work/{project}/results.tar.gz .` pour un fichier, ou `rsync -avP {user}@mont-blanc.calcul-alpin.fr:/work/{project}/results/ ./results/` pour un dossier. Les clients graphiques comme FileZilla ou WinSCP fonctionnent aussi en SFTP sur le même hôte.",
            "Depuis votre portable, utilisez `rsync -avP {user}@mont-blanc.calcul-alpin.fr:/work/{project}/results/ ./results/` (qui reprend en cas de coupure) ou `scp` pour un seul fichier. Si vous préférez une interface graphique, connectez FileZilla ou WinSCP en SFTP à `mont-blanc.calcul-alpin.fr` avec votre clé SSH.",
        ],
    },
    {
        "intent": "home_full",
        "questions": [
            "Mon home est plein et je ne sais pas pourquoi. Qu'est-ce qui le remplit d'habitude ?",
            "Disk quota exceeded dans /home/{user}, comment libérer de la place ?",
            "Je ne peux même plus enregistrer un fichier, mon quota home est dépassé.",
            "Quels dossiers cachés prennent de la place dans mon répertoire personnel ?",
        ],
        "answers": [
            "Les caches cachés sont les suspects habituels : `~/.cache/pip`, `~/.cache/huggingface`, `~/.conda` et `~/.local`. Vérifiez avec `du -sh ~/.[!.]* | sort -h`, puis videz les caches avec `pip cache purge` et `conda clean -a`. Pour éviter que ça se reproduise, redirigez les caches vers l'espace projet, par exemple `export HF_HOME=/work/{project}/hf_cache` dans votre `~/.bashrc`.",
            "Lancez `du -sh ~/.[!.]* ~/* | sort -h` pour voir ce qui est volumineux ; les caches (`~/.cache`, `~/.conda`) pèsent souvent plusieurs Go. `pip cache purge` et `conda clean -a` les libèrent sans risque. Déplacez ensuite les environnements conda et le cache Hugging Face dans `/work/{project}` pour garder vos 50 Go de home pour le code et la configuration.",
        ],
    },
    {
        "intent": "inode_quota",
        "questions": [
            "alpin-quota dit que j'ai atteint la limite de fichiers alors qu'il me reste de la place. Comment est-ce possible ?",
            "Quel est le quota de nombre de fichiers sur /work ?",
            "Mon job échoue avec Disk quota exceeded alors que le volume est correct.",
            "Mon jeu de données contient des millions de petits fichiers, est-ce un problème ?",
        ],
        "answers": [
            "En plus du volume, chaque espace limite le nombre de fichiers : 500 000 dans le home et 2 millions par projet dans `/work`. Des millions de petits fichiers atteignent cette limite et ralentissent aussi le système de fichiers. Regroupez-les en archives (`tar`) ou dans des formats comme HDF5, des shards WebDataset ou Parquet ; `alpin-quota` affiche les deux limites.",
            "Chaque espace limite à la fois le volume et le nombre de fichiers (inodes) : le home autorise 500 000 fichiers et `/work/{project}` 2 millions, on peut donc atteindre la limite de fichiers avec de la place libre. Regroupez les petits fichiers en archives ou en shards (WebDataset, Parquet), et supprimez les environnements ou caches inutiles, qui contiennent beaucoup de fichiers. Suivez l'évolution avec `alpin-quota`.",
        ],
    },
]
