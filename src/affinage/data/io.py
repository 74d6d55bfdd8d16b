"""Reading rows from data files and writing JSONL, with errors that name the file and the row.

``read_rows(path)`` yields ``(row_number, row)`` pairs, the row number 1-based, whatever the file
type: JSONL (streamed line by line), JSON (a list of objects, or a one-key wrapper such as
``{"train": [...]}``), CSV (one object per data row), Parquet (streamed by record batches) and a
directory written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``. ``.gz``
compressed JSONL, JSON and CSV files are read too.

Row numbers are what a user needs to find the row: the line number in JSONL (blank lines are
skipped but still counted), the data-row number in CSV (the header is not counted), the position
in the list for JSON, Parquet and saved datasets.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from affinage.errors import DataError

Row = dict[str, Any]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
SUPPORTED = (
    "JSONL (.jsonl, .ndjson), JSON (.json), CSV (.csv), Parquet (.parquet), their .gz versions "
    "for JSONL/JSON/CSV, and directories written by datasets' save_to_disk"
)

# CSV cells of these columns hold JSON (a message list, a structured prompt) when they look like it.
JSON_CELL_COLUMNS = frozenset({"messages", "conversations", "prompt", "completion", "chosen", "rejected"})
# Of those, these must be JSON when they are not empty: a plain string cannot be a conversation.
_JSON_REQUIRED_COLUMNS = frozenset({"messages", "conversations"})

# Keys that make a top-level JSON object a row rather than a wrapper around a list of rows.
_ROW_KEYS = frozenset({"messages", "conversations", "prompt", "instruction", "text", "chosen"})

_PARQUET_BATCH_ROWS = 1024


def read_rows(path: str | Path, *, split: str = "train") -> Iterator[tuple[int, Row]]:
    """Yield ``(row_number, row)`` for every row of a data file or saved dataset directory.

    ``split`` picks the split of a saved ``DatasetDict`` (and the key of a JSON file holding several
    splits, e.g. ``{"train": [...], "test": [...]}``). Raises :class:`DataError` for a missing file,
    an unsupported file type, invalid JSON or a row that is not an object.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(_missing_message(path))
    if path.is_dir():
        return _read_saved_dataset(path, split)
    reader = _reader_for(path)
    return reader(path, split)


