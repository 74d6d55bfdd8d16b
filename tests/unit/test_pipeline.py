"""The pipeline: artifact references, manifests, skip-on-unchanged, resume after a failure, gates;
with a fake stage registered for the test and one real SFT stage on a tiny model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from affinage import config as config_module
from affinage import pipeline as P
from affinage.config import RunConfig
from affinage.errors import ConfigError, DataError

CALLS: list[dict] = []
BROKEN: set[str] = set()
"""Stages that fail while named here: a transient failure (a crash, a full disk) with an unchanged config."""


@dataclass
class FakeConfig:
    stage: Literal["fake"] = "fake"
    value: float = 1.0
    input: str | None = None
    """A file whose content is prepended to the output (an artifact of an earlier stage)."""
    note: str = ""
    """Changes the config but not the output."""
    fail: bool = False
    output_dir: str = ""
    resume: bool = False


@dataclass
class FakeRecipeConfig:
    stage: Literal["fakerecipe"] = "fakerecipe"
    run: RunConfig = field(default_factory=RunConfig)
    checkpoint: bool = False
    """Write a checkpoint directory before failing (so that the re-run can resume from it)."""


def fake_train(cfg: FakeRecipeConfig) -> Path:
    """A training recipe's contract: write metrics.jsonl under run.output_dir, return final/."""
    out = Path(cfg.run.output_dir)
    CALLS.append({"dir": out.name, "resume": cfg.run.resume, "value": 0})
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"split": "train", "step": 1, "loss": 2.0}) + "\n")
        fh.write(json.dumps({"split": "train", "step": 2, "loss": 1.5}) + "\n")
        fh.write(json.dumps({"split": "eval", "step": 2, "loss": 1.7, "perplexity": 5.5}) + "\n")
    if cfg.checkpoint:
        (out / "checkpoints" / "step-00000002").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / "step-00000002" / "trainer_state.json").write_text("{}")
    if out.name in BROKEN:
        raise DataError("planned failure")
    (out / "final").mkdir(exist_ok=True)
    (out / "final" / "config.json").write_text("{}")
    return out / "final"


def fake_runner(cfg: FakeConfig) -> P.StageOutput:
    CALLS.append({"dir": Path(cfg.output_dir).name, "resume": cfg.resume, "value": cfg.value})
    out = Path(cfg.output_dir)
    (out / "partial.txt").write_text("started")
    if cfg.fail or out.name in BROKEN:
        raise DataError("planned failure")
    prefix = Path(cfg.input).read_text() + "|" if cfg.input else ""
    text = f"{prefix}{out.name}:{cfg.value}"
    (out / "out.txt").write_text(text)
    return P.StageOutput(artifacts={"out": str(out / "out.txt")}, metrics={"value": cfg.value, "length": float(len(text))})


@pytest.fixture(autouse=True)
def fake_stage(monkeypatch):
    monkeypatch.setitem(config_module.STAGE_CONFIGS, "fake", "tests.unit.test_pipeline:FakeConfig")
    monkeypatch.setitem(
        P.STAGE_RUNNERS,
        "fake",
        P.StageSpec("tests.unit.test_pipeline:fake_runner", output_key="output_dir", artifacts=("out=out.txt",), resume_key="resume"),
    )
    monkeypatch.setitem(config_module.STAGE_CONFIGS, "fakerecipe", "tests.unit.test_pipeline:FakeRecipeConfig")
    monkeypatch.setitem(
        P.STAGE_RUNNERS, "fakerecipe", P.StageSpec("tests.unit.test_pipeline:fake_train", recipe=True,
                                                   artifacts=("final",), resume_key="run.resume"),
    )
    CALLS.clear()
    BROKEN.clear()
    yield


def write_pipeline(tmp_path: Path, stages: list[dict], name: str = "demo") -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": name, "output_dir": str(tmp_path / "runs"), "stages": stages}))
    return path


def two_stages(**b_extra) -> list[dict]:
    return [
        {"name": "a", "stage": "fake", "config": {"value": 1.0}},
        {"name": "b", "stage": "fake", "config": {"value": 2.0, "input": "${a.out}", **b_extra}},
    ]


def run(path: Path, *overrides: str, **kwargs) -> P.PipelineRun:
    return P.run_pipeline(P.load_pipeline(path, list(overrides)), **kwargs)


def file_content_hash(path: Path) -> str:
    """The documented artifact hash of a single file: sha256 over '.' NUL sha256(bytes)."""
    return hashlib.sha256(b".\0" + hashlib.sha256(path.read_bytes()).digest()).hexdigest()


