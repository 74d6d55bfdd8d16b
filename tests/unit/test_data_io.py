"""Reading every file type, writing JSONL atomically, and loading SFT data with its report."""

from __future__ import annotations

import csv
import gzip
import io
import json

import pytest
from rich.console import Console

from affinage.config import DataConfig
from affinage.data.io import read_rows, stable_fraction, write_jsonl
from affinage.data.sft import load_sft_data
from affinage.data.tokenize import DROP_TRUNCATED
from affinage.errors import DataError

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Question {i}, s'il vous plaît"},
            {"role": "assistant", "content": f'Réponse {i}, avec des "guillemets", et une virgule'},
        ],
        "language": "fr" if i % 2 else "en",
    }
    for i in range(5)
]


def _write_json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


def _write_json_wrapped(path, rows):
    path.write_text(json.dumps({"data": rows}), encoding="utf-8")


def _write_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "messages": json.dumps(row["messages"], ensure_ascii=False)})


def _write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)


def _write_hf_disk(path, rows):
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(path))


def _write_hf_dict(path, rows):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(
        str(path)
    )


def _write_jsonl_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


WRITERS = {
    "data.jsonl": write_jsonl,
    "data.json": _write_json,
    "wrapped.json": _write_json_wrapped,
    "data.csv": _write_csv,
    "data.parquet": _write_parquet,
    "saved": _write_hf_disk,
    "saved_dict": _write_hf_dict,
    "data.jsonl.gz": _write_jsonl_gz,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_file_type_round_trips_the_same_rows(tmp_path, name):
    path = tmp_path / name
    WRITERS[name](path, ROWS)
    read = list(read_rows(path))
    assert [number for number, _ in read] == [1, 2, 3, 4, 5]
    assert [row for _, row in read] == ROWS


def test_saved_dataset_dict_split(tmp_path):
    path = tmp_path / "saved"
    _write_hf_dict(path, ROWS)
    assert [row for _, row in read_rows(path, split="test")] == ROWS[:1]
    with pytest.raises(DataError, match="no split 'validation'; its splits are: train, test"):
        list(read_rows(path, split="validation"))


def test_jsonl_counts_blank_lines_and_names_the_bad_row(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": "c"\n', encoding="utf-8")
    rows = read_rows(path)
    assert next(rows) == (1, {"text": "a"})
    assert next(rows) == (3, {"text": "b"})  # streamed: the bad line is not read yet
    with pytest.raises(DataError, match=r"train\.jsonl, row 4: invalid JSON \("):
        next(rows)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.jsonl", '{"text": "a"}\n["text"]\n', r"a\.jsonl, row 2: expected a JSON object.*got list"),
        ("b.json", '[{"text": "a"}, {"text": "b"}, 3]', r"b\.json, row 3: expected a JSON object.*got int"),
        ("c.json", '[{"text": "a"},\n {"text": }]', r"c\.json: invalid JSON .* line 2"),
        (
            "d.csv",
            'messages,id\n"[{""role"": ""user""}]",1\n"[{oops",2\n',
            r"d\.csv, row 2: column 'messages' holds invalid JSON",
        ),
        ("e.csv", "messages\nhello\n", r"e\.csv, row 1: column 'messages' must hold a JSON list"),
        ("f.csv", "text,id\na,1,extra\n", r"f\.csv, row 1: more cells than the 2 header columns"),
        ("g.json", '{"train": [], "test": [], "meta": []}', r"g\.json: .*several|g\.json: expected"),
    ],
)
def test_malformed_files_name_the_file_and_row(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        list(read_rows(path, split="validation"))


def test_json_file_holding_jsonl_is_read_line_by_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    assert list(read_rows(path)) == [(1, {"text": "a"}), (2, {"text": "b"})]


def test_csv_keeps_plain_prompts_and_parses_message_lists(tmp_path):
    path = tmp_path / "pc.csv"
    path.write_text(
        'prompt,completion\n[citation needed] is what?,a tag\n"[{""role"": ""user"", ""content"": ""x""}]",y\n'
    )
    rows = [row for _, row in read_rows(path)]
    assert rows[0] == {"prompt": "[citation needed] is what?", "completion": "a tag"}
    assert rows[1]["prompt"] == [{"role": "user", "content": "x"}]


def test_missing_file_suggests_near_names(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataError, match=r"trian\.jsonl does not exist\. Did you mean: .*train\.jsonl"):
        read_rows(tmp_path / "trian.jsonl")
    with pytest.raises(DataError, match=r"nothing\.jsonl does not exist\. .* holds: train\.jsonl"):
        read_rows(tmp_path / "nothing.jsonl")


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("")
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'.*JSONL.*Parquet"):
        read_rows(path)
    with pytest.raises(DataError, match="not a dataset written by datasets' save_to_disk"):
        read_rows(tmp_path)


def test_write_jsonl_is_atomic(tmp_path):
    path = tmp_path / "out" / "rows.jsonl"
    assert write_jsonl(path, [{"a": 1}]) == 1

    def failing():
        yield {"a": 2}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(path, failing())
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]


