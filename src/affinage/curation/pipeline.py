"""``curate(cfg)``: sources -> steps -> split -> mix -> outputs and a data card, streaming.

One pass reads every source row by row through the steps. A kept row goes to the validation split
when its stable content hash (:func:`affinage.data.stable_fraction`) is below
``split.validation_fraction``, else to a per-source spill file of training rows. A second pass writes
the training split from the spill files with the mixing plan (:mod:`affinage.curation.mixing`),
interleaving the sources. What stays in memory does not grow with the data except 16 bytes per
kept training row (its mixing hash and length), and the dedup indexes live on disk, so memory stays
flat as inputs grow.

Everything is written into a temporary sibling of ``output.dir`` and renamed into place at the end
(:func:`affinage.utils.fs.atomic_directory`): an interrupted run leaves the previous output intact.
"""

from __future__ import annotations

import json
import shutil
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import IO, Any

from affinage.config import dump_yaml
from affinage.curation.base import StepContext
from affinage.curation.config import CurateConfig, source_name
from affinage.curation.lengths import LengthMeter
from affinage.curation.mixing import interleave, plan_source, source_passes, target_counts
from affinage.curation.record import hash_fraction
from affinage.curation.sources import Skip, expand, read_source
from affinage.curation.stats import CurationStats, SourceStats, StepStats
from affinage.curation.steps import parse_steps
from affinage.data.io import read_rows, stable_fraction
from affinage.errors import DataError
from affinage.utils.fs import atomic_directory, atomic_write_text

_MANY_REPEATS = 5.0
"""Upsampling factor from which the card warns about memorisation."""


@dataclass
class CurationResult:
    output_dir: Path
    stats: CurationStats


