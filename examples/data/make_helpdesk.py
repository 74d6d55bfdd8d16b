"""Generate the Calcul Alpin helpdesk quickstart dataset (French and English chat JSONL).

Usage::

    python examples/data/make_helpdesk.py [OUT_DIR]

Writes ``train.jsonl`` and ``test.jsonl`` (default: ``examples/data/helpdesk/``). The content
lives in ``examples/data/helpdesk_bank/*.py`` (one module per language and category). Output is
deterministic: re-running produces byte-identical files. Standard library only.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BANK_DIR = HERE / "helpdesk_bank"
DEFAULT_OUT = HERE / "helpdesk"

LANGS = ("en", "fr")
CATEGORIES = ("login", "scheduling", "gpu_quota", "software", "storage", "finetuning")

SEED = 0
TEST_FRACTION = 0.11  # per (language, category) group, whole (intent, paraphrase) combos held out
MULTI_TURN_PROB = 0.5  # for combos whose intent has follow-ups
THIRD_TURN_PROB = 0.5  # when an intent has a second follow-up step
SYSTEM_PROB = 0.06

# Slot values shared by both languages.
SLOTS: dict[str, list[str]] = {
    "user": ["amartin", "jdupont", "lchen", "sgarcia", "nkowalski", "ebernard", "tnguyen", "mrossi"],
    "job": ["4821377", "4830912", "4857240", "4862018", "4901553", "4917786"],
    "project": ["alp-nlp", "alp-climat", "alp-bio", "alp-vision", "alp-physique"],
    "partition": ["gpu", "cpu", "long"],
    "n": ["10", "20", "50", "100", "250"],
    "gpus": ["2", "4"],
    "model": [
        "mistralai/Mistral-7B-v0.3",
        "Qwen/Qwen2.5-7B-Instruct",
        "meta-llama/Llama-3.1-8B",
        "google/gemma-2-9b",
        "HuggingFaceTB/SmolLM2-1.7B",
    ],
}
# Slot values whose spelling depends on the language.
LANG_SLOTS: dict[str, dict[str, list[str]]] = {
    "en": {"size": ["40 GB", "300 GB", "1.5 TB", "2 TB"], "hours": ["1,000", "5,000", "10,000"]},
    "fr": {"size": ["40 Go", "300 Go", "1,5 To", "2 To"], "hours": ["1 000", "5 000", "10 000"]},
}
# Used in an answer when the user never gave that detail: placeholders for identifiers,
# a concrete example value for numbers.
FALLBACK: dict[str, dict[str, str]] = {
    "en": {
        "user": "<login>",
        "project": "<project>",
        "job": "<jobid>",
        "model": "<model_id>",
        "n": "10",
        "gpus": "4",
        "hours": "5,000",
        "size": "100 GB",
        "partition": "gpu",
    },
    "fr": {
        "user": "<identifiant>",
        "project": "<projet>",
        "job": "<jobid>",
        "model": "<model_id>",
        "n": "10",
        "gpus": "4",
        "hours": "5 000",
        "size": "100 Go",
        "partition": "gpu",
    },
}
SYSTEM_PROMPTS = {
    "en": [
        "You are the support assistant of Calcul Alpin, the computing centre that runs the Mont-Blanc cluster. Answer briefly and precisely, with exact commands when useful.",
        "You are the support assistant of Calcul Alpin. Help users of the Mont-Blanc cluster in a friendly, concise way.",
    ],
    "fr": [
        "Tu es l'assistant du support de Calcul Alpin, le centre de calcul qui exploite le cluster Mont-Blanc. Réponds brièvement et précisément, avec les commandes exactes quand c'est utile.",
        "Tu es l'assistant du support de Calcul Alpin. Aide les utilisateurs du cluster Mont-Blanc de façon aimable et concise.",
    ],
}

SLOT_RE = re.compile(r"\{(\w+)\}")


def load_bank() -> list:
    """Load the content modules in a fixed order (language, then category)."""
    modules = []
    for lang in LANGS:
        for category in CATEGORIES:
            path = BANK_DIR / f"{lang}_{category}.py"
            spec = importlib.util.spec_from_file_location(f"_helpdesk_bank_{lang}_{category}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            assert (lang, category) == (module.LANG, module.CATEGORY), path
            modules.append(module)
    return modules


def fill(template: str, values: dict[str, str], known: set[str], lang: str) -> str:
    """Replace ``{slot}`` with the conversation's value, or a fallback if the user never gave it."""

    def repl(match: re.Match) -> str:
        name = match.group(1)
        if name == "cpus":  # derived: 8 cores per GPU
            gpus = values["gpus"] if "gpus" in known else FALLBACK[lang]["gpus"]
            return str(8 * int(gpus))
        if name not in values:
            raise KeyError(f"unknown slot {{{name}}} in {template!r}")
        return values[name] if name in known else FALLBACK[lang][name]

    return SLOT_RE.sub(repl, template)


