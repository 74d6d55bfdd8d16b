"""Login intents (SSH keys, passwords, 2FA, locked accounts), English."""

LANG = "en"
CATEGORY = "login"

INTENTS = [
    {
        "intent": "ssh_key_setup",
        "questions": [
            "How do I set up an SSH key to log in to Mont-Blanc?",
            "I'm new here. What's the right way to create and register an SSH key for the cluster?",
            "My account {user} was just created. How do I connect with a key instead of a password?",
            "Which type of SSH key should I generate for mont-blanc.calcul-alpin.fr, and where do I put it?",
            "Can you walk me through adding my public key so I can ssh into the login nodes?",
        ],
        "answers": [
            'Generate an Ed25519 key on your own machine with `ssh-keygen -t ed25519`, then paste the contents of `~/.ssh/id_ed25519.pub` into the "SSH keys" page of https://moncompte.calcul-alpin.fr. The key is active within about 15 minutes. After that, connect with `ssh {user}@mont-blanc.calcul-alpin.fr`. Never share or upload your private key.',
            'On your laptop, run `ssh-keygen -t ed25519` and protect the key with a passphrase. Register only the public half (`~/.ssh/id_ed25519.pub`) on https://moncompte.calcul-alpin.fr under "SSH keys"; it propagates to the login nodes in roughly 15 minutes. You can then log in with `ssh {user}@mont-blanc.calcul-alpin.fr`.',
        ],
        "followups": [
            {
                "q": [
                    "Can I reuse the same key from a second laptop?",
                    "What if I also want to connect from my office desktop?",
                ],
                "a": [
                    "It is safer to create a separate key on each machine and register both public keys on the portal; you can keep several keys on your account. That way, if one laptop is lost, you just revoke its key without touching the other.",
                ],
            },
        ],
    },
    {
        "intent": "permission_denied_publickey",
        "questions": [
            'I get "Permission denied (publickey)" when I try to ssh to Mont-Blanc. What\'s wrong?',
            "ssh {user}@mont-blanc.calcul-alpin.fr fails with Permission denied (publickey). I uploaded my key yesterday.",
            "Why is the cluster rejecting my SSH key?",
            "My key login stopped working this morning, it just says permission denied. Help?",
            "Key authentication refused for {user} on the login nodes, what should I check?",
        ],
        "answers": [
            "This usually means the server does not see a registered key. Check that the public key on https://moncompte.calcul-alpin.fr matches `~/.ssh/id_ed25519.pub` on your machine, and that you use your Calcul Alpin username. Running `ssh -v {user}@mont-blanc.calcul-alpin.fr` shows which key is offered. If the key matches and it still fails, send the verbose output to support@calcul-alpin.fr.",
            "First make sure you are using the right username and that the key offered is the one registered on the portal: `ssh -v` lists the keys it tries. If you use a non-default key file, pass it with `ssh -i ~/.ssh/mykey {user}@mont-blanc.calcul-alpin.fr`. An expired password or a locked account can also block key logins, so check the portal for warnings.",
        ],
        "followups": [
            {
                "q": [
                    "The verbose output says it offers id_rsa only. Is that the problem?",
                    "ssh -v shows it only tries my old RSA key. What should I do?",
                ],
                "a": [
                    "That's very likely the cause: your client offers the RSA key, but the registered one is Ed25519. Either pass the right key with `ssh -i ~/.ssh/id_ed25519 {user}@mont-blanc.calcul-alpin.fr`, or add an `IdentityFile ~/.ssh/id_ed25519` line for this host in `~/.ssh/config`.",
                ],
            },
        ],
    },
    {
        "intent": "password_expired",
        "questions": [
            "The cluster says my password has expired. How do I renew it?",
            "I can't log in, it tells me my password expired. Account is {user}.",
            "How often do Calcul Alpin passwords expire and how do I change mine?",
            "Password expired message on Mont-Blanc, what now?",
            "Do I need to contact someone to reset an expired password?",
        ],
        "answers": [
            'Passwords expire every 12 months. You can set a new one yourself at https://moncompte.calcul-alpin.fr using "Forgot / expired password"; a reset link is sent to your institutional email. The new password works on the login nodes within a few minutes, and your SSH keys are not affected.',
            'No need to contact anyone: go to https://moncompte.calcul-alpin.fr, choose "Forgot / expired password" and follow the link sent to the email registered for your account. Passwords are valid for 12 months and must be at least 12 characters long. Your files and SSH keys stay as they were.',
        ],
    },
    {
        "intent": "twofa_setup",
        "questions": [
            "How do I enable two-factor authentication for my Calcul Alpin account?",
            "The portal says 2FA is now mandatory. How do I set it up?",
            "Which app should I use for the 2FA codes on Mont-Blanc?",
            "I need to configure 2FA before my next login. What are the steps?",
            "Where do I turn on 2FA in the account portal?",
        ],
        "answers": [
            'Log in to https://moncompte.calcul-alpin.fr, open "Security" and click "Enable 2FA". Scan the QR code with any TOTP app (for example FreeOTP, Aegis or Google Authenticator) and enter the 6-digit code to confirm. Save the recovery codes shown at the end somewhere safe: they are your only way in if you lose your phone.',
            '2FA uses standard time-based codes. On https://moncompte.calcul-alpin.fr, go to "Security" > "Enable 2FA", scan the QR code with a TOTP app and confirm with a code. From then on, the login nodes ask for a code after your SSH key or password. Keep the recovery codes in a safe place.',
        ],
        "followups": [
            {
                "q": [
                    "Will I have to type a code every single time I connect?",
                    "Do I need a code for each ssh session, even from the same laptop?",
                ],
                "a": [
                    "A code is requested once per connection, but you can reuse one connection for several sessions with SSH multiplexing: add `ControlMaster auto`, `ControlPath ~/.ssh/cm-%r@%h:%p` and `ControlPersist 8h` for the host in `~/.ssh/config`.",
                ],
            },
        ],
    },
    {
        "intent": "twofa_lost_phone",
        "questions": [
            "I lost my phone and can't get my 2FA codes anymore. How do I log in?",
            "My phone was reset and the authenticator app is gone. Account {user}.",
            "I changed phones and forgot to move my 2FA token. What can I do?",
            "How do I recover access if I no longer have my two-factor device?",
            "My authenticator app was on a phone that broke. How do I get back in?",
        ],
        "answers": [
            'If you saved your recovery codes, use one of them at the 2FA prompt, then re-enrol a new device under "Security" on https://moncompte.calcul-alpin.fr. Without recovery codes, email support@calcul-alpin.fr from your institutional address; we will verify your identity and reset your 2FA, usually within one working day.',
            "Each recovery code works once in place of a 6-digit code, so try one of those first and then register your new phone on the portal. If you don't have them, write to support@calcul-alpin.fr from your institutional email and we will reset your 2FA after a quick identity check.",
        ],
    },
    {
        "intent": "account_locked",
        "questions": [
            "My account {user} seems to be locked after several failed logins.",
            "I typed my password wrong a few times and now I can't log in at all. Is my account locked?",
            "How long does an account lockout last on Mont-Blanc?",
            'It says "account locked", how do I unlock it?',
            "Can you unlock my account? I keep getting access denied.",
        ],
        "answers": [
            "After 5 failed attempts, the account is locked for 30 minutes and then unlocks automatically. Wait for that period, then try again carefully; if you're not sure of your password, reset it on https://moncompte.calcul-alpin.fr first. If your account is still locked after 30 minutes, email support@calcul-alpin.fr.",
            "Accounts lock for 30 minutes after 5 failed logins, and unlock on their own afterwards. To avoid a new lockout, reset your password on https://moncompte.calcul-alpin.fr before retrying. If the lock persists beyond 30 minutes, contact support@calcul-alpin.fr and mention your username.",
        ],
    },
    {
        "intent": "host_key_changed",
        "questions": [
            'ssh warns "REMOTE HOST IDENTIFICATION HAS CHANGED" for mont-blanc. Is it safe?',
            "After the maintenance I get a host key warning when connecting. What should I do?",
            "Why does ssh say the host key for the cluster changed?",
            "I'm scared by the man-in-the-middle warning when I connect to Mont-Blanc.",
            "Should I worry about the host key warning for mont-blanc.calcul-alpin.fr?",
        ],
        "answers": [
            "Do not ignore it blindly. Compare the fingerprint shown with the official ones published at https://docs.calcul-alpin.fr/ssh-fingerprints. If they match (keys were rotated during the last maintenance), remove the old entry with `ssh-keygen -R mont-blanc.calcul-alpin.fr` and reconnect. If they don't match, stop and contact support@calcul-alpin.fr.",
            "Host keys are only changed during announced maintenances. Check the fingerprint against https://docs.calcul-alpin.fr/ssh-fingerprints; if it matches, run `ssh-keygen -R mont-blanc.calcul-alpin.fr` to forget the old key and accept the new one. A mismatch should be reported to support@calcul-alpin.fr right away.",
        ],
    },
]
