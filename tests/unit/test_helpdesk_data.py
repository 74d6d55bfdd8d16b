"""Checks on the shipped Calcul Alpin helpdesk quickstart dataset (examples/data/helpdesk)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "examples" / "data" / "helpdesk"
SCRIPT = ROOT / "examples" / "data" / "make_helpdesk.py"
SPLITS = ("train", "test")
CATEGORIES = {"login", "scheduling", "gpu_quota", "software", "storage", "finetuning"}


def _load(split: str) -> list[dict]:
    lines = (DATA_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    return {split: _load(split) for split in SPLITS}


def _user_texts(rows: list[dict]) -> list[str]:
    return [m["content"] for row in rows for m in row["messages"] if m["role"] == "user"]


def _n_user_turns(row: dict) -> int:
    return sum(m["role"] == "user" for m in row["messages"])


@pytest.mark.parametrize("split", SPLITS)
def test_file_format(split: str) -> None:
    raw = (DATA_DIR / f"{split}.jsonl").read_bytes()
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    text = raw.decode("utf-8")
    for line in text.splitlines():
        row = json.loads(line)
        assert set(row) == {"messages", "language", "category"}
        assert row["language"] in {"en", "fr"}
        assert row["category"] in CATEGORIES


@pytest.mark.parametrize("split", SPLITS)
def test_roles_alternate_and_end_with_assistant(data: dict, split: str) -> None:
    for row in data[split]:
        messages = row["messages"]
        assert all(set(m) == {"role", "content"} for m in messages)
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages)
        roles = [m["role"] for m in messages]
        if roles[0] == "system":
            roles = roles[1:]
        assert "system" not in roles
        assert roles, row
        assert roles == ["user", "assistant"] * (len(roles) // 2), roles


def test_size_and_coverage(data: dict) -> None:
    train, test = data["train"], data["test"]
    assert len(train) + len(test) >= 200
    assert len(test) >= 24
    for split in SPLITS:
        assert {row["language"] for row in data[split]} == {"en", "fr"}
    assert {row["category"] for row in test} == CATEGORIES
    assert {row["category"] for row in train} == CATEGORIES


def test_no_test_user_message_in_train(data: dict) -> None:
    train_users = set(_user_texts(data["train"]))
    leaked = [text for text in _user_texts(data["test"]) if text in train_users]
    assert not leaked, leaked[:3]


def test_no_duplicate_first_user_message(data: dict) -> None:
    firsts = [
        next(m["content"] for m in row["messages"] if m["role"] == "user")
        for split in SPLITS
        for row in data[split]
    ]
    assert len(firsts) == len(set(firsts))


def test_multi_turn_and_system_present(data: dict) -> None:
    rows = data["train"] + data["test"]
    multi = sum(_n_user_turns(row) > 1 for row in rows)
    assert 0.1 * len(rows) <= multi <= 0.3 * len(rows)
    assert all(_n_user_turns(row) <= 3 for row in rows)
    assert any(row["messages"][0]["role"] == "system" for row in rows)


def test_no_unfilled_slots(data: dict) -> None:
    for split in SPLITS:
        for row in data[split]:
            for m in row["messages"]:
                for slot in ("{user}", "{job}", "{project}", "{model}", "{gpus}", "{n}", "{size}", "{hours}"):
                    assert slot not in m["content"], m["content"]


def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_helpdesk_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for split in SPLITS:
        name = f"{split}.jsonl"
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), name
