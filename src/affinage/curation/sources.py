"""Reading the sources row by row, with bad input either stopping the run or counted as a skip.

Reading and format conversion are the data layer's (:func:`affinage.data.read_rows`,
:func:`affinage.data.to_example`). Curation adds what large, messy inputs need: globs, JSONL read
line by line so that one bad line (invalid JSON, invalid UTF-8) can be skipped while the lines after
it are still read, and ``on_error: skip``, under which every problem is counted with the file and
row, shown in the card, and never silently dropped.
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from affinage.curation.config import SourceConfig, source_name
from affinage.curation.record import Record
from affinage.data.formats import FORMATS, detect_format, to_example
from affinage.data.io import read_rows
from affinage.errors import DataError


@dataclass
class Skip:
    """A row or file that could not be read, under ``on_error: skip``."""

    source: str
    where: str
    reason: str
    """A short category for counting (``invalid JSON``...)."""
    message: str
    """The full error message, naming the file, the row and the fix."""


def expand(path: str) -> list[Path]:
    """The files a source path names: itself, or the sorted matches of a glob."""
    if any(ch in path for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(path, recursive=True))
        if not matches:
            raise DataError(f"source path '{path}' matches no file")
        return matches
    return [Path(path)]


def read_source(source: SourceConfig, skip: bool) -> Iterator[Record | Skip]:
    """Yield a :class:`Record` per valid row of ``source``, and a :class:`Skip` per problem when ``skip``."""
    name = source_name(source)
    read = 0
    for path in expand(source.path):
        # As the data loader: the format is detected from a file's first valid row, and every later
        # row must have that format's keys (a missing one is named in the error).
        fmt = None if source.format == "auto" else source.format
        for number, item in _rows(path, source.split, name, skip):
            if isinstance(item, Skip):
                yield item
                continue
            where = f"{path}, row {number}"
            try:
                row_format = fmt or detect_format(item, where)
                if row_format not in FORMATS:
                    raise DataError(f"{where}: unknown data format '{row_format}'")
                example = to_example(item, row_format, where)
                fmt = row_format
            except DataError as exc:
                if not skip:
                    raise
                yield Skip(name, where, "malformed row", str(exc))
                continue
            yield Record.from_example(example, name, where, source.language)
            read += 1
            if source.max_rows is not None and read >= source.max_rows:
                return
    if read == 0:
        message = f"source '{name}' ({source.path}) holds no valid row"
        if not skip:
            raise DataError(f"{message}; fill it, fix its rows or remove it from sources")
        yield Skip(name, source.path, "empty source", message)


def _rows(path: Path, split: str, name: str, skip: bool) -> Iterator[tuple[int, dict | Skip]]:
    lower = path.name.lower().removesuffix(".gz")
    if path.is_file() and lower.endswith((".jsonl", ".ndjson")):
        yield from _jsonl_rows(path, name, skip)
        return
    try:
        yield from read_rows(path, split=split)
    except UnicodeDecodeError as exc:
        message = f"{path}: not valid UTF-8 (byte {exc.start}: {exc.reason}); re-save the file as UTF-8"
        if not skip:
            raise DataError(message) from None
        yield 0, Skip(name, str(path), "file unreadable", message)
    except DataError as exc:
        if not skip:
            raise
        yield 0, Skip(name, str(path), "file unreadable", str(exc))


def _jsonl_rows(path: Path, name: str, skip: bool) -> Iterator[tuple[int, dict | Skip]]:
    """JSONL read as bytes line by line, so one broken line does not end the file under ``skip``."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        handle = opener(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot open {path}: {exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}, row {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                problem = (
                    "not valid UTF-8",
                    f"{where}: not valid UTF-8 (byte {exc.start} of the line: {exc.reason}); "
                    "re-save the file as UTF-8",
                )
            else:
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    problem = (
                        "invalid JSON",
                        f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); each line of a JSONL "
                        "file must hold one complete JSON object",
                    )
                else:
                    if isinstance(value, dict):
                        yield number, value
                        continue
                    problem = ("not an object", f'{where}: expected a JSON object like {{"messages": [...]}}, '
                               f"got {type(value).__name__}")
            if not skip:
                raise DataError(problem[1])
            yield number, Skip(name, where, problem[0], problem[1])
