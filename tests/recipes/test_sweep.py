"""Sweeps end to end: every trial a real SFT run of a tiny random Llama (2 optimizer steps), plus a
fake stage whose logged values are fixed, so that Optuna's pruning is checked deterministically."""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

import affinage.config as config_module
import affinage.pipeline as P
from affinage.config import SFTConfig, load_config, read_yaml
from affinage.engine.metrics import MetricLogger, read_metrics
from affinage.errors import ConfigError
from affinage.planning.sweep import SweepConfig, grid_trials, parse_space, random_trial, run_sweep
from tests.recipes.test_sft_recipe import write_conversations


@pytest.fixture
def base(tmp_path, tiny_model_dir) -> Path:
    train = write_conversations(tmp_path / "train.jsonl", n=16)
    val = write_conversations(tmp_path / "val.jsonl", n=4, seed=1)
    cfg = {
        "stage": "sft",
        "model": {"name": str(tiny_model_dir), "dtype": "float32"},
        "adapter": {"method": "full"},
        "data": {"train": [str(train)], "validation": [str(val)], "max_length": 128},
        "train": {"lr": 1.0e-3, "max_steps": 2, "batch_size": 4},
        "run": {"output_dir": "unused", "progress": False, "eval_every": 1},
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sweep(tmp_path: Path, base: Path, **fields) -> SweepConfig:
    raw = {"stage": "sweep", "base": str(base), "output_dir": str(tmp_path / "sweep"), **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(SweepConfig, path)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_grid_runs_the_product_and_keeps_the_best(tmp_path, base):
    cfg = sweep(tmp_path, base, method="grid",
                space={"train.lr": [1.0e-3, 3.0e-2], "train.warmup_steps": [0, 1]})
    result = run_sweep(cfg)
    out = tmp_path / "sweep"
    recorded = rows(out)
    expected = [{"train.lr": lr, "train.warmup_steps": w} for lr in (1.0e-3, 3.0e-2) for w in (0, 1)]
    assert [r["params"] for r in recorded] == expected
    assert [r["trial"] for r in recorded] == [1, 2, 3, 4]
    for r in recorded:
        trial = Path(r["output_dir"])
        assert trial == out / f"trial-{r['trial']:03d}"
        ran = read_yaml(trial / "config.yaml")  # the config the recipe actually ran with
        assert ran["train"]["lr"] == r["params"]["train.lr"]
        assert ran["train"]["warmup_steps"] == r["params"]["train.warmup_steps"]
        evals = [m for m in read_metrics(trial / "metrics.jsonl") if m["split"] == "eval"]
        assert r["status"] == "complete" and r["metric"] == evals[-1]["loss"]  # the last eval row
        assert [v for _, v in r["intermediate"]] == [m["loss"] for m in evals]
    metrics = [r["metric"] for r in recorded]
    assert len(set(metrics)) > 1  # the learning rates made a difference
    best = min(recorded, key=lambda r: r["metric"])
    assert result.best.trial == best["trial"] and result.best.metric == min(metrics)
    best_cfg = load_config(SFTConfig, out / "best.yaml")  # a full config the stage loads as is
    assert best_cfg.train.lr == best["params"]["train.lr"]
    assert best_cfg.train.warmup_steps == best["params"]["train.warmup_steps"]
    assert best_cfg.run.output_dir == str(out / "best")
    with (out / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [float(r["train.lr"]) for r in table] == [p["train.lr"] for p in expected]
    assert [float(r["metric"]) for r in table] == metrics
    assert (out / "sweep.png").stat().st_size > 1000


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, base):
    # max_length 8 passes the config checks but leaves no trainable token: the run raises DataError.
    cfg = sweep(tmp_path, base, method="grid", space={"data.max_length": [8, 128]})
    result = run_sweep(cfg)
    first, second = rows(tmp_path / "sweep")
    assert first["status"] == "failed" and first["metric"] is None
    assert "DataError" in first["error"] and "max_length" in first["error"]
    assert (tmp_path / "sweep" / "trial-001" / "error.txt").read_text().startswith("Traceback")
    assert second["status"] == "complete" and math.isfinite(second["metric"])
    assert result.best.trial == 2


def test_resume_skips_recorded_trials_and_restarts_interrupted_ones(tmp_path, base):
    space = {"train.lr": [1.0e-3, 3.0e-3, 1.0e-2]}
    run_sweep(sweep(tmp_path, base, method="grid", space=space, n_trials=1))
    first = rows(tmp_path / "sweep")
    # an interrupted attempt of trial 2: a run directory without checkpoints (the recipe would refuse it)
    broken = tmp_path / "sweep" / "trial-002"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 9.0}\n')
    run_sweep(sweep(tmp_path, base, method="grid", space=space))
    after = rows(tmp_path / "sweep")
    assert [r["trial"] for r in after] == [1, 2, 3]
    assert after[0] == first[0]  # not run again: same start time, same duration
    assert all(r["status"] == "complete" for r in after)
    assert next(m["loss"] for m in read_metrics(broken / "metrics.jsonl")) != 9.0
    # the same sweep again runs nothing; a changed space is refused rather than mixed in
    run_sweep(sweep(tmp_path, base, method="grid", space=space))
    assert rows(tmp_path / "sweep") == after
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep(sweep(tmp_path, base, method="grid", space={"train.lr": [5.0e-3]}))


def test_random_trials_depend_only_on_seed_and_index():
    dims = parse_space({"train.lr": {"low": 1.0e-5, "high": 1.0e-1, "log": True},
                        "adapter.r": {"low": 4, "high": 64}, "adapter.method": ["lora", "dora"]})
    a = [random_trial(dims, 7, i) for i in range(200)]
    assert a == [random_trial(dims, 7, i) for i in range(200)]
    assert a != [random_trial(dims, 8, i) for i in range(200)]
    assert random_trial(dims, 7, 5) == a[5]  # a resumed sweep redraws trial 5 alone, identically
    assert all(1.0e-5 <= t["train.lr"] <= 1.0e-1 and 4 <= t["adapter.r"] <= 64 for t in a)
    assert all(isinstance(t["adapter.r"], int) for t in a)
    # log-uniform: half the draws below the geometric middle 1e-3 (uniform would put 1% there)
    below = sum(t["train.lr"] < 1.0e-3 for t in a) / len(a)
    assert 0.35 < below < 0.65
    assert {t["adapter.method"] for t in a} == {"lora", "dora"}




def test_grid_of_ranges():
    dims = parse_space({"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True, "num": 3},
                        "adapter.r": {"low": 4, "high": 12, "step": 4}})
    trials = grid_trials(dims)
    assert [t["train.lr"] for t in trials[::3]] == pytest.approx([1.0e-4, 1.0e-3, 1.0e-2])
    assert [t["adapter.r"] for t in trials[:3]] == [4, 8, 12]
    assert len(grid_trials(dims, n_trials=5)) == 5


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lrr": [1.0e-3]}, r"unknown config key 'train.lrr'. Did you mean 'train.lr'\? Valid keys here: lr, "),
        ({"adapter.r": [4, "big"]}, r"space key 'adapter.r' = 'big'.*must be an integer"),
        ({"adapter.r": {"low": 1.5, "high": 8.5}}, r"space key 'adapter.r' = 1.5.*must be an integer"),
        ({"train.lr": {"low": 1.0e-3}}, "needs both 'low' and 'high'"),
        ({"train.lr": {"low": 0, "high": 1, "log": True}}, "log range needs low > 0"),
        ({"train.lr": {"low": 1, "high": 2, "scale": 3}}, "unknown range key"),
        ({"train.lr": []}, "list of choices is empty"),
        ({"run.output_dir": ["a", "b"]}, "set by the sweep itself"),
        ({"train.lr": [-1.0]}, "'train.lr' must be positive"),
    ],
)
def test_bad_sweep_files_fail_before_any_trial(tmp_path, base, space, message):
    with pytest.raises(ConfigError, match=message):
        run_sweep(sweep(tmp_path, base, method="random", n_trials=1, space=space))
    assert not (tmp_path / "sweep" / "trial-001").exists()


