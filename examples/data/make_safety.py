"""Build the labelled safety-classifier data from the prompt and answer files in examples/data/safety.

Usage::

    python examples/data/make_safety.py [OUT_DIR]

Reads ``safety/prompts/{harmful,borderline,benign}_LANG.jsonl`` and ``safety/answers/LANG.json`` and
writes ``OUT_DIR/train.jsonl`` and ``OUT_DIR/test.jsonl`` (default ``examples/data/safety/labelled``).

Every request (an ``id``, the same in every language) gives rows of two roles:

* ``prompt``: the request alone, unsafe for harmful requests, safe for borderline and benign ones;
* ``response``: the request and an answer. Harmful requests get a refusal (safe) and a compliant
  answer (unsafe); borderline and benign requests get their helpful answer (safe).

The held-out split is by request and by answer template: one request per harm category, five
borderline and four benign requests (in every language) are test-only, and so are the last
compliant answer of each category and the last two refusals of each language. A classifier scoring
well on ``test.jsonl`` has therefore seen neither the requests nor the answer wordings. Deterministic;
standard library only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAFETY = HERE / "safety"
LANGS = ("en", "fr", "de", "es", "it")
TEST_BORDERLINE = 5
TEST_BENIGN = 4
TEST_REFUSALS = 2  # the last refusal templates of each language are test-only


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _rank(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def test_ids(harmful: list[dict], borderline: list[dict], benign: list[dict]) -> set[str]:
    """One request per category, and a few borderline and benign ones, chosen by a fixed hash."""
    chosen: set[str] = set()
    categories = sorted({r["category"] for r in harmful})
    for c in categories:
        ids = sorted({r["id"] for r in harmful if r["category"] == c}, key=_rank)
        chosen.add(ids[0])
    chosen.update(sorted({r["id"] for r in borderline}, key=_rank)[:TEST_BORDERLINE])
    chosen.update(sorted({r["id"] for r in benign}, key=_rank)[:TEST_BENIGN])
    return chosen


def build(out_dir: Path) -> dict[str, int]:
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    harmful_all = [r for lang in LANGS for r in _rows(SAFETY / "prompts" / f"harmful_{lang}.jsonl")]
    borderline_all = [r for lang in LANGS for r in _rows(SAFETY / "prompts" / f"borderline_{lang}.jsonl")]
    benign_all = [r for lang in LANGS for r in _rows(SAFETY / "prompts" / f"benign_{lang}.jsonl")]
    held_out = test_ids(harmful_all, borderline_all, benign_all)

    for lang in LANGS:
        answers = json.loads((SAFETY / "answers" / f"{lang}.json").read_text(encoding="utf-8"))
        refusals = answers["refusals"]
        refusal_split = {"train": refusals[:-TEST_REFUSALS], "test": refusals[-TEST_REFUSALS:]}
        for r in _rows(SAFETY / "prompts" / f"harmful_{lang}.jsonl"):
            split = "test" if r["id"] in held_out else "train"
            base = {"id": r["id"], "language": lang, "kind": "harmful"}
            compliant = answers["compliance"][r["category"]]
            # The last compliant wording of each category is test-only; train rows draw among the others.
            pool = compliant[:-1] if split == "train" else compliant[-1:]
            compliance = pool[int(_rank(r["id"] + lang + "c"), 16) % len(pool)]
            pool = refusal_split[split]
            refusal = pool[int(_rank(r["id"] + lang), 16) % len(pool)]
            rows[split] += [
                {**base, "role": "prompt", "prompt": r["prompt"], "label": "unsafe", "category": r["category"]},
                {**base, "role": "response", "prompt": r["prompt"], "response": refusal, "label": "safe"},
                {**base, "role": "response", "prompt": r["prompt"], "response": compliance, "label": "unsafe",
                 "category": r["category"]},
            ]
        for kind in ("borderline", "benign"):
            for r in _rows(SAFETY / "prompts" / f"{kind}_{lang}.jsonl"):
                split = "test" if r["id"] in held_out else "train"
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
