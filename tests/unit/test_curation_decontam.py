"""Decontamination: rows sharing a long n-gram with an evaluation set are removed, others kept."""

from __future__ import annotations

import json

import pytest

from affinage.curation.base import StepContext
from affinage.curation.decontam import DecontaminateOptions, DecontaminateStep
from affinage.curation.lengths import LengthMeter
from affinage.curation.record import Record
from affinage.errors import ConfigError

EVAL_ANSWER = ("Accounts lock for thirty minutes after five failed logins and unlock on their own afterwards, "
               "so wait and reset your password before retrying")


def _record(answer: str) -> Record:
    return Record("s", "f, row 1", [{"role": "user", "content": "Help?"}, {"role": "assistant", "content": answer}])


@pytest.fixture
def step(tmp_path):
    path = tmp_path / "test.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "My account is locked"}, {"role": "assistant", "content": EVAL_ANSWER}]},
        {"prompt": "What is the capital of France?", "completion": "Paris."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return DecontaminateStep(DecontaminateOptions(eval=[str(path)], ngram=13), StepContext(tmp_path, LengthMeter()))


def test_long_overlap_removed(step):
    copied = "Sorry to hear that. " + EVAL_ANSWER.upper() + "!"  # normalisation ignores case and punctuation
    assert step(_record(copied)) == "shares a 13-word sequence with test.jsonl"


def test_short_eval_item_matched_whole(step):
    # The 6-word question is shorter than 13 words: it is matched as a whole sequence.
    assert step(_record("Quiz: what is the capital of France? Think.")) == "shares a 6-word sequence with test.jsonl"


def test_unrelated_and_partial_overlap_kept(step):
    twelve_words = " ".join(EVAL_ANSWER.split()[:12])
    assert step(_record(twelve_words + " and then something else entirely different")) is None
    assert step(_record("Use scancel to cancel a job.")) is None


def test_needs_eval_files(tmp_path):
    with pytest.raises(ConfigError, match="eval"):
        DecontaminateStep(DecontaminateOptions(), StepContext(tmp_path, LengthMeter()))
