"""What the curation run counted: rows in and out of every step and why, per source and per language."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from affinage.curation.lengths import Histogram
from affinage.curation.record import Record

UNKNOWN_LANGUAGE = "unknown"


@dataclass
class StepStats:
    name: str
    options: str
    rows_in: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    """Rows removed, by reason."""
    dropped_by_source: Counter[str] = field(default_factory=Counter)
    dropped_by_language: Counter[str] = field(default_factory=Counter)
    changes: Counter[str] = field(default_factory=Counter)
    """Rows or items changed without removal (PII replaced per kind, Unicode repaired...)."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """Up to ``examples_per_reason`` removed rows per reason (the first ones met: deterministic)."""
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.dropped.total()


@dataclass
class SourceStats:
    name: str
    path: str
    target_share: float | None = None
    weight: float = 1.0
    rows_read: int = 0
    """Valid rows read (skipped ones are not included)."""
    skipped: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    kept: int = 0
    train: int = 0
    """Kept rows in the training split, before mixing."""
    validation: int = 0
    mixed: int = 0
    """Training rows after mixing."""
    mixing: str = ""
    languages_in: Counter[str] = field(default_factory=Counter)
    """Rows read by language as known when they left the pipeline (identified, else declared)."""
    languages_kept: Counter[str] = field(default_factory=Counter)


@dataclass
class CurationStats:
    unit: str = "words"
    sources: dict[str, SourceStats] = field(default_factory=dict)
    steps: list[StepStats] = field(default_factory=list)
    skips: list[dict[str, str]] = field(default_factory=list)
    """The first skipped rows and files (``where``, ``reason``, ``message``)."""
    skipped_total: int = 0
    length_in: Histogram = field(default_factory=Histogram)
    length_train: Histogram = field(default_factory=Histogram)
    """Lengths of the training rows written (after mixing, repeated rows counted each time)."""
    length_validation: Histogram = field(default_factory=Histogram)
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    examples_per_reason: int = 3

    # ---------------------------------------------------------------- recording
    def read(self, record: Record, length: int) -> None:
        self.sources[record.source].rows_read += 1
        self.length_in.add(length)

    def skip(self, source: str, where: str, reason: str, message: str) -> None:
        self.sources[source].skipped[reason] += 1
        self.skipped_total += 1
        if len(self.skips) < 50:
            self.skips.append({"source": source, "where": where, "reason": reason, "message": message})

    def drop(self, step: StepStats, record: Record, reason: str) -> None:
        language = record.language or UNKNOWN_LANGUAGE
        step.dropped[reason] += 1
        step.dropped_by_source[record.source] += 1
        step.dropped_by_language[language] += 1
        source = self.sources[record.source]
        source.dropped += 1
        source.languages_in[language] += 1
        examples = step.examples.setdefault(reason, [])
        if len(examples) < self.examples_per_reason:
            examples.append(f"[{record.where}] {record.preview()}")

    def keep(self, record: Record, split: str) -> None:
        language = record.language or UNKNOWN_LANGUAGE
        source = self.sources[record.source]
        source.kept += 1
        source.languages_in[language] += 1
        source.languages_kept[language] += 1
        if split == "train":
            source.train += 1
        else:
            source.validation += 1

    # ---------------------------------------------------------------- totals
    @property
    def rows_read(self) -> int:
        return sum(s.rows_read for s in self.sources.values())

    @property
    def rows_kept(self) -> int:
        return sum(s.kept for s in self.sources.values())

    @property
    def train_rows(self) -> int:
        return sum(s.mixed for s in self.sources.values())

    @property
    def validation_rows(self) -> int:
        return sum(s.validation for s in self.sources.values())

    def languages(self) -> dict[str, dict[str, int]]:
        """language -> {"in": rows, "kept": rows, <step>: rows removed by that step}."""
        table: dict[str, dict[str, int]] = {}
        for source in self.sources.values():
            for lang, n in source.languages_in.items():
                table.setdefault(lang, Counter())["in"] += n
            for lang, n in source.languages_kept.items():
                table.setdefault(lang, Counter())["kept"] += n
        for step in self.steps:
            for lang, n in step.dropped_by_language.items():
                table.setdefault(lang, Counter())[step.name] += n
        return {lang: dict(counts) for lang, counts in sorted(table.items(), key=lambda kv: -kv[1].get("in", 0))}

    def shares(self) -> dict[str, dict[str, float | None]]:
        """Per source: share of kept training rows before mixing, after mixing, and the target."""
        before = sum(s.train for s in self.sources.values()) or 1
        after = self.train_rows or 1
        return {
            name: {"before": s.train / before, "after": s.mixed / after, "target": s.target_share}
            for name, s in self.sources.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "rows_read": self.rows_read,
            "rows_skipped": self.skipped_total,
            "rows_kept": self.rows_kept,
            "train_rows": self.train_rows,
            "validation_rows": self.validation_rows,
            "seconds": round(self.seconds, 3),
            "sources": {
                name: {
                    "path": s.path, "rows_read": s.rows_read, "skipped": dict(s.skipped), "dropped": s.dropped,
                    "kept": s.kept, "train": s.train, "validation": s.validation, "mixed": s.mixed,
                    "mixing": s.mixing, "target_share": s.target_share, "weight": s.weight,
                    "languages_kept": dict(s.languages_kept),
                }
                for name, s in self.sources.items()
            },
            "steps": [
                {
                    "step": st.name, "options": st.options, "rows_in": st.rows_in, "rows_out": st.rows_out,
                    "dropped": dict(st.dropped), "dropped_by_source": dict(st.dropped_by_source),
                    "dropped_by_language": dict(st.dropped_by_language), "changes": dict(st.changes),
                    "examples": st.examples, "details": st.details, "seconds": round(st.seconds, 3),
                }
                for st in self.steps
            ],
            "languages": self.languages(),
            "shares": self.shares(),
            "lengths": {"in": self.length_in.to_dict(), "train": self.length_train.to_dict(),
                        "validation": self.length_validation.to_dict()},
            "skips": self.skips,
            "warnings": self.warnings,
            "outputs": self.outputs,
        }