def pick_values(rng: random.Random, lang: str) -> dict[str, str]:
    pools = {**SLOTS, **LANG_SLOTS[lang]}
    return {name: rng.choice(pools[name]) for name in sorted(pools)}


def build_conversation(
    rng: random.Random, lang: str, category: str, intent: dict, qi: int, split: str
) -> dict:
    values = pick_values(rng, lang)
    known: set[str] = set()
    messages = []
    if rng.random() < SYSTEM_PROB:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])})

    def exchange(question: str, answers: list[str]) -> None:
        known.update(SLOT_RE.findall(question))
        messages.append({"role": "user", "content": fill(question, values, known, lang)})
        messages.append({"role": "assistant", "content": fill(rng.choice(answers), values, known, lang)})

    exchange(intent["questions"][qi], intent["answers"])
    followups = intent.get("followups", [])
    if followups and rng.random() < MULTI_TURN_PROB:
        depth = 2 if len(followups) > 1 and rng.random() < THIRD_TURN_PROB else 1
        for step in followups[:depth]:
            # The last follow-up wording is reserved for the test split, so that no test
            # user message appears verbatim in train.
            variants = step["q"][-1:] if split == "test" else step["q"][:-1]
            exchange(rng.choice(variants), step["a"])
    return {"messages": messages, "language": lang, "category": category}


def build(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[tuple[dict, int]]] = {}
    for module in load_bank():
        key = (module.LANG, module.CATEGORY)
        for intent in module.INTENTS:
            for qi in range(len(intent["questions"])):
                groups.setdefault(key, []).append((intent, qi))

    # Hold out whole (intent, paraphrase) combos, one per intent for a few intents per group,
    # so every test intent is still seen in train through its other paraphrases.
    held_out: set[tuple[str, str, str, int]] = set()
    for (lang, category), combos in groups.items():
        intents = sorted({intent["intent"] for intent, _ in combos})
        rng.shuffle(intents)
        n_test = max(1, round(len(combos) * TEST_FRACTION))
        for name in intents[:n_test]:
            qis = [qi for intent, qi in combos if intent["intent"] == name]
            held_out.add((lang, category, name, rng.choice(qis)))

    train, test, seen = [], [], set()
    for (lang, category), combos in groups.items():
        for intent, qi in combos:
            split = "test" if (lang, category, intent["intent"], qi) in held_out else "train"
            conv = build_conversation(rng, lang, category, intent, qi, split)
            first_user = next(m["content"] for m in conv["messages"] if m["role"] == "user")
            if first_user in seen:
                continue
            seen.add(first_user)
            (test if split == "test" else train).append(conv)

    train_users = {m["content"] for c in train for m in c["messages"] if m["role"] == "user"}
    for conv in test:
        for m in conv["messages"]:
            assert m["role"] != "user" or m["content"] not in train_users, m["content"]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_bytes(text.encode("utf-8"))


def main(out_dir: str | Path | None = None) -> tuple[Path, Path]:
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    train, test = build()
    train_path, test_path = out / "train.jsonl", out / "test.jsonl"
    write_jsonl(train_path, train)
    write_jsonl(test_path, test)
    print(f"wrote {len(train)} train and {len(test)} test conversations to {out}")
    return train_path, test_path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