def write_jsonl(path: str | Path, rows: Iterable[Row]) -> int:
    """Write ``rows`` as JSONL atomically (temp file in the same folder, then ``os.replace``).

    A crash half-way leaves the previous file, never a truncated one. Returns the number of rows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str))
                f.write("\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return count


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for kind, suffixes in (
        ("jsonl", JSONL_SUFFIXES),
        ("json", JSON_SUFFIXES),
        ("csv", CSV_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
    ):
        if name.endswith(suffixes):
            if kind == "parquet" and path.name.lower().endswith(".gz"):
                return None  # Parquet compresses internally; a gzipped Parquet file is not readable.
            return kind
    return None


def _reader_for(path: Path):
    kind = _kind(path)
    if kind is None:
        raise DataError(
            f"{path}: unsupported file type '{''.join(path.suffixes) or '(no extension)'}'. "
            f"Supported: {SUPPORTED}."
        )
    return {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind]


def _open_text(path: Path) -> IO[str]:
    # utf-8-sig drops the byte-order mark some editors (and Excel) write at the start.
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _missing_message(path: Path) -> str:
    parent = path.parent
    message = f"data file {path} does not exist"
    if not parent.is_dir():
        return f"{message} (nor does its folder {parent})"
    names = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.8)
    if close:
        return f"{message}. Did you mean: {', '.join(str(parent / n) for n in close)}?"
    data_files = [n for n in names if _kind(parent / n) or (parent / n).is_dir()]
    if data_files:
        shown = ", ".join(data_files[:10]) + (", ..." if len(data_files) > 10 else "")
        return f"{message}. {parent} holds: {shown}"
    return f"{message}; {parent} holds no data file"


def _require_object(value: Any, path: Path, row_number: int) -> Row:
    if not isinstance(value, dict):
        raise DataError(
            f'{path}, row {row_number}: expected a JSON object like {{"messages": [...]}}, '
            f"got {type(value).__name__} {_short(value)}"
        )
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------


def _read_jsonl(path: Path, split: str = "train") -> Iterator[tuple[int, Row]]:
    with _open_text(path) as f:
        yield from _jsonl_lines(f, path)


def _jsonl_lines(lines: Iterable[str], path: Path) -> Iterator[tuple[int, Row]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}, row {number}: invalid JSON ({exc.msg} at column {exc.colno}). "
                "Each line of a JSONL file must hold one complete JSON object."
            ) from None
        yield number, _require_object(value, path, number)


def _read_json(path: Path, split: str = "train") -> Iterator[tuple[int, Row]]:
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":
                # Many datasets name JSONL files *.json: one object per line is "extra data" to json.
                f.seek(0)
                yield from _jsonl_lines(f, path)
                return
            raise DataError(
                f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            ) from None
    rows = _unwrap_json(data, path, split)
    for index, value in enumerate(rows, start=1):
        yield index, _require_object(value, path, index)


def _unwrap_json(data: Any, path: Path, split: str) -> list[Any]:
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a list of objects at the top level, got {type(data).__name__}")
    if isinstance(data.get(split), list):
        return data[split]
    if data.keys() & _ROW_KEYS:
        return [data]  # the file holds one row, e.g. {"messages": [...]}
    lists = [k for k, v in data.items() if isinstance(v, list)]
    if len(data) == 1 and lists:
        return data[lists[0]]  # a one-key wrapper such as {"data": [...]}
    raise DataError(
        f"{path}: expected a list of objects at the top level, or one key holding that list "
        f'(such as "{split}"); found the keys {", ".join(data)}'
    )


def _read_csv(path: Path, split: str = "train") -> Iterator[tuple[int, Row]]:
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return
        if any(not name for name in reader.fieldnames):
            raise DataError(f"{path}: the header row has an empty column name: {reader.fieldnames}")
        for number, row in enumerate(reader, start=1):
            if None in row:
                raise DataError(
                    f"{path}, row {number}: more cells than the {len(reader.fieldnames)} header columns; "
                    "quote cells that contain commas"
                )
            yield number, {key: _csv_cell(key, value, path, number) for key, value in row.items()}


def _csv_cell(key: str, value: str | None, path: Path, number: int) -> Any:
    if value is None:
        return None  # a short row: DictReader fills the missing cells with None
    if key not in JSON_CELL_COLUMNS:
        return value
    text = value.strip()
    if not text.startswith(("[", "{")):
        if key in _JSON_REQUIRED_COLUMNS and text:
            raise DataError(
                f"{path}, row {number}: column '{key}' must hold a JSON list of messages, got {_short(value)}"
            )
        return value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if key in _JSON_REQUIRED_COLUMNS:
            raise DataError(
                f"{path}, row {number}: column '{key}' holds invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        return value  # a prompt that merely starts with a bracket


def _read_parquet(path: Path, split: str = "train") -> Iterator[tuple[int, Row]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt or non-Parquet file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    number = 0
    with parquet:
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield number, row


def _read_saved_dataset(path: Path, split: str) -> Iterator[tuple[int, Row]]:
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise DataError(
            f"{path} is a folder but not a dataset written by datasets' save_to_disk "
            f"(no dataset_info.json or dataset_dict.json inside). Give a data file instead; supported: {SUPPORTED}."
        )
    return _iter_saved_dataset(path, split)


def _iter_saved_dataset(path: Path, split: str) -> Iterator[tuple[int, Row]]:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise DataError(
                f"{path}: the saved dataset has no split '{split}'; its splits are: {', '.join(dataset)}"
            )
        dataset = dataset[split]
    yield from enumerate(dataset, start=1)


def stable_fraction(row: Row) -> float:
    """A number in [0, 1) fixed by the row's content alone (SHA-256 of its canonical JSON).

    Splitting on ``stable_fraction(row) < fraction`` keeps every row in the same split when the data
    grows or is reordered (key order inside a row does not matter), and sends duplicates to the same split.
    Python's ``hash`` is salted per process and cannot be used for this.
    """
    blob = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    digest = hashlib.sha256(blob.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