def test_sweep_file_validation(tmp_path, base):
    with pytest.raises(ConfigError, match="n_trials' is required for method 'random'"):
        sweep(tmp_path, base, method="random", space={"train.lr": [1.0e-3]})
    with pytest.raises(ConfigError, match="needs 'num'"):
        sweep(tmp_path, base, method="grid", space={"train.lr": {"low": 1.0e-4, "high": 1.0e-2}})
    with pytest.raises(ConfigError, match="SPLIT.KEY"):
        sweep(tmp_path, base, metric="loss", space={"train.lr": [1.0e-3]})


# ---------------------------------------------------------------------------------------------- Optuna


def test_optuna_runs_real_trials_and_reports_intermediate_values(tmp_path, base):
    pytest.importorskip("optuna")
    cfg = sweep(tmp_path, base, method="optuna", n_trials=3, seed=0, sampler="tpe", pruner="median",
                pruner_startup_trials=1, metric="train.loss",
                overrides={"train.max_steps": 3}, space={"train.lr": {"low": 1.0e-4, "high": 3.0e-2, "log": True}})
    result = run_sweep(cfg)
    recorded = rows(tmp_path / "sweep")
    assert [r["trial"] for r in recorded] == [1, 2, 3]
    assert recorded[0]["status"] == "complete"  # nothing to compare with yet
    for r in recorded:
        assert 1.0e-4 <= r["params"]["train.lr"] <= 3.0e-2
        train = [m for m in read_metrics(Path(r["output_dir"]) / "metrics.jsonl") if m["split"] == "train"]
        # every logged train loss was reported to the pruner, at its step
        assert r["intermediate"] == [[m["step"], m["loss"]] for m in train]
        if r["status"] == "complete":
            assert len(train) == 3 and r["metric"] == train[-1]["loss"]
        else:
            assert r["status"] == "pruned" and len(train) < 3 and r["metric"] is None
    assert result.best is not None and result.best.status == "complete"


