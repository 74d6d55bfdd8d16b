"""Supervised fine-tuning data: files -> rows -> examples -> token ids and labels, with a report.

``load_sft_data(cfg.data, tokenizer)`` reads every file of ``data.train`` and ``data.validation``,
converts each row in its format (``data.format``, or detected per file from its first row), and
tokenises it with the chat template and the assistant-only loss mask. Without validation files,
``data.validation_fraction`` of the training rows is held out by a stable hash of each row's
content (:func:`affinage.data.io.stable_fraction`), so a row never changes split when data is added.

A malformed row is an error: the DataError names the file, the row and the fix, and loading stops.
Rows that are valid but leave no trainable token (an answer cut off by ``data.max_length``) are
dropped, counted per file and reason, and shown by :meth:`SFTData.print_report`: nothing is dropped
silently. ``data.max_examples`` caps the examples kept per split; reading stops once it is reached.
A saved ``DatasetDict`` is read at its ``train`` split from ``data.train`` and at its ``validation``
split from ``data.validation``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from affinage.config import DataConfig
from affinage.data.formats import FORMATS, detect_format, format_matches, to_example
from affinage.data.io import read_rows, stable_fraction
from affinage.data.tokenize import TokenizedExample, tokenize_example
from affinage.errors import DataError

VALIDATION_FULL = "validation split already holds data.max_examples examples"


@dataclass
class FileReport:
    """What became of the rows of one file."""

    path: str
    source: str
    """``train`` or ``validation``: the config list the file came from."""
    format: str = "?"
    rows: int = 0
    """Rows read (fewer than the file holds when ``capped``)."""
    train: int = 0
    validation: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    """Examples kept in a degraded form (e.g. only the last turn trained), by reason."""
    tokens: int = 0
    trainable_tokens: int = 0
    capped: bool = False
    """Reading stopped early because ``data.max_examples`` was reached."""


@dataclass
class DataReport:
    files: list[FileReport] = field(default_factory=list)
    max_length: int = 0
    max_examples: int | None = None

    @property
    def dropped(self) -> Counter[str]:
        return sum((f.dropped for f in self.files), Counter())

    @property
    def notes(self) -> Counter[str]:
        return sum((f.notes for f in self.files), Counter())


@dataclass
class SFTData:
    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    train_meta: list[dict[str, Any]]
    """``Example.meta`` of each training example (language, category...), aligned with ``train``."""
    validation_meta: list[dict[str, Any]]
    report: DataReport

    def print_report(self, console: Any = None) -> None:
        """Print one row per file (rows read, kept per split, dropped, tokens) and every drop reason."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(title="Data", title_justify="left")
        for name in (
            "file",
            "from",
            "format",
            "rows",
            "train",
            "validation",
            "dropped",
            "tokens",
            "trained tokens",
        ):
            table.add_column(name, justify="left" if name in ("file", "from", "format") else "right")
        for f in self.report.files:
            rows = f"{f.rows:,}" + (" (capped)" if f.capped else "")
            table.add_row(
                f.path,
                f.source,
                f.format,
                rows,
                f"{f.train:,}",
                f"{f.validation:,}",
                f"{f.dropped.total():,}",
                f"{f.tokens:,}",
                f"{f.trainable_tokens:,}",
            )
        console.print(table)
        for reason, count in self.report.dropped.most_common():
            console.print(f"dropped {count:,} rows: {reason} (max_length={self.report.max_length})")
        for note, count in self.report.notes.most_common():
            console.print(f"kept {count:,} rows with a warning: {note}")
        if any(f.capped for f in self.report.files):
            console.print(f"reading stopped at data.max_examples={self.report.max_examples}")


@dataclass
class _Split:
    examples: list[TokenizedExample] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)


def load_sft_data(cfg: DataConfig, tokenizer: Any) -> SFTData:
    """Read, convert, split and tokenise the files of ``cfg``; raise DataError on any malformed row."""
    report = DataReport(max_length=cfg.max_length, max_examples=cfg.max_examples)
    train, validation = _Split(), _Split()
    holdout = 0.0 if cfg.validation else cfg.validation_fraction
    for path in cfg.train:
        report.files.append(_load_file(path, "train", cfg, tokenizer, train, validation, holdout))
    for path in cfg.validation:
        report.files.append(_load_file(path, "validation", cfg, tokenizer, train, validation, 1.0))
    if not train.examples:
        dropped = report.dropped
        why = "; ".join(f"{n} dropped: {reason}" for reason, n in dropped.items()) or "the files hold no row"
        raise DataError(
            f"no training example left from {', '.join(cfg.train)} ({why}). "
            f"Raise data.max_length (now {cfg.max_length}) or check the data."
        )
    return SFTData(train.examples, validation.examples, train.meta, validation.meta, report)


def _load_file(
    path: str,
    source: str,
    cfg: DataConfig,
    tokenizer: Any,
    train: _Split,
    validation: _Split,
    holdout: float,
) -> FileReport:
    """Read one file into ``train``/``validation``; rows go to validation when ``stable_fraction < holdout``."""
    report = FileReport(path=path, source=source)
    # A saved DatasetDict (or a JSON file with several splits) given as validation data is read at
    # its "validation" split. Raises now for a missing file, even when the cap means it is not read.
    rows = read_rows(path, split=source)
    cap = cfg.max_examples
    fmt = None if cfg.format == "auto" else cfg.format
    detected_at = 0
    for number, row in rows:
        target = validation if source == "validation" else train
        if cap is not None and len(target.examples) >= cap:
            report.capped = True
            break
        where = f"{path}, row {number}"
        if fmt is None:
            fmt, detected_at = detect_format(row, where), number
        elif detected_at and not format_matches(row, fmt):
            raise DataError(
                f"{where}: the rows of this file were detected as format '{fmt}' from row {detected_at}, "
                f"but this row has the keys ({', '.join(map(str, row))}); {fmt} needs "
                f"{', '.join(FORMATS[fmt].required)}. Every row of one file must use the same format."
            )
        example = to_example(row, fmt, where)
        report.rows += 1
        split = validation if holdout >= 1.0 or (holdout > 0 and stable_fraction(row) < holdout) else train
        if split is validation and cap is not None and len(validation.examples) >= cap:
            report.dropped[VALIDATION_FULL] += 1
            continue
        result = tokenize_example(
            tokenizer,
            example,
            max_length=cfg.max_length,
            train_on_prompt=cfg.train_on_prompt,
            system_prompt=cfg.system_prompt,
            where=where,
        )
        if isinstance(result, str):
            report.dropped[result] += 1
            continue
        if result.note:
            report.notes[result.note] += 1
        split.examples.append(result)
        split.meta.append(example.meta)
        report.tokens += len(result)
        report.trainable_tokens += result.num_trainable
        if split is validation:
            report.validation += 1
        else:
            report.train += 1
    report.format = fmt or report.format
    if report.rows == 0 and not report.capped:
        raise DataError(f"{path} holds no rows; remove it from data.{source} or fill it")
    return report
