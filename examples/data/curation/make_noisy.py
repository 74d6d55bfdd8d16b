"""Write noisy.jsonl and broken.jsonl: a small multilingual sample with planted problems for the curation demo.

Planted on purpose (the data card of examples/curate.yaml shows each being caught):
mojibake, HTML and control characters; e-mail addresses, phone numbers, an IBAN, a card number (and a
16-digit number that fails the Luhn check, which must stay), IPv4 and IPv6 addresses; an exact duplicate
(differing only in case and punctuation), a near duplicate (a few words changed) and a copy of a helpdesk
row (cross-source); rows in French, English, German, Spanish, Italian, Portuguese, Dutch and one in
Polish (not an allowed language); an empty answer, an answer that restates the question, a repetitive
answer, symbol junk; and a row copied from the helpdesk test set (contamination).
broken.jsonl holds a line of invalid JSON, a row missing its answer and a line in Latin-1, which
``on_error: skip`` counts and reports.

Run: python examples/data/curation/make_noisy.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
HELPDESK = HERE.parent / "helpdesk"


def chat(user: str, assistant: str, **meta) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **meta}


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def main() -> None:
    assert luhn_ok("4539148803436467") and not luhn_ok("4539148803436468")
    rows = [
        # Mojibake (UTF-8 read as Windows-1252), HTML and a control character.
        chat("Comment rÃ©server un nÅ“ud GPU pour la journÃ©e ?",
             "Utilisez une rÃ©servation : demandez-la au support en prÃ©cisant le nombre de nÅ“uds, la date et la durÃ©e. "
             "Une fois acceptÃ©e, soumettez vos jobs avec `--reservation=<nom>`.", language="fr"),
        chat("How do I see my past jobs?<br>",
             "<p>Use <b>sacct</b>: `sacct -u $USER --starttime=2024-01-01` lists your jobs with their state and "
             "elapsed time.</p>\x07 Add `--format=JobID,JobName,State,Elapsed,MaxRSS` for memory use.", language="en"),
        # Personal data to scrub.
        chat("My colleague anna.schmidt@uni-example.de cannot log in, her phone is +49 30 1234 5678.",
             "Ask her to reset her password on the account portal, or to call the helpdesk; do not send passwords "
             "by e-mail. If the portal refuses her, write to support@calcul-alpin.fr with her username.", language="en"),
        chat("Pouvez-vous rembourser les heures sur mon IBAN FR76 3000 6000 0112 3456 7890 189 ?",
             "Les heures de calcul ne sont jamais remboursées en argent : elles sont recréditées sur le projet si un "
             "incident du centre a tué vos jobs. Ne communiquez pas vos coordonnées bancaires au support.", language="fr"),
        chat("I paid the training course with card 4539 1488 0343 6467, reference 4539148803436468, is it booked?",
             "Course bookings are confirmed by e-mail within two working days. The accounting office handles "
             "payments; never send card numbers to the support address.", language="en"),
        chat("Mi IP es 192.168.10.42 y la IPv6 2001:db8:85a3::8a2e:370:7334, ¿por qué no puedo conectarme por ssh?",
             "El acceso por ssh solo se permite desde las redes autorizadas. Conéctate primero a la VPN de tu "
             "universidad y vuelve a intentarlo; si sigue fallando, envíanos la salida de `ssh -vvv`.", language="es"),
        chat("Mon numéro est le 06 12 34 56 78, rappelez-moi pour mon quota.",
             "Nous ne rappelons pas par téléphone : le quota se consulte avec `alpin-quota` et une augmentation se "
             "demande sur le portail des projets, avec une justification.", language="fr"),
        # Exact duplicate (case and punctuation differ) and a near duplicate.
        chat("How do I cancel a job?", "Use `scancel <jobid>`; `scancel -u $USER` cancels all your jobs.", language="en"),
        chat("how do i cancel a job", "Use scancel <jobid> - scancel -u $USER cancels all your jobs!", language="en"),
        chat("Wie kann ich die Wartezeit meines Jobs verkürzen?",
             "Fordern Sie nur die Zeit an, die Ihr Job wirklich braucht: kürzere Jobs passen in Lücken des Planers "
             "(Backfill) und starten früher. Prüfen Sie mit `squeue --start`, wann Ihr Job voraussichtlich startet, "
             "und reduzieren Sie die Anzahl der angeforderten Knoten, wenn möglich.", language="de"),
        chat("Wie kann ich die Wartezeit meines Jobs verkürzen?",
             "Fordern Sie nur die Zeit an, die Ihr Job tatsächlich braucht: kürzere Jobs passen in Lücken des Planers "
             "(Backfill) und starten früher. Prüfen Sie mit `squeue --start`, wann Ihr Job voraussichtlich startet, "
             "und verringern Sie die Anzahl der angeforderten Knoten, wenn möglich.", language="de"),
        # More languages.
        chat("Come posso usare Jupyter sul cluster?",
             "Avvia un job interattivo con `srun --pty --gres=gpu:1 bash`, lancia `jupyter lab --no-browser --port=8888` "
             "e apri un tunnel ssh dal tuo computer verso il nodo di calcolo.", language="it"),
        chat("Como posso transferir ficheiros grandes para o cluster?",
             "Use `rsync -avP` a partir do seu computador para o nó de transferência; o rsync retoma as cópias "
             "interrompidas. Para muitos ficheiros pequenos, crie primeiro um arquivo tar.", language="pt"),
        chat("Hoe vraag ik meer opslagruimte aan voor mijn project?",
             "Dien een aanvraag in via het projectportaal met een korte motivatie en de verwachte groei. De beheerders "
             "antwoorden meestal binnen een week.", language="nl"),
        chat("Jak mogę sprawdzić, ile godzin GPU zostało w moim projekcie?",
             "Uruchom `alpin-quota --gpu` na węźle logowania; pokazuje wykorzystane i pozostałe godziny dla "
             "każdego typu GPU w Twoim projekcie."),
        # A wrongly declared language (the row is German, the source says French).
        chat("Wo finde ich die Dokumentation zu den Modulen?",
             "Die Liste der Module zeigt `module avail`; `module spider <name>` beschreibt ein Modul und seine "
             "Abhängigkeiten. Die vollständige Dokumentation steht auf der Webseite des Zentrums.", language="fr"),
        # Quality problems.
        chat("Is the cluster down?", "", language="en"),
        chat("What is the maximum walltime of the long partition?",
             "What is the maximum walltime of the long partition?", language="en"),
        chat("Can you help me?", "\n".join(["Please wait."] * 8), language="en"),
        chat("Syntax?", "@@@ ### $$$ %%% ^^^ &&& *** ~~~ @@@ ### $$$ %%% ^^^ &&& ***", language="en"),
    ]
    # A copy of a helpdesk training row (cross-source duplicate) and of a helpdesk test row (contamination).
    with open(HELPDESK / "train.jsonl", encoding="utf-8") as f:
        train_row = json.loads(f.readline())
    with open(HELPDESK / "test.jsonl", encoding="utf-8") as f:
        test_row = json.loads(f.readline())
    rows.append({"messages": train_row["messages"], "language": train_row.get("language")})
    rows.append({"messages": test_row["messages"], "language": test_row.get("language")})

    with open(HERE / "noisy.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    good = chat("Which partition should I use for debugging?",
                "Use the `debug` partition: jobs of up to 30 minutes start within seconds.", language="en")
    with open(HERE / "broken.jsonl", "wb") as f:
        f.write((json.dumps(good, ensure_ascii=False) + "\n").encode("utf-8"))
        f.write(b'{"messages": [{"role": "user", "content": "unterminated"\n')
        f.write((json.dumps({"messages": [{"role": "user", "content": "No answer here"}]}) + "\n").encode("utf-8"))
        f.write((json.dumps(chat("Où est la FAQ ?", "Sur la page d'accueil du centre."), ensure_ascii=False) + "\n")
                .encode("latin-1"))
    print(f"wrote {len(rows)} rows to {HERE / 'noisy.jsonl'} and 4 lines to {HERE / 'broken.jsonl'}")


if __name__ == "__main__":
    main()
