"""The lm-evaluation-harness bridge on a LOCAL task (a task YAML over a JSONL file written in the
test: nothing is downloaded), and our multiple-choice log-likelihoods checked against lm-eval's."""

from __future__ import annotations

import json

import pytest

from affinage.errors import ConfigError
from affinage.evaluation import metrics as M

ROWS = [
    {"question": "How long is an account locked?", "choices": ["30 minutes", "a whole day"], "answer": 0},
    {"question": "Which command cancels a job?", "choices": ["scancel", "squeue", "sinfo"], "answer": 0},
    {"question": "Is there a backup of scratch?", "choices": ["yes", "no"], "answer": 1},
    {"question": "Où sont purgés les fichiers ?", "choices": ["dans le scratch", "dans le home"], "answer": 0},
]


@pytest.fixture
def local_task(tmp_path):
    from affinage.evaluation.lm_eval_bridge import local_task_yaml

    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    local_task_yaml("affinage_mc_test", data, output_dir=tmp_path / "tasks")
    return tmp_path / "tasks"


@pytest.mark.slow
def test_local_task_runs_offline_and_matches_our_multiple_choice(tiny_model_dir, local_task, tiny_tokenizer):
    pytest.importorskip("lm_eval")
    from affinage.evaluation.lm_eval_bridge import run_lm_eval
    from affinage.models import load_model

    results = run_lm_eval(str(tiny_model_dir), ["affinage_mc_test"], include_path=str(local_task),
                          batch_size=2, dtype="float32", log_samples=True)
    metrics = results["affinage_mc_test"]
    assert set(metrics) >= {"acc", "acc_norm", "acc_stderr"}
    samples = sorted(results["_samples"]["affinage_mc_test"], key=lambda s: s["doc_id"])
    theirs = [[float(r[0][0]) for r in s["resps"]] for s in samples]

    # The same requests through our code: context "Question: ...\nAnswer:", continuation " choice".
    model = load_model(str(tiny_model_dir), dtype="float32")
    items = [M.MultipleChoiceItem(f"Question: {r['question']}\nAnswer:", r["choices"], r["answer"]) for r in ROWS]
    ours = M.multiple_choice_loglikelihoods(model, tiny_tokenizer, items, template="plain", batch_size=3)
    for a, b in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    acc = M.multiple_choice_accuracy(ours, [r["choices"] for r in ROWS], [r["answer"] for r in ROWS])
    assert acc["accuracy"] == pytest.approx(metrics["acc"])
    assert acc["accuracy_norm"] == pytest.approx(metrics["acc_norm"])


def test_unknown_task_and_missing_folder_are_clear(tiny_model_dir, local_task, tmp_path):
    pytest.importorskip("lm_eval")
    from affinage.evaluation.lm_eval_bridge import run_lm_eval

    with pytest.raises(ConfigError, match="unknown task"):
        run_lm_eval(str(tiny_model_dir), ["no_such_task"], include_path=str(local_task))
    with pytest.raises(ConfigError, match="not a directory"):
        run_lm_eval(str(tiny_model_dir), ["x"], include_path=str(tmp_path / "missing"))


def test_missing_lm_eval_names_the_extra(monkeypatch, tiny_model_dir):
    import sys

    from affinage.evaluation.lm_eval_bridge import run_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ConfigError, match=r"affinage\[lm-eval\]"):
        run_lm_eval(str(tiny_model_dir), ["x"])


def test_local_task_yaml_is_a_local_multiple_choice_task(local_task):
    import yaml

    spec = yaml.safe_load((local_task / "affinage_mc_test.yaml").read_text())
    assert spec["dataset_path"] == "json" and spec["output_type"] == "multiple_choice"
    assert spec["dataset_kwargs"]["data_files"]["test"].endswith("mc.jsonl")
    assert spec["doc_to_text"] == "Question: {{question}}\nAnswer:"
