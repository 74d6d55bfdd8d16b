"""Intentions « connexion » (clés SSH, mots de passe, 2FA, comptes verrouillés), français."""

LANG = "fr"
CATEGORY = "login"

INTENTS = [
    {
        "intent": "ssh_key_setup",
        "questions": [
            "Comment configurer une clé SSH pour me connecter à Mont-Blanc ?",
            "Je viens d'arriver, comment créer et enregistrer ma clé SSH pour le cluster ?",
            "Mon compte {user} vient d'être créé. Comment me connecter avec une clé plutôt qu'un mot de passe ?",
            "Quel type de clé SSH faut-il générer pour mont-blanc.calcul-alpin.fr, et où la déposer ?",
        ],
        "answers": [
            "Générez une clé Ed25519 sur votre machine avec `ssh-keygen -t ed25519`, puis copiez le contenu de `~/.ssh/id_ed25519.pub` dans la page « Clés SSH » de https://moncompte.calcul-alpin.fr. La clé est active en 15 minutes environ. Vous pourrez ensuite vous connecter avec `ssh {user}@mont-blanc.calcul-alpin.fr`. Ne transmettez jamais votre clé privée.",
            "Sur votre ordinateur, lancez `ssh-keygen -t ed25519` et choisissez une phrase de passe. Déposez uniquement la partie publique (`~/.ssh/id_ed25519.pub`) dans « Clés SSH » sur https://moncompte.calcul-alpin.fr ; elle est propagée sur les nœuds de connexion en une quinzaine de minutes. Connectez-vous ensuite avec `ssh {user}@mont-blanc.calcul-alpin.fr`.",
        ],
        "followups": [
            {
                "q": [
                    "Je peux réutiliser la même clé depuis un deuxième ordinateur ?",
                    "Et si je veux aussi me connecter depuis le poste du bureau ?",
                ],
                "a": [
                    "Il vaut mieux créer une clé distincte sur chaque machine et enregistrer les deux clés publiques sur le portail, qui en accepte plusieurs. Si un ordinateur est perdu, vous révoquez simplement sa clé sans toucher à l'autre.",
                ],
            },
        ],
    },
    {
        "intent": "permission_denied_publickey",
        "questions": [
            "J'obtiens « Permission denied (publickey) » en me connectant à Mont-Blanc, que se passe-t-il ?",
            "ssh {user}@mont-blanc.calcul-alpin.fr échoue avec Permission denied (publickey), alors que j'ai déposé ma clé hier.",
            "Pourquoi le cluster refuse-t-il ma clé SSH ?",
            "Ma connexion par clé ne marche plus depuis ce matin, j'ai juste « permission denied ».",
        ],
        "answers": [
            "En général, le serveur ne reconnaît pas la clé proposée. Vérifiez que la clé publique enregistrée sur https://moncompte.calcul-alpin.fr est bien celle de `~/.ssh/id_ed25519.pub` et que vous utilisez le bon identifiant. La commande `ssh -v {user}@mont-blanc.calcul-alpin.fr` indique quelle clé est envoyée. Si tout correspond, envoyez cette sortie à support@calcul-alpin.fr.",
            "Vérifiez d'abord votre identifiant et que la clé proposée est bien celle déposée sur le portail : `ssh -v` affiche les clés essayées. Si votre clé n'a pas le nom par défaut, précisez-la avec `ssh -i ~/.ssh/ma_cle {user}@mont-blanc.calcul-alpin.fr`. Un mot de passe expiré ou un compte verrouillé peut aussi bloquer la connexion : regardez les alertes sur le portail.",
        ],
        "followups": [
            {
                "q": [
                    "La sortie verbeuse montre qu'il n'essaie que id_rsa. C'est ça le problème ?",
                    "ssh -v n'essaie que mon ancienne clé RSA, que dois-je faire ?",
                ],
                "a": [
                    "C'est très probablement la cause : votre client propose la clé RSA alors que la clé enregistrée est en Ed25519. Indiquez la bonne clé avec `ssh -i ~/.ssh/id_ed25519 {user}@mont-blanc.calcul-alpin.fr`, ou ajoutez une ligne `IdentityFile ~/.ssh/id_ed25519` pour cet hôte dans `~/.ssh/config`.",
                ],
            },
        ],
    },
    {
        "intent": "password_expired",
        "questions": [
            "Le cluster m'indique que mon mot de passe a expiré. Comment le renouveler ?",
            "Impossible de me connecter, mon mot de passe est expiré. Mon compte est {user}.",
            "Tous les combien les mots de passe expirent-ils chez Calcul Alpin, et comment changer le mien ?",
            "Faut-il écrire au support pour réinitialiser un mot de passe expiré ?",
        ],
        "answers": [
            "Les mots de passe expirent tous les 12 mois. Vous pouvez en définir un nouveau vous-même sur https://moncompte.calcul-alpin.fr via « Mot de passe oublié / expiré » ; un lien est envoyé à votre adresse institutionnelle. Le nouveau mot de passe est actif en quelques minutes et vos clés SSH ne changent pas.",
            "Pas besoin d'écrire au support : sur https://moncompte.calcul-alpin.fr, choisissez « Mot de passe oublié / expiré » et suivez le lien envoyé à l'adresse associée à votre compte. Un mot de passe est valable 12 mois et doit compter au moins 12 caractères. Vos fichiers et vos clés SSH restent inchangés.",
        ],
    },
    {
        "intent": "twofa_setup",
        "questions": [
            "Comment activer la double authentification sur mon compte Calcul Alpin ?",
            "Le portail dit que la 2FA devient obligatoire. Comment la configurer ?",
            "Quelle application utiliser pour les codes 2FA de Mont-Blanc ?",
            "Je dois configurer la 2FA avant ma prochaine connexion, quelles sont les étapes ?",
        ],
        "answers": [
            "Connectez-vous à https://moncompte.calcul-alpin.fr, ouvrez « Sécurité » puis « Activer la 2FA ». Scannez le QR code avec une application TOTP (FreeOTP, Aegis ou Google Authenticator, par exemple) et saisissez le code à 6 chiffres pour valider. Conservez précieusement les codes de secours affichés à la fin : ils vous serviront si vous perdez votre téléphone.",
            "La 2FA repose sur des codes temporaires standard. Sur https://moncompte.calcul-alpin.fr, allez dans « Sécurité » > « Activer la 2FA », scannez le QR code avec une application TOTP et confirmez avec un code. Les nœuds de connexion vous demanderont ensuite un code après la clé SSH ou le mot de passe. Gardez les codes de secours en lieu sûr.",
        ],
        "followups": [
            {
                "q": [
                    "Je vais devoir taper un code à chaque connexion ?",
                    "Il faut un code pour chaque session ssh, même depuis le même portable ?",
                ],
                "a": [
                    "Un code est demandé à chaque nouvelle connexion, mais vous pouvez réutiliser une connexion pour plusieurs sessions grâce au multiplexage SSH : ajoutez `ControlMaster auto`, `ControlPath ~/.ssh/cm-%r@%h:%p` et `ControlPersist 8h` pour cet hôte dans `~/.ssh/config`.",
                ],
            },
        ],
    },
    {
        "intent": "twofa_lost_phone",
        "questions": [
            "J'ai perdu mon téléphone et je n'ai plus accès aux codes 2FA. Comment me connecter ?",
            "Mon téléphone a été réinitialisé et l'application d'authentification a disparu. Compte {user}.",
            "J'ai changé de téléphone sans transférer ma 2FA, que faire ?",
            "Comment récupérer l'accès si je n'ai plus mon appareil de double authentification ?",
        ],
        "answers": [
            "Si vous avez gardé vos codes de secours, utilisez-en un à l'invite 2FA, puis enregistrez le nouvel appareil dans « Sécurité » sur https://moncompte.calcul-alpin.fr. Sans codes de secours, écrivez à support@calcul-alpin.fr depuis votre adresse institutionnelle : après vérification de votre identité, nous réinitialisons votre 2FA, en général sous un jour ouvré.",
            "Chaque code de secours remplace une fois un code à 6 chiffres : essayez-en un, puis associez votre nouveau téléphone sur le portail. Si vous ne les avez pas, contactez support@calcul-alpin.fr depuis votre adresse institutionnelle et nous réinitialiserons votre 2FA après une courte vérification d'identité.",
        ],
    },
    {
        "intent": "account_locked",
        "questions": [
            "Mon compte {user} semble bloqué après plusieurs échecs de connexion.",
            "Je me suis trompé de mot de passe plusieurs fois et je ne peux plus me connecter. Mon compte est verrouillé ?",
            "Combien de temps dure le verrouillage d'un compte sur Mont-Blanc ?",
            "Pouvez-vous débloquer mon compte ? J'ai « account locked » à chaque essai.",
        ],
        "answers": [
            "Après 5 tentatives échouées, le compte est verrouillé pendant 30 minutes, puis se débloque automatiquement. Attendez ce délai avant de réessayer ; en cas de doute sur votre mot de passe, réinitialisez-le d'abord sur https://moncompte.calcul-alpin.fr. Si votre compte est toujours bloqué au-delà de 30 minutes, écrivez à support@calcul-alpin.fr.",
            "Le compte se verrouille 30 minutes après 5 échecs et se débloque tout seul ensuite. Pour éviter un nouveau blocage, réinitialisez votre mot de passe sur https://moncompte.calcul-alpin.fr avant de réessayer. Si le blocage dure plus de 30 minutes, contactez support@calcul-alpin.fr en précisant votre identifiant.",
        ],
    },
    {
        "intent": "host_key_changed",
        "questions": [
            "ssh affiche « REMOTE HOST IDENTIFICATION HAS CHANGED » pour mont-blanc. Est-ce grave ?",
            "Depuis la maintenance, j'ai un avertissement sur la clé d'hôte en me connectant. Que faire ?",
            "Pourquoi ssh dit que la clé d'hôte du cluster a changé ?",
            "L'avertissement d'attaque « man-in-the-middle » à la connexion à Mont-Blanc m'inquiète.",
        ],
        "answers": [
            "Ne l'ignorez pas à l'aveugle. Comparez l'empreinte affichée avec celles publiées sur https://docs.calcul-alpin.fr/ssh-fingerprints. Si elles correspondent (les clés ont été renouvelées lors de la dernière maintenance), supprimez l'ancienne entrée avec `ssh-keygen -R mont-blanc.calcul-alpin.fr` et reconnectez-vous. Sinon, arrêtez-vous et prévenez support@calcul-alpin.fr.",
            "Les clés d'hôte ne changent que lors des maintenances annoncées. Vérifiez l'empreinte sur https://docs.calcul-alpin.fr/ssh-fingerprints ; si elle correspond, lancez `ssh-keygen -R mont-blanc.calcul-alpin.fr` pour oublier l'ancienne clé et acceptez la nouvelle. Toute différence doit être signalée immédiatement à support@calcul-alpin.fr.",
        ],
    },
]
