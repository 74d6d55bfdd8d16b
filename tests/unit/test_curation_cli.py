"""The verbs: `affinage data curate CONFIG [overrides]` and `affinage doctor MODEL DATA`."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

import affinage.commands.data  # noqa: F401  (registers the verbs on the app)
from affinage.cli import app
from affinage.testing.tiny import CHATML_TEMPLATE

pytest.importorskip("ftfy")


def test_data_curate_with_override(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer number {i} with a few words."}]} for i in range(5)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"stage": "curate", "sources": [{"path": str(data)}], "steps": ["clean"],
                                      "output": {"dir": str(tmp_path / "a"), "formats": ["jsonl"]}}))
    result = CliRunner().invoke(app, ["data", "curate", str(config), f"output.dir={tmp_path / 'b'}"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "train.jsonl").read_text().count("\n") == 5
    assert not (tmp_path / "a").exists()  # the override won


def test_doctor_exit_codes(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    ok = CliRunner().invoke(app, ["doctor", str(tiny_model_dir), str(data), "--max-length", "128"])
    assert ok.exit_code == 0, ok.output
    assert "verdict: READY" in ok.output
    broken = CHATML_TEMPLATE.replace("'<|im_end|>' + ", "")  # answers no longer end with eos
    bad = CliRunner().invoke(app, ["doctor", str(tiny_model_dir), str(data), "--chat-template", broken])
    assert bad.exit_code == 1
    assert "NOT READY" in bad.output and "eos trained" in bad.output