class _Spill:
    """Kept training rows of one source on disk, with their mixing hashes and lengths in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[str] | None = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.hashes = array("d")
        self.lengths = array("l")

    def add(self, line: str, mix_hash: float, length: int) -> None:
        assert self.handle is not None
        self.handle.write(line)
        self.handle.write("\n")
        self.hashes.append(mix_hash)
        self.lengths.append(length)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def read_pass(self) -> Iterator[tuple[float, tuple[str, int]]]:
        with open(self.path, encoding="utf-8") as f:
            for line, value, length in zip(f, self.hashes, self.lengths, strict=True):
                yield value, (line, length)


def curate(cfg: CurateConfig, *, console: Any = None) -> CurationResult:
    """Run the curation ``cfg`` describes; return the output folder and the counts."""
    from affinage.curation.card import write_card

    specs = parse_steps(cfg.steps)
    for source in cfg.sources:  # a missing file fails now, with suggestions, not after the first sources
        for path in expand(source.path):
            read_rows(path, split=source.split)
    tokenizer = None
    if cfg.tokenizer:
        from affinage.models.loading import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer, chat_template=cfg.chat_template)
    meter = LengthMeter(tokenizer)
    skip = cfg.on_error == "skip"
    out = Path(cfg.output.dir)
    started = time.perf_counter()

    stats = CurationStats(unit=meter.unit, examples_per_reason=cfg.output.examples_per_reason)
    for source in cfg.sources:
        name = source_name(source)
        stats.sources[name] = SourceStats(name, source.path, source.share, source.weight)

    with atomic_directory(out) as tmp:
        work = tmp / ".work"
        work.mkdir()
        context = StepContext(work_dir=work, lengths=meter)
        steps = []
        try:
            for spec in specs:
                steps.append(spec.build(context))
            step_stats = [StepStats(step.name, step.describe()) for step in steps]
            stats.steps = step_stats
            spills = {name: _Spill(work / f"spill-{i}.jsonl") for i, name in enumerate(stats.sources)}
            validation_path = work / "validation.jsonl"
            removed = open(tmp / "removed.jsonl", "w", encoding="utf-8") if cfg.output.removed else None  # noqa: SIM115
            with open(validation_path, "w", encoding="utf-8") as validation:
                for source in cfg.sources:
                    _read_one_source(source, skip, steps, step_stats, stats, meter, spills, validation, removed, cfg)
                    if console is not None:
                        s = stats.sources[source_name(source)]
                        console.print(
                            f"source {s.name}: {s.rows_read:,} rows read, {s.kept:,} kept"
                            + (f", {s.skipped.total():,} skipped" if s.skipped else "")
                        )
            if removed is not None:
                removed.close()
        finally:
            for step in steps:
                step.close()
        for step, st in zip(steps, stats.steps, strict=True):
            st.changes.update(step.changes)
            st.details = step.details()
        for spill in spills.values():
            spill.close()

        # ---------------------------------------------------------------- mixing
        shares = {n: s.target_share for n, s in stats.sources.items()}
        has_shares = any(v is not None for v in shares.values())
        available = {name: len(spill.hashes) for name, spill in spills.items()}
        targets = target_counts(
            available,
            {k: float(v) for k, v in shares.items() if v is not None} if has_shares else None,
            {n: s.weight for n, s in stats.sources.items()},
            cfg.mix.total,
        )
        plans = {name: plan_source(name, spills[name].hashes, targets[name]) for name in spills}
        for name, plan in plans.items():
            stats.sources[name].mixing = plan.describe()
            stats.sources[name].mixed = plan.target
            if has_shares and available[name] == 0:
                stats.warnings.append(f"source {name} has no training row left, so its share cannot be met")
            elif plan.factor >= _MANY_REPEATS:
                stats.warnings.append(
                    f"source {name} is upsampled x{plan.factor:.3g}: each row is seen that many times per epoch, "
                    "which invites memorisation; add rows to it or lower its share"
                )

        # ---------------------------------------------------------------- outputs
        train_jsonl = (tmp if "jsonl" in cfg.output.formats else work) / "train.jsonl"
        streams = {
            name: source_passes(plans[name], spills[name].read_pass) for name in spills
        }
        with open(train_jsonl, "w", encoding="utf-8") as f:
            for line, length in interleave(streams, {n: p.target for n, p in plans.items()}):
                f.write(line)
                stats.length_train.add(length)
        validation_jsonl = None
        if stats.validation_rows:
            validation_jsonl = (tmp if "jsonl" in cfg.output.formats else work) / "validation.jsonl"
            if validation_jsonl != validation_path:
                shutil.move(validation_path, validation_jsonl)
        if "jsonl" in cfg.output.formats:
            stats.outputs["train.jsonl"] = str(out / "train.jsonl")
            if validation_jsonl is not None:
                stats.outputs["validation.jsonl"] = str(out / "validation.jsonl")
        if stats.train_rows and ({"hf", "parquet"} & set(cfg.output.formats)):
            _write_dataset(train_jsonl, validation_jsonl, tmp, work, cfg, out, stats)

        stats.seconds = time.perf_counter() - started
        shutil.rmtree(work, ignore_errors=True)
        atomic_write_text(tmp / "curate.yaml", dump_yaml(cfg))
        atomic_write_text(tmp / "stats.json", json.dumps(stats.to_dict(), indent=2, ensure_ascii=False) + "\n")
        if cfg.output.card:
            write_card(stats, tmp, title=f"Data card: {out.name}")
            stats.outputs["card.md"] = str(out / "card.md")
            stats.outputs["card.html"] = str(out / "card.html")

    if stats.train_rows == 0:
        reasons = _removal_summary(stats)
        raise DataError(
            f"no training row left after curation ({reasons}); the card in {out} shows what each step removed"
        )
    return CurationResult(out, stats)


def _removal_summary(stats: CurationStats) -> str:
    parts = [f"{st.name} removed {st.dropped.total():,}" for st in stats.steps if st.dropped]
    if stats.skipped_total:
        parts.append(f"{stats.skipped_total:,} skipped as unreadable")
    return "; ".join(parts) or "the sources hold no row"


def _read_one_source(source, skip, steps, step_stats, stats, meter, spills, validation, removed, cfg) -> None:
    fraction = cfg.split.validation_fraction
    salt = f"mix:{cfg.mix.seed}"
    for item in read_source(source, skip):
        if isinstance(item, Skip):
            stats.skip(item.source, item.where, item.reason, item.message)
            continue
        record = item
        stats.read(record, meter.measure(record))
        for step, st in zip(steps, step_stats, strict=True):
            st.rows_in += 1
            original = record.to_row() if removed is not None else None
            t0 = perf_counter()
            reason = step(record)
            st.seconds += perf_counter() - t0
            if reason is not None:
                stats.drop(st, record, reason)
                if removed is not None:
                    removed.write(json.dumps({"step": st.name, "reason": reason, "where": record.where, "row": original},
                                             ensure_ascii=False, default=str) + "\n")
                break
        else:
            content = record.content()
            line = json.dumps(record.to_row(), ensure_ascii=False, default=str)
            length = meter.measure(record)
            if fraction > 0 and stable_fraction(content) < fraction:
                stats.keep(record, "validation")
                validation.write(line + "\n")
                stats.length_validation.add(length)
            else:
                stats.keep(record, "train")
                spills[record.source].add(line, hash_fraction(content, salt), length)


def _write_dataset(train_jsonl: Path, validation_jsonl: Path | None, tmp: Path, work: Path, cfg: CurateConfig,
                   out: Path, stats: CurationStats) -> None:
    """Build the Hugging Face dataset from the JSONL files (streamed by datasets into Arrow), then Parquet."""
    import datasets
    from datasets import DatasetDict

    datasets.disable_progress_bars()
    cache = work / "hf-cache"
    files = {"train": train_jsonl}
    if validation_jsonl is not None:
        files["validation"] = validation_jsonl
    try:
        dataset = DatasetDict(
            {split: datasets.Dataset.from_json(str(path), cache_dir=str(cache)) for split, path in files.items()}
        )
    except Exception as exc:  # datasets raises several types for a column whose type varies between rows
        raise DataError(
            f"cannot build the Hugging Face dataset from the curated rows: {exc}. A column probably holds "
            "different types in different sources (e.g. 'id' a number in one, text in another); rename or "
            "convert it in the source, or write only jsonl (output.formats=[jsonl])"
        ) from None
    if "hf" in cfg.output.formats:
        dataset.save_to_disk(str(tmp / "dataset"))
        stats.outputs["dataset"] = str(out / "dataset")
    if "parquet" in cfg.output.formats:
        for split, ds in dataset.items():
            ds.to_parquet(str(tmp / f"{split}.parquet"))
            stats.outputs[f"{split}.parquet"] = str(out / f"{split}.parquet")
    del dataset


class RowProcessor:
    """The per-row steps as a plain function on rows, for ``datasets.map(num_proc=N)`` or a datatrove filter.

    ``RowProcessor(["clean", "pii"])(row)`` returns the cleaned row in the ``messages`` (or ``text``)
    format with ``source`` and ``language`` columns, or None when a step removes it (the reason is
    then in ``processor.last_reason``). Steps are built lazily in each worker process, so the object
    pickles. Deduplication needs one index over all rows, so ``exact_dedup`` and ``near_dedup`` are
    refused here: run them in one process afterwards (they are the fast part), or use datatrove's
    MinHash stages on a cluster.
    """

    GLOBAL_STEPS = frozenset({"exact_dedup", "near_dedup"})

    def __init__(self, steps: list, *, source: str = "rows", data_format: str = "auto",
                 tokenizer: str | None = None) -> None:
        from affinage.errors import ConfigError

        specs = parse_steps(steps)
        refused = [s.name for s in specs if s.name in self.GLOBAL_STEPS]
        if refused:
            raise ConfigError(f"RowProcessor runs per-row steps only; run {refused} in one process afterwards")
        self.steps_config, self.source, self.data_format, self.tokenizer = steps, source, data_format, tokenizer
        self.last_reason: str | None = None
        self._steps: list | None = None

    def _build(self) -> list:
        import tempfile

        tokenizer = None
        if self.tokenizer:
            from affinage.models.loading import load_tokenizer

            tokenizer = load_tokenizer(self.tokenizer)
        context = StepContext(work_dir=Path(tempfile.mkdtemp(prefix="affinage-rows-")), lengths=LengthMeter(tokenizer))
        return [spec.build(context) for spec in parse_steps(self.steps_config)]

    def __call__(self, row: dict[str, Any], index: int | None = None) -> dict[str, Any] | None:
        from affinage.curation.record import Record
        from affinage.data.formats import detect_format, to_example

        if self._steps is None:
            self._steps = self._build()
        where = f"{self.source}, row {index + 1 if index is not None else '?'}"
        fmt = detect_format(row, where) if self.data_format == "auto" else self.data_format
        record = Record.from_example(to_example(row, fmt, where), self.source, where, None)
        for step in self._steps:
            reason = step(record)
            if reason is not None:
                self.last_reason = reason
                return None
        self.last_reason = None
        return record.to_row()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_steps": None}