def test_references_resolve_and_manifest_holds_lineage(tmp_path):
    result = run(write_pipeline(tmp_path, two_stages()))
    root = tmp_path / "runs" / "demo"
    assert result.status == "ok" and [s["status"] for s in result.stages] == ["ran", "ran"]
    a_out, b_out = root / "a" / "out.txt", root / "b" / "out.txt"
    assert b_out.read_text() == "a:1.0|b:2.0"  # ${a.out} resolved to a's file

    a, b = (json.loads((root / s / "manifest.json").read_text()) for s in ("a", "b"))
    assert a["artifacts"]["out"]["sha256"] == file_content_hash(a_out)
    assert b["inputs"] == {"a.out": file_content_hash(a_out)}
    assert b["config"]["input"] == str(a_out) and b["config"]["value"] == 2.0
    assert len(b["config_hash"]) == 64 and b["config_hash"] != a["config_hash"]
    assert b["metrics"] == {"value": 2.0, "length": float(len("a:1.0|b:2.0"))}
    assert b["status"] == "ok" and b["stage"] == "fake" and b["resumed"] is False
    assert b["affinage"] and "git_commit" in b and b["duration_s"] >= 0 and b["finished_at"]
    status = json.loads((root / "pipeline.json").read_text())
    assert status["status"] == "ok" and [s["name"] for s in status["stages"]] == ["a", "b"]
    assert not (root / "b" / P.ATTEMPT).exists()


def test_unchanged_stages_are_skipped_and_changes_propagate(tmp_path):
    path = write_pipeline(tmp_path, two_stages())
    run(path)
    assert [c["dir"] for c in CALLS] == ["a", "b"]

    CALLS.clear()
    result = run(path)
    assert CALLS == [] and [s["status"] for s in result.stages] == ["skipped", "skipped"]
    assert result.by_name("b")["metrics"]["value"] == 2.0  # metrics come back from the manifest

    CALLS.clear()
    run(path, "b.value=3")  # only b's config changed
    assert [c["dir"] for c in CALLS] == ["b"]

    CALLS.clear()
    run(path, "b.value=3", "a.note=hello")  # a re-runs but writes the same bytes: b stays skipped
    assert [c["dir"] for c in CALLS] == ["a"]

    CALLS.clear()
    run(path, "b.value=3", "a.value=5")  # a's output changes: b re-runs on the new input
    assert [c["dir"] for c in CALLS] == ["a", "b"]
    assert (tmp_path / "runs" / "demo" / "b" / "out.txt").read_text() == "a:5.0|b:3.0"

    CALLS.clear()
    run(path, "b.value=3", "a.value=5", force=True)
    assert [c["dir"] for c in CALLS] == ["a", "b"]
    CALLS.clear()
    run(path, "b.value=3", "a.value=5", rerun=["b"])
    assert [c["dir"] for c in CALLS] == ["b"]


