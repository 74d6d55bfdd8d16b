"""Build the labelled safety-classifier data from the prompt and answer files in examples/data/safety.

Usage::

    python examples/data/make_safety.py [OUT_DIR]

Reads ``safety/prompts/{harmful,borderline,benign}_LANG.jsonl`` and ``safety/answers/LANG.json`` and
writes ``OUT_DIR/{train,validation,test}.jsonl`` (default ``examples/data/safety/labelled``).

Every request (an ``id``, the same in every language) gives rows of two roles:

* ``prompt``: the request alone, unsafe for harmful requests, safe for borderline and benign ones;
* ``response``: the request and an answer. Harmful requests get refusals (safe) and compliant
  answers (unsafe), drawn from the compliant answers of their category and the generic ones
  (``compliance_generic``): two of each in train (more wordings to learn from), one of each in
  validation and test. Borderline and benign requests get their helpful answer (safe).

The three splits are disjoint by request and by answer template. Test: three requests per harm
category, fifteen borderline and twelve benign requests (in every language), two compliant answers per
category, four generic ones and six refusals. Validation, which the classifier uses to choose its
threshold: two requests per category, ten borderline, eight benign, and as many answer templates
again. A template is the same in every language (the lists are aligned translations), so it falls
in the same split everywhere. A classifier scoring well on ``test.jsonl`` has therefore seen
neither the requests nor the answer wordings, and its threshold was chosen on wordings it had not
seen either. Deterministic (a fixed hash chooses); standard library only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAFETY = HERE / "safety"
LANGS = ("en", "fr", "de", "es", "it")
SPLITS = ("test", "validation")  # carved out in this order; the rest is train
HELD_OUT = {  # per split: how many requests (per category for harmful ones) and answer templates
    "harmful": {"test": 3, "validation": 2},
    "borderline": {"test": 15, "validation": 10},
    "benign": {"test": 12, "validation": 8},
    "compliance": {"test": 2, "validation": 2},  # per category
    "generic": {"test": 4, "validation": 4},
    "refusals": {"test": 6, "validation": 6},
}
ANSWERS_PER_REQUEST = {"train": 2, "validation": 1, "test": 1}  # refusals, and as many compliant answers


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _rank(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _assign(keys: list[str], counts: dict[str, int]) -> dict[str, str]:
    """Split of each key: the first ``counts["test"]`` by a fixed hash, then validation, then train."""
    ranked = sorted(keys, key=_rank)
    split_of, start = {}, 0
    for split in SPLITS:
        for key in ranked[start : start + counts[split]]:
            split_of[key] = split
        start += counts[split]
    return {key: split_of.get(key, "train") for key in keys}


def request_splits(harmful: list[dict], borderline: list[dict], benign: list[dict]) -> dict[str, str]:
    """Split of every request id: a few per harm category, and some borderline and benign ones, held out."""
    split_of: dict[str, str] = {}
    for c in sorted({r["category"] for r in harmful}):
        split_of.update(_assign(sorted({r["id"] for r in harmful if r["category"] == c}), HELD_OUT["harmful"]))
    split_of.update(_assign(sorted({r["id"] for r in borderline}), HELD_OUT["borderline"]))
    split_of.update(_assign(sorted({r["id"] for r in benign}), HELD_OUT["benign"]))
    return split_of


def template_splits(name: str, n: int, kind: str) -> list[str]:
    """Split of each of ``n`` aligned answer templates (the same position in every language)."""
    keys = [f"{name}-{i}" for i in range(n)]
    split_of = _assign(keys, HELD_OUT[kind])
    return [split_of[k] for k in keys]


def _pools(texts: list[str], splits: list[str]) -> dict[str, list[str]]:
    return {s: [t for t, x in zip(texts, splits, strict=True) if x == s] for s in ("train", *SPLITS)}


def _pick(pool: list[str], k: int, key: str) -> list[str]:
    """``k`` different texts of ``pool``, chosen by a fixed hash of ``key``."""
    return sorted(pool, key=lambda text: _rank(key + text))[:k]


def build(out_dir: Path) -> dict[str, int]:
    rows: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    prompts = {kind: {lang: _rows(SAFETY / "prompts" / f"{kind}_{lang}.jsonl") for lang in LANGS}
               for kind in ("harmful", "borderline", "benign")}
    split_of = request_splits(*([r for lang in LANGS for r in prompts[kind][lang]]
                                for kind in ("harmful", "borderline", "benign")))
    answers = {lang: json.loads((SAFETY / "answers" / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGS}
    sizes = {(k, len(v)) for a in answers.values() for k, v in a["compliance"].items()}
    if len(sizes) != len(answers["en"]["compliance"]) or len({len(a["refusals"]) for a in answers.values()}) != 1:
        raise SystemExit("answers/LANG.json: every language needs as many templates of each kind (aligned translations)")

    for lang in LANGS:
        a = answers[lang]
        refusals = _pools(a["refusals"], template_splits("refusal", len(a["refusals"]), "refusals"))
        generic = a.get("compliance_generic", [])
        generic = _pools(generic, template_splits("generic", len(generic), "generic"))
        compliance = {c: _pools(v, template_splits(c, len(v), "compliance")) for c, v in a["compliance"].items()}
        for r in prompts["harmful"][lang]:
            split = split_of[r["id"]]
            base = {"id": r["id"], "language": lang, "kind": "harmful"}
            # Compliant answers of the request's category or generic ones, from this split's templates.
            k = ANSWERS_PER_REQUEST[split]
            compliant = _pick(compliance[r["category"]][split] + generic[split], k, r["id"] + lang + "c")
            rows[split].append(
                {**base, "role": "prompt", "prompt": r["prompt"], "label": "unsafe", "category": r["category"]})
            rows[split] += [{**base, "role": "response", "prompt": r["prompt"], "response": text, "label": "safe"}
                            for text in _pick(refusals[split], k, r["id"] + lang)]
            rows[split] += [{**base, "role": "response", "prompt": r["prompt"], "response": text, "label": "unsafe",
                             "category": r["category"]} for text in compliant]
        for kind in ("borderline", "benign"):
            for r in prompts[kind][lang]:
                split = split_of[r["id"]]
                base = {"id": r["id"], "language": lang, "kind": kind}
                rows[split] += [
                    {**base, "role": "prompt", "prompt": r["prompt"], "label": "safe"},
                    {**base, "role": "response", "prompt": r["prompt"], "response": r["answer"], "label": "safe"},
                ]

    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, items in rows.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in items)
        (out_dir / f"{split}.jsonl").write_text(text, encoding="utf-8")
        counts[split] = len(items)
    return counts


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SAFETY / "labelled"
    for split, n in build(target).items():
        print(f"{split}: {n} rows -> {target / (split + '.jsonl')}")