@dataclass
class ScriptedConfig:
    """A stage whose run logs a fixed ``loss`` at steps 1..3: the first run 1.0, later runs ``later``."""

    stage: Literal["scripted"] = "scripted"
    x: float = 0.0
    later: float = 5.0
    output_dir: str = "runs/scripted"


SCRIPTED_RUNS: list[float] = []


def scripted_runner(cfg: ScriptedConfig) -> P.StageOutput:
    value = 1.0 if not SCRIPTED_RUNS else cfg.later
    SCRIPTED_RUNS.append(cfg.x)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    logger = MetricLogger(cfg.output_dir, [])
    for step in (1, 2, 3):
        logger.log({"split": "train", "step": step, "loss": value + random.random() * 1e-3})
    return P.StageOutput(metrics={})


@pytest.fixture
def scripted_stage(monkeypatch, tmp_path):
    monkeypatch.setitem(config_module.STAGE_CONFIGS, "scripted", "tests.recipes.test_sweep:ScriptedConfig")
    monkeypatch.setitem(P.STAGE_RUNNERS, "scripted",
                        P.StageSpec("tests.recipes.test_sweep:scripted_runner", output_key="output_dir"))
    SCRIPTED_RUNS.clear()
    path = tmp_path / "scripted.yaml"
    path.write_text("stage: scripted\n")
    return path


def test_random_sweep_runs_the_seeded_draws(tmp_path, scripted_stage):
    space = {"x": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}
    run_sweep(sweep(tmp_path, scripted_stage, method="random", n_trials=3, seed=3, space=space))
    dims = parse_space(space)
    draws = [random_trial(dims, 3, i) for i in range(3)]
    assert [r["params"] for r in rows(tmp_path / "sweep")] == draws
    assert [d["x"] for d in draws] == SCRIPTED_RUNS  # the values reached the runs' configs


@pytest.mark.parametrize(("later", "expected"), [(5.0, ["complete", "pruned", "pruned"]), (0.5, ["complete"] * 3)])
def test_optuna_median_pruner_stops_worse_trials(tmp_path, scripted_stage, later, expected):
    """Median pruning (Optuna's MedianPruner, 1 startup trial): a trial whose value at a step is worse
    than the median of the finished trials at that step stops there. Trial 1 logs ~1.0; later trials
    log ``later``: 5.0 is worse at step 1, so they stop after one row; 0.5 is better, so they finish."""
    pytest.importorskip("optuna")
    cfg = sweep(tmp_path, scripted_stage, method="optuna", n_trials=3, metric="train.loss", pruner="median",
                pruner_startup_trials=1, overrides={"later": later}, space={"x": {"low": 0.0, "high": 1.0}})
    run_sweep(cfg)
    recorded = rows(tmp_path / "sweep")
    assert [r["status"] for r in recorded] == expected
    assert [len(r["intermediate"]) for r in recorded] == [3 if s == "complete" else 1 for s in expected]
    # resume: the study is rebuilt from results.jsonl (pruned trials included) and continues numbering
    run_sweep(sweep(tmp_path, scripted_stage, method="optuna", n_trials=4, metric="train.loss", pruner="median",
                    pruner_startup_trials=1, overrides={"later": later}, space={"x": {"low": 0.0, "high": 1.0}}))
    assert [r["trial"] for r in rows(tmp_path / "sweep")] == [1, 2, 3, 4]
    assert len(SCRIPTED_RUNS) == 4