def test_external_input_files_are_tracked_and_tampered_artifacts_rerun(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("v1")
    path = write_pipeline(tmp_path, [{"name": "a", "stage": "fake", "config": {"input": str(data)}}])
    run(path)
    manifest = json.loads((tmp_path / "runs" / "demo" / "a" / "manifest.json").read_text())
    assert manifest["inputs"] == {f"path:{data}": file_content_hash(data)}
    CALLS.clear()
    data.write_text("v2")
    run(path)
    assert len(CALLS) == 1
    assert (tmp_path / "runs" / "demo" / "a" / "out.txt").read_text() == "v2|a:1.0"
    CALLS.clear()
    (tmp_path / "runs" / "demo" / "a" / "out.txt").write_text("edited by hand")
    result = run(path)
    assert len(CALLS) == 1 and "modified" in result.stages[0]["reason"]

    # Sources given as a glob: every matching file is an input.
    (tmp_path / "more.txt").write_text("x")
    run(path, f"a.note={tmp_path}/*.txt")
    manifest = json.loads((tmp_path / "runs" / "demo" / "a" / "manifest.json").read_text())
    assert set(manifest["inputs"]) == {f"path:{data}", f"path:{tmp_path / 'more.txt'}"}


def test_a_failed_stage_keeps_earlier_ones_and_the_rerun_resumes_there(tmp_path):
    BROKEN.add("b")
    path = write_pipeline(tmp_path, [*two_stages(), {"name": "c", "stage": "fake"}])
    root = tmp_path / "runs" / "demo"
    with pytest.raises(P.StageFailed, match=r"stage 'b' failed: planned failure[\s\S]*resumes at 'b'"):
        run(path)
    assert (root / "a" / "manifest.json").is_file()
    assert not (root / "b" / "manifest.json").exists() and (root / "b" / P.ATTEMPT).is_file()
    assert not (root / "c").exists()
    status = json.loads((root / "pipeline.json").read_text())
    assert status["status"] == "failed" and status["failed_stage"] == "b"
    assert [s["status"] for s in status["stages"]] == ["ran", "failed", "pending"]

    CALLS.clear()
    BROKEN.clear()  # the cause is fixed; same config and inputs: b resumes in place
    result = run(path)
    assert [(c["dir"], c["resume"]) for c in CALLS] == [("b", True), ("c", False)]
    assert [s["status"] for s in result.stages] == ["skipped", "ran", "ran"]
    assert result.by_name("b")["action"] == "resume"
    assert json.loads((root / "b" / "manifest.json").read_text())["resumed"] is True


@pytest.mark.parametrize("checkpoint", [True, False])
def test_a_recipe_resumes_only_from_a_checkpoint(tmp_path, checkpoint):
    """An interrupted training run resumes when it saved a checkpoint; without one it starts afresh
    (resuming would only append the same steps again to metrics.jsonl)."""
    BROKEN.add("train")
    path = write_pipeline(tmp_path, [{"name": "train", "stage": "fakerecipe", "config": {"checkpoint": checkpoint}}])
    with pytest.raises(P.StageFailed):
        run(path)
    BROKEN.clear()
    CALLS.clear()
    result = run(path)
    assert [(c["dir"], c["resume"]) for c in CALLS] == [("train", checkpoint)]
    assert result.stages[0]["action"] == ("resume" if checkpoint else "run")
    manifest = json.loads((tmp_path / "runs" / "demo" / "train" / "manifest.json").read_text())
    # The last logged value of each column, per split.
    assert manifest["metrics"] == {"train.loss": 1.5, "eval.loss": 1.7, "eval.perplexity": 5.5}
    assert manifest["artifacts"]["final"]["path"].endswith("train/final")


def test_a_changed_config_after_a_failure_starts_the_stage_afresh(tmp_path):
    path = write_pipeline(tmp_path, two_stages(fail=True))
    with pytest.raises(P.StageFailed):
        run(path)
    assert (tmp_path / "runs" / "demo" / "b" / "partial.txt").is_file()
    CALLS.clear()
    run(path, "b.fail=false")
    assert [(c["dir"], c["resume"]) for c in CALLS] == [("b", False)]


def test_gates_stop_the_pipeline_with_a_report(tmp_path):
    stages = two_stages()
    stages[0]["gates"] = {"value": {"max": 0.5}, "length": {"min": 1}}
    path = write_pipeline(tmp_path, stages)
    root = tmp_path / "runs" / "demo"
    with pytest.raises(P.GateFailed, match=r"stopped after stage 'a': value = 1, must be <= 0.5: FAILED\. Not run: b"):
        run(path)
    assert [c["dir"] for c in CALLS] == ["a"]
    status = json.loads((root / "pipeline.json").read_text())
    assert status["status"] == "gate_failed" and [s["status"] for s in status["stages"]] == ["ran", "not_run"]
    gates = {g["metric"]: g for g in status["stages"][0]["gates"]}
    assert gates["value"]["passed"] is False and gates["value"]["value"] == 1.0
    assert gates["length"]["passed"] is True
    page = (root / "report" / "report.html").read_text()
    assert "stopped by a gate" in page and "value = 1, must be &lt;= 0.5: FAILED" in page

    # Re-running with the same gate stops again without re-running a; a looser gate lets b run.
    CALLS.clear()
    with pytest.raises(P.GateFailed):
        run(path)
    assert CALLS == []
    run(path, "a.gates.value.max=2")  # not an override of a's config: a pipeline key of stage a
    assert [c["dir"] for c in CALLS] == ["b"]


def test_a_gate_on_a_missing_metric_says_what_exists():
    results = P.check_gates({"valeu": P.GateConfig(max=1)}, {"value": 0.5, "length": 3.0})
    assert not results[0].passed and "did you mean value" in results[0].message


def test_mistakes_fail_before_anything_runs(tmp_path, monkeypatch):
    root = tmp_path / "runs" / "demo"
    later = [{"name": "a", "stage": "fake", "config": {"input": "${b.out}"}}, {"name": "b", "stage": "fake"}]
    with pytest.raises(ConfigError, match="unknown stage 'b' .it comes later"):
        P.load_pipeline(write_pipeline(tmp_path, later))
    bad_artifact = [{"name": "a", "stage": "fake"}, {"name": "b", "stage": "fake", "config": {"input": "${a.final}"}}]
    with pytest.raises(ConfigError, match=r"\$\{a.final\}, but stage 'a' produces: dir, out"):
        run(write_pipeline(tmp_path, bad_artifact))
    with pytest.raises(ConfigError, match="unknown stage kind 'nope'"):
        P.load_pipeline(write_pipeline(tmp_path, [{"name": "x", "stage": "nope"}]))
    with pytest.raises(ConfigError, match=r"pipeline stage 'b' \(fake\): unknown config key 'valeu'"):
        run(write_pipeline(tmp_path, [{"name": "a", "stage": "fake"}, {"name": "b", "stage": "fake", "config": {"valeu": 1}}]))
    monkeypatch.setitem(P.STAGE_RUNNERS, "ghost", P.StageSpec("affinage.recipes.ghost_stage:run"))
    monkeypatch.setitem(config_module.STAGE_CONFIGS, "ghost", "affinage.recipes.ghost_stage:GhostConfig")
    with pytest.raises(ConfigError, match="stage kind 'ghost' is not available in this installation"):
        run(write_pipeline(tmp_path, [{"name": "a", "stage": "fake"}, {"name": "g", "stage": "ghost"}]))
    assert CALLS == [] and not root.exists()


def test_config_file_overrides_and_dry_run(tmp_path):
    (tmp_path / "stage_a.yaml").write_text("stage: fake\nvalue: 4\n")
    pipeline_file = tmp_path / "pipeline.yaml"
    pipeline_file.write_text(yaml.safe_dump({
        "name": "demo", "output_dir": str(tmp_path / "runs"),
        "stages": [{"name": "a", "stage": "fake", "config": "stage_a.yaml", "overrides": {"note": "x"}},
                   {"name": "b", "stage": "fake", "overrides": ["input=${a.out}", "value=7"]}],
    }))
    cfg = P.load_pipeline(pipeline_file, ["a.value=5", "name=other"])
    assert cfg.name == "other" and cfg.stages[0].config == str(tmp_path / "stage_a.yaml")
    planned = P.run_pipeline(cfg, dry_run=True)
    assert CALLS == [] and not (tmp_path / "runs").exists()
    assert [s["action"] for s in planned.stages] == ["run", "run"]
    P.run_pipeline(cfg)
    assert [c["value"] for c in CALLS] == [5.0, 7.0]
    assert (tmp_path / "runs" / "other" / "b" / "out.txt").read_text() == "a:5.0|b:7.0"
    assert [s["action"] for s in P.run_pipeline(cfg, dry_run=True).stages] == ["skip", "skip"]


def test_real_sft_stage_feeds_a_later_stage_and_is_skipped_on_rerun(tmp_path, tiny_model_dir):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
        for i in range(8)
    ))
    stages = [
        {"name": "sft", "stage": "sft", "config": {
            "model": {"name": str(tiny_model_dir), "dtype": "float32"}, "adapter": {"method": "lora", "r": 4},
            "data": {"train": [str(train)], "max_length": 64}, "train": {"max_steps": 2, "batch_size": 4},
            "run": {"progress": False},
        }},
        {"name": "use", "stage": "fake", "config": {"input": "${sft.final}/config.json"}},
        {"name": "report", "stage": "report"},
    ]
    path = write_pipeline(tmp_path, stages)
    root = tmp_path / "runs" / "demo"
    first = run(path)
    assert [s["status"] for s in first.stages] == ["ran", "ran", "ran"]
    manifest = json.loads((root / "sft" / "manifest.json").read_text())
    assert set(manifest["artifacts"]) >= {"final", "adapter", "dir"}
    assert (root / "sft" / "final" / "model.safetensors").is_file()
    assert "train.loss" in manifest["metrics"] and manifest["config"]["run"]["output_dir"] == str(root / "sft")
    assert f"path:{train}" in manifest["inputs"]  # the data file is an input
    use = json.loads((root / "use" / "manifest.json").read_text())
    assert use["inputs"]["sft.final"] == manifest["artifacts"]["final"]["sha256"]
    assert (root / "use" / "out.txt").read_text().startswith("{")  # the config.json of sft's final model
    assert "Training" in (root / "report" / "report.html").read_text()

    CALLS.clear()
    second = run(path)
    assert [s["status"] for s in second.stages] == ["skipped", "skipped", "ran"]  # the report always runs
    assert CALLS == []


@pytest.mark.parametrize("name", ["pipeline_quickstart.yaml", "pipeline_full.yaml"])
def test_example_pipelines_load_and_plan(name):
    """Every stage config of the example pipelines loads and validates (nothing runs)."""
    path = Path(__file__).resolve().parents[2] / "examples" / name
    cfg = P.load_pipeline(path)
    planned = P.plan(cfg)
    assert [p.spec_cfg.name for p in planned] == cfg.stage_names()
    assert planned[-1].spec_cfg.kind == "report" or any(p.spec_cfg.kind == "report" for p in planned)


def test_example_eval_config_loads():
    from affinage.config import load_config
    from affinage.evaluation.evaluate import EvalConfig

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(EvalConfig, root / "examples" / "eval.yaml")
    assert cfg.labels() == ["base"] and [s.name for s in cfg.sets] == ["helpdesk_qa", "helpdesk_mc"]
    for s in cfg.sets:
        assert (root / s.path).is_file()
