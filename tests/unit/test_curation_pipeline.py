"""The whole curation run: outputs, split stability, bad input, config validation, the data card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affinage.config import load_config
from affinage.curation import CurateConfig, curate
from affinage.errors import ConfigError, DataError

pytest.importorskip("ftfy")
pytest.importorskip("rensa")
pytest.importorskip("py3langid")

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = [
    "Run squeue with your user name to list pending and running jobs and their state.",
    "Use scancel followed by the job id, or scancel with your user name to cancel every job.",
    "Request the debug partition for short tests, jobs there start within a few seconds.",
    "The quota command shows the space and the number of files used in each of your folders.",
    "Archive small files into tar files before moving them, the file system prefers big files.",
    "Load the python module, create a virtual environment in your project folder and install there.",
]


def chat(question: str, answer: str, **meta) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **meta}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def distinct_rows(n: int, tag: str) -> list[dict]:
    return [chat(f"Question {tag} {i}: how do I do task number {i}?", f"{ANSWERS[i % len(ANSWERS)]} Case {tag}{i}.")
            for i in range(n)]


def run(tmp_path: Path, sources: list[dict], steps: list, out: str = "out", **extra) -> tuple:
    raw = {"sources": sources, "steps": steps, "output": {"dir": str(tmp_path / out), **extra.pop("output", {})}, **extra}
    config_path = tmp_path / f"{out}.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(CurateConfig, config_path)
    result = curate(cfg)
    return result, json.loads((result.output_dir / "stats.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_end_to_end_outputs_and_card(tmp_path):
    main_rows = distinct_rows(30, "m")
    noisy = [
        chat("Contact?", "Write to jane.doe@example.org or call +33 6 12 34 56 78 for the account.", language="en"),
        chat("Question m 0: how do I do task number 0?", main_rows[0]["messages"][1]["content"]),  # cross-source dup
        chat("Pourquoi ?", "Parce que la file d'attente est pleine ce matin, réessayez plus tard.", language="fr"),
        chat("Warum?", "Weil die Warteschlange heute Morgen voll ist, versuchen Sie es später.", language="de"),
    ]
    sources = [
        {"path": write_jsonl(tmp_path / "main.jsonl", main_rows), "name": "main"},
        {"path": write_jsonl(tmp_path / "noisy.jsonl", noisy), "name": "noisy", "weight": 2.0},
    ]
    steps = ["clean", {"step": "language", "allowed": ["en", "fr"]}, "pii", "exact_dedup"]
    result, stats = run(tmp_path, sources, steps, output={"formats": ["jsonl", "parquet", "hf"]},
                        split={"validation_fraction": 0.2})
    out = result.output_dir
    assert stats["rows_read"] == 34
    steps_by_name = {s["step"]: s for s in stats["steps"]}
    assert steps_by_name["language"]["dropped"] == {"language de not allowed": 1}
    assert steps_by_name["pii"]["changes"] == {"email": 1, "phone": 1}
    assert steps_by_name["exact_dedup"]["dropped"] == {"exact duplicate of a row from main": 1}
    # noisy keeps 2 rows (the PII row and the French one); weight 2 repeats its training rows twice.
    noisy_stats = stats["sources"]["noisy"]
    assert noisy_stats["kept"] == 2
    assert noisy_stats["mixed"] == 2 * noisy_stats["train"]
    train, validation = read_jsonl(out / "train.jsonl"), read_jsonl(out / "validation.jsonl")
    assert len(train) == stats["train_rows"] and len(validation) == stats["validation_rows"]
    assert stats["validation_rows"] + sum(s["train"] for s in stats["sources"].values()) == 32
    assert all("<EMAIL>" in r["messages"][1]["content"] for r in train + validation if r["source"] == "noisy"
               and r["language"] == "en")
    assert {r["language"] for r in train + validation} <= {"en", "fr"}

    from datasets import load_from_disk

    dataset = load_from_disk(str(out / "dataset"))
    assert dataset["train"].num_rows == len(train) and dataset["validation"].num_rows == len(validation)
    import pyarrow.parquet as pq

    assert pq.read_table(out / "train.parquet").num_rows == len(train)

    card = (out / "card.md").read_text()
    assert "| language | 34 | 1 | 33 | language de not allowed: 1 |" in card  # rows in, removed, out, why
    assert "language de not allowed" in card and "Warum?" in card  # an example of what was removed
    assert "| de |" in card and "| noisy |" in card
    assert "upsampled x2" in card
    html = (out / "card.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # shares, steps, lengths
    assert not list(tmp_path.glob(".out.tmp-*"))  # the atomic directory was renamed into place


def test_split_is_stable_when_data_grows(tmp_path):
    first = distinct_rows(60, "a")
    grown = first + distinct_rows(60, "b")
    splits = {}
    for name, rows in (("small", first), ("grown", list(reversed(grown)))):
        path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        result, _ = run(tmp_path, [{"path": path, "name": "data"}], [], out=name,
                        split={"validation_fraction": 0.25})
        splits[name] = {
            split: {json.dumps(r["messages"]) for r in read_jsonl(result.output_dir / f"{split}.jsonl")}
            for split in ("train", "validation")
        }
    small, big = splits["small"], splits["grown"]
    assert small["validation"] and small["train"]
    assert small["validation"] <= big["validation"]  # no row moved between splits
    assert small["train"] <= big["train"]
    assert 0.1 < len(big["validation"]) / 120 < 0.4


def test_shares_within_one_percent(tmp_path):
    sources = [
        {"path": write_jsonl(tmp_path / "a.jsonl", distinct_rows(200, "a")), "name": "a", "share": 0.6},
        {"path": write_jsonl(tmp_path / "b.jsonl", distinct_rows(40, "b")), "name": "b", "share": 0.3},
        {"path": write_jsonl(tmp_path / "c.jsonl", distinct_rows(90, "c")), "name": "c", "share": 0.1},
    ]
    result, stats = run(tmp_path, sources, [], mix={"total": 500})
    rows = read_jsonl(result.output_dir / "train.jsonl")
    assert len(rows) == 500
    for name, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        achieved = sum(r["source"] == name for r in rows) / len(rows)
        assert abs(achieved - share) < 0.01
    assert stats["sources"]["b"]["mixing"].startswith("upsampled")  # 40 rows -> 150
    assert stats["sources"]["c"]["mixing"].startswith("downsampled")  # 90 rows -> 50


def test_bad_input_fails_with_file_and_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok go"}]}\n'
                     b'{"prompt": "no completion"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 2: missing key 'messages'"):
        run(tmp_path, [{"path": str(path)}], [])
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_bad_input_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(chat("Which partition for tests?", "Use the debug partition for short tests."))
    path.write_bytes(good.encode() + b"\n{broken\n" + "{\"text\": \"caf\xe9\"}\n".encode("latin-1")
                     + b'{"messages": []}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result, stats = run(tmp_path, [{"path": str(path), "name": "bad"}, {"path": str(empty), "name": "empty"}], [],
                        on_error="skip")
    assert stats["sources"]["bad"]["skipped"] == {"invalid JSON": 1, "not valid UTF-8": 1, "malformed row": 1}
    assert stats["sources"]["empty"]["skipped"] == {"empty source": 1}
    assert stats["train_rows"] == 1
    card = (result.output_dir / "card.md").read_text()
    assert "bad.jsonl, row 3: not valid UTF-8" in card and "bad.jsonl, row 2: invalid JSON" in card


def test_empty_source_fails_by_default(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="source 'empty'.*holds no valid row"):
        run(tmp_path, [{"path": str(empty)}], [])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"sources": [{"path": "a.jsonl", "share": 0.5}, {"path": "b.jsonl", "share": 0.4}]}, "sum to 1"),
        ({"sources": [{"path": "a.jsonl", "share": 1.0}, {"path": "b.jsonl"}]}, "set all or none"),
        ({"sources": [{"path": "a.jsonl"}], "steps": [{"step": "near_dedup", "treshold": 0.8}]},
         "steps\\[0\\].treshold'. Did you mean 'steps\\[0\\].threshold'"),
        ({"sources": [{"path": "a.jsonl"}], "steps": ["dedupe"]}, "unknown step 'dedupe'"),
        ({"sources": [{"path": "a.jsonl"}], "steps": [{"step": "length", "max_tokens": 10}]}, "'tokenizer' must be set"),
        ({"sources": [{"path": "a.jsonl"}, {"path": "x/a.jsonl"}]}, "duplicate names"),
        ({"sources": []}, "needs at least one source"),
    ],
)
def test_config_errors(tmp_path, raw, message):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"stage": "curate", **raw}))
    with pytest.raises(ConfigError, match=message):
        load_config(CurateConfig, path)


@pytest.mark.parametrize("name", ["curate.yaml", "curate_llama3_mix.yaml"])
def test_example_configs_load(name):
    from affinage.config import config_class_for

    path = ROOT / "examples" / name
    assert config_class_for(path) is CurateConfig
    cfg = load_config(CurateConfig, path)
    for source in cfg.sources:
        from affinage.curation.sources import expand

        assert all(p.exists() for p in expand(source.path))


def test_row_processor_for_parallel_maps():
    import pickle

    from affinage.curation.pipeline import RowProcessor

    processor = RowProcessor(["clean", "pii"])
    row = chat("Mail me at a@example.org", "Ã©tÃ© is summer in French.")
    clone = pickle.loads(pickle.dumps(processor))  # what datasets.map(num_proc=N) does to it
    out = clone(row, 0)
    assert out["messages"][0]["content"] == "Mail me at <EMAIL>"
    assert out["messages"][1]["content"] == "été is summer in French."
    with pytest.raises(ConfigError, match="near_dedup"):
        RowProcessor(["clean", "near_dedup"])


def test_missing_source_fails_before_any_work(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", distinct_rows(3, "g"))
    with pytest.raises(DataError, match=r"goood.jsonl does not exist. Did you mean.*good.jsonl"):
        run(tmp_path, [{"path": good, "name": "a"}, {"path": str(tmp_path / "goood.jsonl"), "name": "b"}], [])
