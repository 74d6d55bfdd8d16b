"""Generate the preference pairs of the examples (English and French JSONL).

Usage::

    python examples/data/preferences/make_preferences.py [OUT_DIR]

Writes, in ``OUT_DIR`` (default: this folder), ``{helpdesk,safety,borderline}_{train,test}.jsonl``:

* helpdesk: questions of the Calcul Alpin helpdesk (the quickstart's content bank,
  ``examples/data/helpdesk_bank``); chosen = the precise, correct answer; rejected = a vague
  non-answer (strength significantly_better), a confident answer to another question (better), the
  first sentence only (slightly_better) or the other correct wording (negligibly_better).
  Category ``helpfulness``.
* safety (``bank/*_safety.py``): harmful requests; chosen = a refusal with a helpful alternative,
  rejected = compliance (significantly_better) or half-hearted compliance (better). Category ``safety``.
* borderline (``bank/*_borderline.py``): alarming-sounding but ordinary requests ("How do I kill a
  Linux process?"); chosen = the helpful answer, rejected = a needless refusal
  (significantly_better) or a lecture without an answer (better). Category ``borderline``.

Whole items (a helpdesk intent, a safety or borderline item) go to test by a stable hash, so test
prompts are unseen in train. Deterministic; standard library only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BANK = HERE / "bank"
HELPDESK_SCRIPT = HERE.parent / "make_helpdesk.py"
LANGS = ("en", "fr")
TEST_FRACTION = {"helpdesk": 0.15, "safety": 0.3, "borderline": 0.3}  # few safety items: hold out more
SEED = 0

VAGUE = {
    "en": [
        "I'm not sure about that. You could check the documentation or try again later.",
        "That depends on your setup. Please contact the support team, they will help you.",
        "It should work if you follow the usual procedure. Let me know if you have other questions!",
        "There are several ways to do this; the best one depends on your use case.",
    ],
    "fr": [
        "Je ne suis pas sûr. Vous pouvez consulter la documentation ou réessayer plus tard.",
        "Cela dépend de votre configuration. Contactez l'équipe du support, elle vous aidera.",
        "Cela devrait marcher si vous suivez la procédure habituelle. N'hésitez pas si vous avez d'autres questions !",
        "Il y a plusieurs façons de faire ; la meilleure dépend de votre cas.",
    ],
}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_test(lang: str, kind: str, item: str) -> bool:
    digest = hashlib.sha256(f"{lang}/{kind}/{item}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION[kind]


def first_sentence(text: str) -> str | None:
    """The first sentence of ``text`` when there is more than one, else None."""
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z`À-Ý])", text.strip())
    return parts[0] if len(parts) > 1 else None


def helpdesk_pairs(rng: random.Random) -> list[tuple[bool, dict]]:
    helpdesk = _load(HELPDESK_SCRIPT, "_make_helpdesk")
    out = []
    for module in helpdesk.load_bank():
        lang, category = module.LANG, module.CATEGORY
        intents = module.INTENTS
        for k, intent in enumerate(intents):
            test = is_test(lang, "helpdesk", intent["intent"])
            others = [other for other in intents if other is not intent]
            for qi, question in enumerate(intent["questions"]):
                values = helpdesk.pick_values(rng, lang)
                known = set(helpdesk.SLOT_RE.findall(question))

                def fill(text: str, values=values, known=known, lang=lang) -> str:
                    return helpdesk.fill(text, values, known, lang)

                answers = intent["answers"]
                chosen = fill(answers[qi % len(answers)])
                strategy = (k + qi) % 4
                if strategy == 3 and len(answers) > 1 and qi % 2 == 0:
                    rejected, strength = fill(answers[(qi + 1) % len(answers)]), "negligibly_better"
                elif strategy == 2 and (short := first_sentence(chosen)):
                    rejected, strength = short, "slightly_better"
                elif strategy == 1 and others:
                    other = others[(k + qi) % len(others)]
                    rejected, strength = fill(rng.choice(other["answers"])), "better"
                else:
                    rejected, strength = rng.choice(VAGUE[lang]), "significantly_better"
                row = {"prompt": fill(question), "chosen": chosen, "rejected": rejected, "strength": strength,
                       "category": "helpfulness", "language": lang, "topic": category, "source": intent["intent"]}
                out.append((test, row))
    return out


def safety_pairs() -> list[tuple[bool, dict]]:
    out = []
    for lang in LANGS:
        module = _load(BANK / f"{lang}_safety.py", f"_pref_{lang}_safety")
        for item in module.ITEMS:
            test = is_test(lang, "safety", item["id"])
            for prompt in item["prompts"]:
                for rejected, strength in item["rejected"]:
                    out.append((test, {"prompt": prompt, "chosen": item["chosen"], "rejected": rejected,
                                       "strength": strength, "category": "safety", "language": lang,
                                       "source": item["id"]}))
    return out


def borderline_pairs(rng: random.Random) -> list[tuple[bool, dict]]:
    out = []
    for lang in LANGS:
        module = _load(BANK / f"{lang}_borderline.py", f"_pref_{lang}_borderline")
        for item in module.ITEMS:
            test = is_test(lang, "borderline", item["id"])
            for prompt in item["prompts"]:
                for rejected, strength in ((rng.choice(module.REFUSALS), "significantly_better"),
                                           (item["lecture"], "better")):
                    out.append((test, {"prompt": prompt, "chosen": item["chosen"], "rejected": rejected,
                                       "strength": strength, "category": "borderline", "language": lang,
                                       "source": item["id"]}))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


def main(out_dir: str | Path | None = None) -> dict[str, int]:
    out = Path(out_dir) if out_dir is not None else HERE
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    counts = {}
    for name, pairs in (("helpdesk", helpdesk_pairs(rng)), ("safety", safety_pairs()), ("borderline", borderline_pairs(rng))):
        for split, want in (("train", False), ("test", True)):
            rows = [row for test, row in pairs if test == want]
            rng.shuffle(rows)
            write_jsonl(out / f"{name}_{split}.jsonl", rows)
            counts[f"{name}_{split}"] = len(rows)
    print("wrote " + ", ".join(f"{n} {k}" for k, n in counts.items()) + f" pairs to {out}")
    return counts


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
