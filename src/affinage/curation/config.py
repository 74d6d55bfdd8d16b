"""The ``curate`` stage config: sources, an ordered list of steps, mixing, splitting, outputs.

```yaml
stage: curate
tokenizer: smollm2-135m-instruct      # measures lengths in tokens (optional)
sources:
  - {path: "examples/data/helpdesk/*.jsonl", name: helpdesk, share: 0.8}
  - {path: examples/data/curation/noisy.jsonl, name: noisy, share: 0.2, language: fr}
steps:
  - clean
  - {step: language, allowed: [en, fr]}
  - {step: near_dedup, threshold: 0.7}
mix: {total: 1000}
split: {validation_fraction: 0.05}
output: {dir: data/curated, formats: [jsonl, parquet, hf]}
```

A step is its name alone or a mapping with the key ``step`` and that step's options; the options of
each step are a dataclass next to the step (see :data:`affinage.curation.steps.STEPS`) and are
checked as strictly as any other key (``steps[2].treshold`` fails with "did you mean threshold").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from affinage.config import DataFormat, _check
from affinage.errors import ConfigError

OutputFormat = Literal["jsonl", "parquet", "hf"]

DEFAULT_STEPS: list[str | dict[str, Any]] = ["clean", "quality", "language", "pii", "exact_dedup", "near_dedup"]


@dataclass
class SourceConfig:
    """One input: a file, a glob of files or a saved dataset, with its place in the mix."""

    path: str
    """A data file (JSONL, JSON, CSV, Parquet, .gz), a glob such as ``data/*.jsonl``, or a save_to_disk folder."""
    name: str | None = None
    """Shown in the card and written to the ``source`` column; defaults to the file name without extension."""
    share: float | None = None
    """Target share of the training rows after mixing (all sources or none set a share; they sum to 1)."""
    weight: float = 1.0
    """Without shares: multiply this source's rows by ``weight`` (2.0 repeats each row twice, 0.5 keeps half)."""
    language: str | None = None
    """The language of the rows when known (ISO 639-1, e.g. ``fr``); a ``language`` column in a row wins."""
    format: DataFormat = "auto"
    split: str = "train"
    """Split to read from a saved DatasetDict or a JSON file holding several splits."""
    max_rows: int | None = None
    """Read at most this many rows of the source (for trials)."""


@dataclass
class MixConfig:
    """How the sources are combined into the training split."""

    total: int | None = None
    """Training rows after mixing when sources have shares; by default the largest mix that needs no upsampling."""
    seed: int = 0
    """Salt of the content hash that chooses which rows are kept or repeated."""


@dataclass
class SplitConfig:
    """The train/validation split by a stable hash of each row's content."""

    validation_fraction: float = 0.0
    """Rows whose stable content hash falls below this fraction go to validation (before mixing, one copy each)."""


@dataclass
class OutputConfig:
    """Where and in which formats the curated data and its card are written."""

    dir: str = "data/curated"
    """Folder written atomically: train/validation files, dataset/ (save_to_disk), card.md, card.html, stats.json."""
    formats: list[OutputFormat] = field(default_factory=lambda: ["jsonl", "hf"])
    card: bool = True
    examples_per_reason: int = 3
    """Removed rows shown in the card for each step and reason."""
    removed: bool = False
    """Also write removed.jsonl: every removed row as it was when removed, with its step and reason."""


@dataclass
class CurateConfig:
    """Data curation: ``affinage data curate CONFIG.yaml``."""

    stage: Literal["curate"] = "curate"
    sources: list[SourceConfig] = field(default_factory=list)
    steps: list[str | dict[str, Any]] = field(default_factory=lambda: list(DEFAULT_STEPS))
    """Applied in order to every row; a row removed by one step is not seen by the next."""
    tokenizer: str | None = None
    """Model whose tokenizer measures lengths (alias, local directory or hub id); words when unset."""
    chat_template: str | None = None
    """Template used to render conversations for token counts, when the tokenizer has none."""
    on_error: Literal["fail", "skip"] = "fail"
    """A malformed row, an unreadable file or an empty source: stop with an error, or skip it and count it."""
    mix: MixConfig = field(default_factory=MixConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        from affinage.curation.steps import parse_steps

        _check(bool(self.sources), "sources", "needs at least one source, e.g. sources=[{path: data.jsonl}]")
        names = [source_name(s) for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        _check(not duplicates, "sources", f"have duplicate names {duplicates}; give each a distinct 'name'")
        shares = [s.share for s in self.sources]
        if any(s is not None for s in shares):
            missing = [n for n, s in zip(names, shares, strict=True) if s is None]
            _check(not missing, "sources", f"set a share on some sources but not on {missing}; set all or none")
            for i, s in enumerate(self.sources):
                _check(s.share is not None and s.share > 0, f"sources[{i}].share", f"must be positive, got {s.share}")
                _check(s.weight == 1.0, f"sources[{i}].weight", "cannot be combined with share; use one or the other")
            total = sum(s for s in shares if s is not None)
            _check(math.isclose(total, 1.0, abs_tol=1e-6), "sources", f"shares must sum to 1, they sum to {total:.6g}")
        for i, s in enumerate(self.sources):
            _check(s.weight > 0, f"sources[{i}].weight", f"must be positive, got {s.weight}")
            _check(s.max_rows is None or s.max_rows >= 1, f"sources[{i}].max_rows", "must be at least 1 or null")
        _check(self.mix.total is None or self.mix.total >= 1, "mix.total", "must be at least 1 or null")
        _check(
            self.mix.total is None or any(s is not None for s in shares),
            "mix.total",
            "only applies when the sources have shares; set sources[i].share or remove mix.total",
        )
        _check(0 <= self.split.validation_fraction < 1, "split.validation_fraction", "must be in [0, 1)")
        _check(self.chat_template is None or bool(self.tokenizer), "chat_template",
               "only applies with a tokenizer; set tokenizer (e.g. tokenizer=smollm2-135m-instruct) or remove it")
        _check(bool(self.output.formats), "output.formats", "needs at least one of jsonl, parquet, hf")
        _check(self.output.examples_per_reason >= 0, "output.examples_per_reason", "must be >= 0")
        steps = parse_steps(self.steps)
        if any(step.needs_tokenizer for step in steps) and not self.tokenizer:
            needing = [s.name for s in steps if s.needs_tokenizer]
            raise ConfigError(
                f"config key 'tokenizer' must be set for the step(s) {needing}, which count tokens "
                "(e.g. tokenizer=smollm2-135m-instruct)"
            )


def source_name(source: SourceConfig) -> str:
    if source.name:
        return source.name
    from pathlib import Path

    name = Path(source.path.rstrip("/")).name
    for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".pq"):
        name = name.removesuffix(suffix)
    return name.replace("*", "all") or "source"