def test_stable_fraction_ignores_key_order():
    assert stable_fraction({"a": 1, "b": [1, 2]}) == stable_fraction({"b": [1, 2], "a": 1})
    assert 0 <= stable_fraction({"a": 1}) < 1
    assert stable_fraction({"a": 1}) != stable_fraction({"a": 2})


# ----------------------------------------------------------------------------------------------
# load_sft_data
# ----------------------------------------------------------------------------------------------


def _chat_rows(n, start=0):
    return [
        {
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
            "id": i,
        }
        for i in range(start, start + n)
    ]


def test_validation_split_is_stable_when_data_grows(tmp_path, tiny_tokenizer):
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_jsonl(small, _chat_rows(40))
    write_jsonl(large, list(reversed(_chat_rows(80))))  # more rows, other order
    cfg = DataConfig(train=[str(small)], validation_fraction=0.25)
    first = load_sft_data(cfg, tiny_tokenizer)
    second = load_sft_data(DataConfig(train=[str(large)], validation_fraction=0.25), tiny_tokenizer)
    held_small = {m["id"] for m in first.validation_meta}
    held_large = {m["id"] for m in second.validation_meta}
    assert 0 < len(held_small) < 40
    assert held_small == {i for i in held_large if i < 40}
    assert len(first.train) + len(first.validation) == 40
    assert {m["id"] for m in first.train_meta}.isdisjoint(held_small)


def test_rows_dropped_by_truncation_are_counted_and_reported(tmp_path, tiny_tokenizer):
    long_row = {
        "messages": [{"role": "user", "content": "long " * 40}, {"role": "assistant", "content": "ok"}]
    }
    rows = [*_chat_rows(3), long_row]
    path = tmp_path / "train.jsonl"
    write_jsonl(path, rows)
    data = load_sft_data(DataConfig(train=[str(path)], max_length=64), tiny_tokenizer)
    assert len(data.train) == 3
    (report,) = data.report.files
    assert (report.rows, report.train, report.format) == (4, 3, "messages")
    assert report.dropped == {DROP_TRUNCATED: 1}
    assert report.trainable_tokens == sum(ex.num_trainable for ex in data.train)
    console = Console(file=io.StringIO(), width=200)
    data.print_report(console)
    printed = console.file.getvalue()
    assert "train.jsonl" in printed and f"dropped 1 rows: {DROP_TRUNCATED}" in printed


def test_validation_files_format_detection_and_cap(tmp_path, tiny_tokenizer):
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.csv"
    write_jsonl(train, [{"instruction": f"do {i}", "output": f"done {i}", "lang": "en"} for i in range(10)])
    _write_csv(valid, _chat_rows(3))
    cfg = DataConfig(train=[str(train)], validation=[str(valid)], max_examples=4)
    data = load_sft_data(cfg, tiny_tokenizer)
    assert (len(data.train), len(data.validation)) == (4, 3)
    assert [f.format for f in data.report.files] == ["alpaca", "messages"]
    assert data.report.files[0].capped
    assert data.train_meta[0] == {"lang": "en"}


def test_a_malformed_row_aborts_with_its_file_and_row(tmp_path, tiny_tokenizer):
    path = tmp_path / "train.jsonl"
    rows = _chat_rows(3)
    rows[1]["messages"][1]["role"] = "robot"
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"train\.jsonl, row 2: .*unknown role 'robot'"):
        load_sft_data(DataConfig(train=[str(path)]), tiny_tokenizer)


def test_a_row_in_another_format_than_the_first_is_an_error(tmp_path, tiny_tokenizer):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [*_chat_rows(2), {"text": "raw"}])
    with pytest.raises(DataError, match=r"train\.jsonl, row 3: .*detected as format 'messages' from row 1"):
        load_sft_data(DataConfig(train=[str(path)]), tiny_tokenizer)


def test_nothing_left_to_train_is_an_error(tmp_path, tiny_tokenizer):
    path = tmp_path / "train.jsonl"
    write_jsonl(
        path, [{"messages": [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y"}]}]
    )
    with pytest.raises(DataError, match=r"no training example left.*data\.max_length"):
        load_sft_data(DataConfig(train=[str(path)], max_length=16), tiny_tokenizer)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl holds no rows"):
        load_sft_data(DataConfig(train=[str(empty)]), tiny_tokenizer)


def test_saved_dataset_dict_gives_its_validation_split_to_validation(tmp_path, tiny_tokenizer):
    from datasets import Dataset, DatasetDict

    path = tmp_path / "saved"
    DatasetDict(
        {"train": Dataset.from_list(_chat_rows(5)), "validation": Dataset.from_list(_chat_rows(2, 5))}
    ).save_to_disk(str(path))
    data = load_sft_data(DataConfig(train=[str(path)], validation=[str(path)]), tiny_tokenizer)
    assert [m["id"] for m in data.train_meta] == [0, 1, 2, 3, 4]
    assert [m["id"] for m in data.validation_meta] == [5, 6]
