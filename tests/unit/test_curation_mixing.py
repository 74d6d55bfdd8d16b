"""Mixing: exact target counts, up- and downsampling by content hash, interleaving near the shares."""

from __future__ import annotations

import random
from array import array
from collections import Counter

import pytest

from affinage.curation.mixing import interleave, plan_source, source_passes, target_counts

LLAMA3 = {"human": 0.024, "qa": 0.442, "generated": 0.188, "translated": 0.346}


def test_target_counts_meet_llama3_shares():
    available = {"human": 500, "qa": 3000, "generated": 900, "translated": 4000}
    counts = target_counts(available, LLAMA3, {k: 1.0 for k in available}, total=None)
    # Without a total, N = min(n_i / s_i) = 900 / 0.188 = 4787 (generated is the scarcest for its share).
    assert sum(counts.values()) == pytest.approx(4787, abs=2)
    total = sum(counts.values())
    for name, share in LLAMA3.items():
        assert abs(counts[name] / total - share) < 0.01
        assert counts[name] <= available[name]  # no upsampling needed without a total


def test_weights_multiply_rows():
    assert target_counts({"a": 10, "b": 7}, None, {"a": 2.0, "b": 0.5}, None) == {"a": 20, "b": 4}


def _source(n: int, seed: int) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    return [(rng.random(), f"row{i}") for i in range(n)]


@pytest.mark.parametrize(("n", "target"), [(100, 37), (100, 100), (100, 250), (7, 1000)])
def test_plan_gives_exact_counts(n, target):
    rows = _source(n, seed=n)
    plan = plan_source("s", array("d", [h for h, _ in rows]), target)
    out = list(source_passes(plan, lambda: iter(rows)))
    assert len(out) == target
    counts = Counter(out)
    # Upsampling: every row appears floor(target / n) or one more times.
    assert set(counts.values()) <= {target // n, target // n + 1} - ({0} if target >= n else set())
    if target < n:  # downsampling keeps the rows with the smallest hash
        kept = {name for _, name in sorted(rows)[:target]}
        assert set(out) == kept


def test_plan_does_not_depend_on_order():
    rows = _source(50, seed=1)
    shuffled = list(rows)
    random.Random(2).shuffle(shuffled)
    a = plan_source("s", array("d", [h for h, _ in rows]), 20)
    b = plan_source("s", array("d", [h for h, _ in shuffled]), 20)
    assert set(source_passes(a, lambda: iter(rows))) == set(source_passes(b, lambda: iter(shuffled)))


def test_ties_are_counted_exactly():
    rows = [(0.5, "dup")] * 4 + [(0.1, "x"), (0.9, "y")]
    plan = plan_source("s", array("d", [h for h, _ in rows]), 3)
    assert Counter(source_passes(plan, lambda: iter(rows))) == {"x": 1, "dup": 2}


def test_interleave_keeps_every_prefix_near_the_shares():
    targets = {"a": 600, "b": 300, "c": 100}
    streams = {name: iter([name] * n) for name, n in targets.items()}
    out = list(interleave(streams, targets))
    assert Counter(out) == targets
    prefix = Counter(out[:100])
    assert prefix == {"a": 60, "b": 30, "c": 10}
