"""Lengths of rows in tokens of the target tokenizer (or in words without one), and histograms of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from affinage.curation.record import Record

HISTOGRAM_EDGES = [0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
"""Bin ``i`` holds lengths in ``[EDGES[i], EDGES[i+1])``; the last bin everything from 16384 on."""


class LengthMeter:
    """Measures a row as the model will see it: the chat template's rendering, tokenised.

    Without a tokenizer the unit is whitespace-separated words. Measurements are cached on the
    record until a step changes its content.
    """

    def __init__(self, tokenizer: Any | None = None) -> None:
        self.tokenizer = tokenizer
        self.unit = "tokens" if tokenizer is not None else "words"

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.split())
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def measure(self, record: Record) -> int:
        cached = record.cache.get("length")
        if cached is not None and cached[0] == record.version:
            return cached[1]
        if self.tokenizer is None:
            length = sum(len(c.split()) for c in record.contents())
        elif record.messages is not None and getattr(self.tokenizer, "chat_template", None):
            from affinage.data.tokenize import render_chat

            text = render_chat(self.tokenizer, record.messages, where=record.where)
            length = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            length = sum(self.count(c) for c in record.contents())
        record.cache["length"] = (record.version, length)
        return length


@dataclass
class Histogram:
    """Counts of lengths in the fixed bins of :data:`HISTOGRAM_EDGES`, plus exact sum/min/max."""

    counts: list[int] = field(default_factory=lambda: [0] * len(HISTOGRAM_EDGES))
    total: int = 0
    sum: int = 0
    min: int | None = None
    max: int | None = None

    def add(self, value: int, times: int = 1) -> None:
        index = 0
        while index + 1 < len(HISTOGRAM_EDGES) and value >= HISTOGRAM_EDGES[index + 1]:
            index += 1
        self.counts[index] += times
        self.total += times
        self.sum += value * times
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)

    @property
    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0

    def labels(self) -> list[str]:
        edges = HISTOGRAM_EDGES
        return [f"{edges[i]}-{edges[i + 1] - 1}" for i in range(len(edges) - 1)] + [f"{edges[-1]}+"]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": HISTOGRAM_EDGES, "counts": self.counts, "total": self.total, "mean": self.mean,
                "min": self.min, "max": self.max}
