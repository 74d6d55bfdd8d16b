"""The doctor and the example curation config on the real small model's tokenizer (SmolLM2, ChatML)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPDESK = ROOT / "examples" / "data" / "helpdesk" / "train.jsonl"


def test_doctor_on_smollm2_and_helpdesk():
    from affinage.doctor import doctor

    report, tokenizer = doctor("smollm2-135m-instruct", [str(HELPDESK)], max_length=1024, max_rows=40)
    assert not report.fatal, report.message()
    assert report.get("eos trained").status == "ok"  # <|im_end|> is SmolLM2's eos and closes every answer
    assert report.get("assistant mask").status == "ok"
    assert report.get("system prompt").status == "info"  # SmolLM2's template inserts its own system prompt
    assert report.get("truncation").status == "ok"
    _, _, example = report.examples[0]
    trained = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100])
    answer = json.loads(HELPDESK.read_text(encoding="utf-8").splitlines()[0])["messages"][1]["content"]
    assert trained == answer + "<|im_end|>"


@pytest.mark.slow
def test_example_curation_config(tmp_path):
    pytest.importorskip("ftfy")
    from affinage.config import load_config
    from affinage.curation import CurateConfig, curate

    cfg = load_config(CurateConfig, ROOT / "examples" / "curate.yaml", [f"output.dir={tmp_path / 'out'}"])
    stats = curate(cfg).stats.to_dict()
    steps = {s["step"]: s for s in stats["steps"]}
    # Every kind of personal data planted in examples/data/curation/noisy.jsonl is replaced.
    assert {"email", "phone", "iban", "card", "ipv4", "ipv6"} <= set(steps["pii"]["changes"])
    assert steps["language"]["dropped"] == {"language pl not allowed": 1}
    assert steps["clean"]["changes"]["unicode repaired"] >= 1
    assert stats["sources"]["multilingual"]["skipped"] == {"malformed row": 2, "invalid JSON": 1, "not valid UTF-8": 1}
    assert stats["unit"] == "tokens"
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not any("4539 1488 0343 6467" in json.dumps(r, ensure_ascii=False) for r in rows)
    assert any("4539148803436468" in json.dumps(r) for r in rows)  # fails Luhn: not a card, kept
