"""Weighted mixing to target shares, with exact counts and content-chosen rows.

Given ``n_i`` rows kept from source ``i`` (training split):

* with shares ``s_i`` (summing to 1) and a total ``N``, source ``i`` contributes ``c_i = round(s_i N)``
  rows; without ``mix.total``, ``N = min_i n_i / s_i`` is the largest mix that repeats no row;
* without shares, ``c_i = round(w_i n_i)`` for the source's weight ``w_i`` (1 keeps every row once).

A source with ``c_i >= n_i`` is upsampled: every row appears ``c_i // n_i`` times and the
``c_i mod n_i`` rows with the smallest mixing hash once more. A source with ``c_i < n_i`` is
downsampled to its ``c_i`` rows with the smallest hash. The hash is of the content with the salt
``mix.seed``, independent of the split hash, so which rows are kept does not depend on file order and
mostly stays the same as data is added. Achieved shares are ``c_i / sum(c)``: within ``1/N`` of target.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class SourcePlan:
    name: str
    available: int
    """Rows kept by the steps (training split)."""
    target: int
    """Rows after mixing."""
    copies: int = 0
    """Every row appears this many times..."""
    extra_below: float = 0.0
    """...plus once more when its mixing hash is below this value..."""
    extra_ties: int = 0
    """...or equal to it, for the first ``extra_ties`` such rows (identical contents share a hash)."""

    @property
    def factor(self) -> float:
        return self.target / self.available if self.available else 0.0

    def describe(self) -> str:
        if self.available == 0:
            return "no rows"
        if self.target == self.available:
            return "kept as is"
        kind = "upsampled" if self.target > self.available else "downsampled"
        return f"{kind} x{self.factor:.3g} ({self.available:,} -> {self.target:,})"


def target_counts(available: dict[str, int], shares: dict[str, float] | None, weights: dict[str, float],
                  total: int | None) -> dict[str, int]:
    """Rows each source contributes after mixing (see the module docstring)."""
    if shares is None:
        return {name: round(weights[name] * n) for name, n in available.items()}
    if total is None:
        usable = [n / shares[name] for name, n in available.items() if shares[name] > 0]
        total = int(min(usable)) if usable else 0
    counts = {name: round(shares[name] * total) for name in available}
    for name, n in available.items():
        if n == 0:
            counts[name] = 0  # nothing to upsample from: the card says the share could not be met
    return counts


def plan_source(name: str, hashes: array, target: int) -> SourcePlan:
    """The copies rule for one source from the mixing hashes of its rows (``[n]`` floats in [0, 1))."""
    n = len(hashes)
    plan = SourcePlan(name, n, target if n else 0)
    if n == 0:
        return plan
    plan.copies, extra = divmod(plan.target, n)
    if extra:
        values = np.frombuffer(hashes, dtype=np.float64)
        threshold = float(np.partition(values, extra - 1)[extra - 1])  # the extra-th smallest hash
        below = int(np.count_nonzero(values < threshold))
        plan.extra_below, plan.extra_ties = threshold, extra - below
    return plan


def source_passes(plan: SourcePlan, read_pass) -> Iterator[Any]:
    """All output rows of one source: ``copies`` full passes, then one pass of the extra rows.

    ``read_pass()`` returns a fresh iterator of ``(mix_hash, row)`` over the source's kept rows.
    Full passes are emitted one after the other, so repeated copies of a row lie far apart.
    """
    for _ in range(plan.copies):
        for _, row in read_pass():
            yield row
    if plan.extra_below or plan.extra_ties:
        ties = plan.extra_ties
        for value, row in read_pass():
            if value < plan.extra_below:
                yield row
            elif value == plan.extra_below and ties > 0:
                ties -= 1
                yield row


def interleave(streams: dict[str, Iterator[Any]], targets: dict[str, int]) -> Iterator[Any]:
    """Merge per-source streams so every prefix of the output holds the sources near their shares.

    At each step the source furthest behind its share of the rows emitted so far goes next
    (smooth weighted round robin), so a model trained on the first rows already sees the mix.
    """
    emitted = dict.fromkeys(streams, 0)
    active = [name for name in streams if targets.get(name, 0) > 0]  # config order breaks ties
    while active:
        name = min(active, key=lambda k: (emitted[k] + 1) / targets[k])
        row = next(streams[name], None)
        if row is None:
            active.remove(name)
            continue
        emitted[name] += 1
        yield row
