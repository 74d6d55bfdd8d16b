"""What every curation step is: a callable on one :class:`Record` that may change it or remove it."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affinage.curation.record import Record
from affinage.errors import ConfigError


@dataclass
class StepContext:
    """What steps share: a scratch folder for on-disk indexes and the length meter."""

    work_dir: Path
    lengths: Any
    """:class:`affinage.curation.lengths.LengthMeter`: tokens of the target tokenizer, or words."""


class Step:
    """Base class: ``step(record)`` returns None to keep the row (possibly changed) or the reason to remove it.

    ``changes`` counts modifications by kind (``email``, ``unicode repaired``...), shown in the card.
    """

    name = ""
    needs_tokenizer = False

    def __init__(self, options: Any, context: StepContext) -> None:
        self.options = options
        self.context = context
        self.changes: Counter[str] = Counter()

    def __call__(self, record: Record) -> str | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release files and indexes; called once after the last row."""

    def details(self) -> dict[str, Any]:
        """Facts worth showing in the card besides the options (e.g. the LSH bands chosen)."""
        return {}

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self.options, f.name)!r}" for f in dataclasses.fields(self.options))


def require(module: str, extra: str, what: str):
    """Import an optional dependency, or fail with the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{what} needs the package '{module}'; install it with: pip install 'affinage[{extra}]'"
        ) from None
