"""Exact and near-duplicate removal: planted duplicates found across sources, distinct rows kept."""

from __future__ import annotations

import random

import numpy as np
import pytest

from affinage.curation.base import StepContext
from affinage.curation.dedup import (
    ExactDedupOptions,
    ExactDedupStep,
    NearDedupOptions,
    NearDedupStep,
    collision_probability,
    optimal_bands,
)
from affinage.curation.lengths import LengthMeter
from affinage.curation.record import Record, normalize_for_dedup

pytest.importorskip("rensa")


def _record(source: str, question: str, answer: str) -> Record:
    return Record(source, f"{source}, row 1",
                  [{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def test_normalisation():
    assert normalize_for_dedup("  Hello,\tWORLD!! ｆｕｌｌ") == "hello world full"


def test_exact_duplicates_after_normalisation(tmp_path):
    step = ExactDedupStep(ExactDedupOptions(), StepContext(tmp_path, LengthMeter()))
    try:
        assert step(_record("a", "How do I cancel a job?", "Use scancel <jobid>.")) is None
        assert step(_record("b", "how do i cancel a job", "Use  scancel jobid")) == "exact duplicate of a row from a"
        # Same words in another role are a different conversation.
        assert step(_record("b", "Use scancel <jobid>.", "How do I cancel a job?")) is None
    finally:
        step.close()
    assert not (tmp_path / "exact.sqlite").exists()  # the scratch index is removed


def test_exact_dedup_by_prompt(tmp_path):
    step = ExactDedupStep(ExactDedupOptions(scope="prompt"), StepContext(tmp_path, LengthMeter()))
    try:
        assert step(_record("a", "How do I cancel a job?", "Use scancel.")) is None
        assert step(_record("a", "How do I cancel a job?", "Another answer entirely.")) is not None
    finally:
        step.close()


def test_lsh_bands_meet_the_threshold():
    bands, rows = optimal_bands(0.7, 128)
    assert bands * rows <= 128
    # Pairs well above the threshold almost always collide, pairs well below rarely do.
    assert collision_probability(0.85, bands, rows) > 0.99
    assert collision_probability(0.3, bands, rows) < 0.05


def test_near_duplicates_across_sources(tmp_path):
    rng = random.Random(0)
    vocabulary = [f"word{i}" for i in range(3000)]
    step = NearDedupStep(NearDedupOptions(threshold=0.7), StepContext(tmp_path, LengthMeter()))
    bases = [[rng.choice(vocabulary) for _ in range(80)] for _ in range(30)]
    try:
        for words in bases:
            assert step(_record("first", "Question?", " ".join(words))) is None
        found = 0
        for words in bases[:10]:
            variant = list(words)
            variant[rng.randrange(80)] = "changed"  # one word in 80: Jaccard of 3-gram sets about 0.93
            found += step(_record("second", "Question?", " ".join(variant))) == "near duplicate of a row from first"
        assert found == 10
        for _ in range(20):  # unrelated rows stay
            assert step(_record("second", "Question?", " ".join(rng.choice(vocabulary) for _ in range(80)))) is None
    finally:
        step.close()


def test_signature_estimates_jaccard(tmp_path):
    step = NearDedupStep(NearDedupOptions(num_perm=256), StepContext(tmp_path, LengthMeter()))
    a = [f"w{i}" for i in range(100)]
    b = a[:50] + [f"x{i}" for i in range(50)]
    sa = step.signature(Record("s", "w", text=" ".join(a)))
    sb = step.signature(Record("s", "w", text=" ".join(b)))
    # 3-gram sets: 98 each, 48 shared -> Jaccard 48 / 148 = 0.32; the estimate's std is about 0.03.
    assert float(np.mean(sa == sb)) == pytest.approx(48 / 148, abs=0.1)
    step.close()
