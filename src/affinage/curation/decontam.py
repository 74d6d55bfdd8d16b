"""Decontamination: remove training rows that share a long word n-gram with an evaluation set.

The test follows GPT-3 (Brown et al. 2020, "Language Models are Few-Shot Learners", appendix C): a
training row is contaminated when any of its ``n``-grams of normalised words (13 by default) also
occurs in an evaluation item. An evaluation item shorter than ``n`` words is matched as a whole, so
a short question copied into the training data is still caught.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affinage.curation.base import Step
from affinage.curation.record import Record, hash64, normalize_for_dedup
from affinage.data.io import read_rows
from affinage.errors import ConfigError, DataError


@dataclass
class DecontaminateOptions:
    eval: list[str] = field(default_factory=list)
    """Evaluation files (any file the data loader reads); every string of every row is indexed, whatever the columns."""
    ngram: int = 13
    min_words: int = 5
    """Evaluation items shorter than this many words are ignored (``yes``, ``thank you`` are everywhere)."""


class DecontaminateStep(Step):
    name = "decontaminate"

    def __init__(self, options: DecontaminateOptions, context) -> None:
        super().__init__(options, context)
        if not options.eval:
            raise ConfigError("decontaminate step: 'eval' needs at least one evaluation file")
        if options.ngram < 1:
            raise ConfigError("decontaminate step: ngram must be at least 1")
        # n-gram hash -> name of the first evaluation set holding it; short items by their length.
        self.index: dict[int, str] = {}
        self.lengths: set[int] = set()
        self.eval_items: dict[str, int] = {}
        for path in options.eval:
            self._add_eval_file(path)

    def _add_eval_file(self, path: str) -> None:
        name = Path(path).name
        count = 0
        for _, row in read_rows(path):
            for text in _strings(row):
                words = normalize_for_dedup(text).split()
                if len(words) < self.options.min_words:
                    continue
                n = min(self.options.ngram, len(words))
                if n < self.options.ngram:
                    self.lengths.add(n)
                for gram in ngrams(words, n):
                    self.index.setdefault(gram, name)
            count += 1
        if count == 0:
            raise DataError(f"decontaminate step: evaluation file {path} holds no rows")
        self.eval_items[name] = count

    def __call__(self, record: Record) -> str | None:
        for text in record.contents():
            words = normalize_for_dedup(text).split()
            for n in (self.options.ngram, *sorted(self.lengths)):
                if len(words) < n:
                    continue
                for gram in ngrams(words, n):
                    name = self.index.get(gram)
                    if name is not None:
                        return f"shares a {n}-word sequence with {name}"
        return None

    def details(self) -> dict:
        return {"evaluation items": self.eval_items, "indexed n-grams": len(self.index)}


def _strings(value: Any):
    """Every string inside a row, whatever its format (messages, prompt/completion, question/choices...)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def ngrams(words: list[str], n: int):
    """Hashes of the word n-grams of ``words`` (the n-gram's length is part of the hash)."""
    for i in range(len(words) - n + 1):
        yield hash64(f"{n}\x00" + " ".join(words[i : i + n]))
