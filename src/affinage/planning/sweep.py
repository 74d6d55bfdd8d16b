"""Hyper-parameter sweeps: ``affinage sweep SWEEP.yaml``.

A sweep file names a base stage config (sft, dpo, rm, grpo, ppo... anything the pipeline can run),
fixed overrides applied to every trial, a search space over dotted config keys (the keys of the
``key=value`` command-line overrides), the metric to optimise and its direction, and the method:

* ``grid``: every combination of the choices (ranges contribute ``num`` points), in the order of the
  space's keys, the last key varying fastest;
* ``random``: ``n_trials`` independent draws; trial i's values depend only on ``(seed, i)``, so the
  same seed gives the same trials and a resumed sweep redraws exactly the trials it skipped;
* ``optuna``: Optuna's samplers (TPE by default) with pruning: every row the trial's recipe logs for
  the metric's split is reported as an intermediate value, and a trial the pruner stops is recorded
  as ``pruned``.

Each trial is a real run of the stage's recipe in this process (the pipeline's runner for that stage),
with its own directory ``OUT/trial-NNN/``. A trial that raises is recorded as ``failed`` with its
error (traceback in ``trial-NNN/error.txt``) and the sweep goes on. After each trial
``results.jsonl`` and ``results.csv`` are rewritten atomically; at the end the table is printed
sorted by the metric, the best trial's full config is written to ``best.yaml`` and the plot to
``sweep.png``. Running the same sweep again skips the trials already recorded.

The metric ``SPLIT.KEY`` is KEY in the LAST row of the trial's ``metrics.jsonl`` whose ``split`` is
SPLIT: for ``eval.loss`` of a recipe, the evaluation every recipe runs at the end of training. Stages
without a ``metrics.jsonl`` (eval, safety_eval) are read from the metrics their runner returns.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import hashlib
import io
import itertools
import json
import math
import os
import random
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from affinage.config import _check, build_run_config, read_yaml, set_dotted, to_dict
from affinage.errors import ConfigError
from affinage.utils.fs import atomic_write_text

RANGE_KEYS = ("low", "high", "log", "type", "num", "step")
STATUSES = ("complete", "pruned", "failed")


@dataclass
class SweepConfig:
    """A hyper-parameter search over any config keys of a stage: ``affinage sweep SWEEP.yaml``."""

    stage: Literal["sweep"] = "sweep"
    base: str = ""
    """The stage config every trial starts from (its ``stage`` key: sft, dpo, rm, grpo, ppo...); a path
    relative to the working directory, else to the sweep file."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted ``key: value`` pairs applied to every trial, e.g. ``train.max_steps: 20``."""
    space: dict[str, Any] = field(default_factory=dict)
    """Dotted key -> a list of choices, or a range ``{low, high, log, type: int|float, num, step}``."""
    metric: str = "eval.loss"
    """``SPLIT.KEY``: KEY of the last row of the trial's metrics.jsonl whose split is SPLIT."""
    direction: Literal["minimize", "maximize"] = "minimize"
    """Whether a lower or a higher metric is better."""
    method: Literal["grid", "random", "optuna"] = "grid"
    """grid (every combination), random (seeded draws) or optuna (a sampler, with pruning)."""
    n_trials: int | None = None
    """Trials to run: required for random and optuna; for grid, the first n of the grid (null: all)."""
    seed: int = 0
    """Seed of the random draws and of Optuna's sampler."""
    output_dir: str = "runs/sweep"
    """Sweep directory: trial-NNN/, results.jsonl, results.csv, best.yaml, sweep.png."""
    sampler: Literal["tpe", "random", "qmc", "gp", "cmaes"] = "tpe"
    """optuna: the sampler (gp needs scipy, cmaes the cmaes package)."""
    pruner: Literal["none", "median", "percentile", "successive_halving", "hyperband"] = "median"
    """optuna: stops trials whose intermediate metric is worse than the others' at the same step."""
    pruner_startup_trials: int = 2
    """optuna median/percentile: trials that finish before any is pruned."""
    pruner_warmup_steps: int = 0
    """optuna median/percentile: steps of a trial before it can be pruned."""
    pruner_percentile: float = 25.0
    """optuna percentile: keep trials in the best this-many percent at each step."""
    retry_failed: bool = False
    """On a re-run, run failed trials again (finished and pruned trials are always skipped)."""

    def __post_init__(self) -> None:
        # ``overrides.train.max_steps=3`` on the command line, or nested YAML, gives nested mappings:
        # both sections are read as flat dotted keys.
        self.overrides = flatten(self.overrides)
        self.space = flatten(self.space, leaf=lambda v: "low" in v or "high" in v)  # a range, not a section

    def validate(self) -> None:
        _check(bool(self.base), "base", "names the stage config every trial starts from, e.g. examples/quickstart.yaml")
        _check(bool(self.space), "space", "needs at least one dotted key, e.g. {train.lr: [1.0e-4, 3.0e-4]}")
        split, dot, key = self.metric.partition(".")
        _check(bool(split and dot and key), "metric",
               f"must look like SPLIT.KEY (a key of the last SPLIT row of metrics.jsonl), e.g. eval.loss; got {self.metric!r}")
        _check(self.n_trials is None or self.n_trials >= 1, "n_trials", "must be at least 1 or null")
        _check(self.method == "grid" or self.n_trials is not None, "n_trials",
               f"is required for method '{self.method}' (how many trials to run)")
        _check(self.pruner_startup_trials >= 0, "pruner_startup_trials", "must be >= 0")
        _check(self.pruner_warmup_steps >= 0, "pruner_warmup_steps", "must be >= 0")
        _check(0 < self.pruner_percentile < 100, "pruner_percentile", "must be in (0, 100)")
        dims = parse_space(self.space)
        if self.method == "grid":
            for dim in dims:
                dim.grid()  # raises for a range without num


# ----------------------------------------------------------------------------------------------
# The search space
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One searched key: a list of choices, or a numeric range."""

    key: str
    choices: tuple[Any, ...] | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    kind: Literal["int", "float"] = "float"
    num: int | None = None
    """Grid points of a range (log-spaced when ``log``)."""
    step: float | None = None

    @property
    def is_range(self) -> bool:
        return self.choices is None

    @property
    def numeric(self) -> bool:
        return self.is_range or all(_is_number(c) for c in self.choices or ())

    def grid(self) -> list[Any]:
        if self.choices is not None:
            return list(self.choices)
        if self.num is None:
            if self.kind == "int":
                step = int(self.step or 1)
                values = list(range(int(self.low), int(self.high) + 1, step))
                if len(values) <= 1000:
                    return values
            raise ConfigError(
                f"sweep key 'space.{self.key}': a range needs 'num' (how many grid points) for method grid, "
                f"e.g. {{low: {self.low}, high: {self.high}, num: 4}}"
            )
        if self.num == 1:
            points = [self.low]
        elif self.log:
            a, b = math.log(self.low), math.log(self.high)
            points = [math.exp(a + (b - a) * i / (self.num - 1)) for i in range(self.num)]
        else:
            points = [self.low + (self.high - self.low) * i / (self.num - 1) for i in range(self.num)]
        return list(dict.fromkeys(self._cast(p) for p in points))

    def sample(self, rng: random.Random) -> Any:
        if self.choices is not None:
            return self.choices[rng.randrange(len(self.choices))]
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        elif self.step:
            value = self.low + self.step * rng.randint(0, int((self.high - self.low) // self.step))
        elif self.kind == "int":
            value = rng.randint(int(self.low), int(self.high))
        else:
            value = rng.uniform(self.low, self.high)
        return min(max(self._cast(value), self._cast(self.low)), self._cast(self.high))

    def check_values(self) -> list[Any]:
        """Values that must all be valid for the config: every choice, or the ends and the middle of a range."""
        if self.choices is not None:
            return list(self.choices)
        return list(dict.fromkeys([self._cast(self.low), self._cast((self.low + self.high) / 2), self._cast(self.high)]))

    def _cast(self, value: float) -> Any:
        if self.kind == "int":
            return round(value)
        return float(f"{value:.6g}")  # 6 significant digits: readable configs, same values on resume


def flatten(mapping: dict[str, Any], leaf: Any = None, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": x}}`` -> ``{"train.lr": x}``; ``leaf(value)`` marks mappings kept whole."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value and not (leaf and leaf(value)):
            out.update(flatten(value, leaf, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if not _is_number(value):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return value


def parse_space(space: dict[str, Any]) -> list[Dimension]:
    """The sweep file's ``space`` as :class:`Dimension` objects, with clear errors for malformed entries."""
    dims = []
    for key, spec in space.items():
        where = f"sweep key 'space.{key}'"
        if not key or key.startswith(".") or key.endswith(".") or ".." in key:
            raise ConfigError(f"{where}: not a dotted config key (e.g. train.lr)")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where}: the list of choices is empty")
            dims.append(Dimension(key, choices=tuple(spec)))
            continue
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{where} must be a list of choices (e.g. [4, 8, 16]) or a range "
                f"{{low: ..., high: ..., log: true|false, type: int|float}}; got {spec!r}"
            )
        unknown = [k for k in spec if k not in RANGE_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown range key(s) {', '.join(map(str, unknown))}; valid: {', '.join(RANGE_KEYS)}")
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: a range needs both 'low' and 'high'")
        low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
        kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
        if kind not in ("int", "float"):
            raise ConfigError(f"{where}.type must be 'int' or 'float', got {kind!r}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log must be true or false, got {log!r}")
        if not low < high:
            raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
        if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{where}: an int range needs integer low and high, got {low} and {high}")
        num = spec.get("num")
        if num is not None and (not isinstance(num, int) or isinstance(num, bool) or num < 1):
            raise ConfigError(f"{where}.num must be a positive integer (grid points), got {num!r}")
        step = spec.get("step")
        if step is not None:
            step = _number(step, f"{where}.step")
            if step <= 0 or log:
                raise ConfigError(f"{where}.step must be positive and cannot be combined with log: true")
        dims.append(Dimension(key, low=low, high=high, log=log, kind=kind, num=num, step=step))
    return dims


def grid_trials(dims: list[Dimension], n_trials: int | None = None) -> list[dict[str, Any]]:
    """Every combination of the dimensions' grid values (the last key varies fastest)."""
    combos = itertools.product(*(d.grid() for d in dims))
    trials = [dict(zip((d.key for d in dims), values, strict=True)) for values in combos]
    return trials[:n_trials] if n_trials is not None else trials


def random_trial(dims: list[Dimension], seed: int, index: int) -> dict[str, Any]:
    """The values of trial ``index`` (0-based) of a random sweep: a function of ``(seed, index)`` only."""
    rng = random.Random(f"affinage-sweep:{seed}:{index}")
    return {d.key: d.sample(rng) for d in dims}


# ----------------------------------------------------------------------------------------------
# Trials
# ----------------------------------------------------------------------------------------------


@dataclass
class TrialResult:
    """One row of ``results.jsonl``."""

    trial: int
    params: dict[str, Any]
    status: str
    """complete, pruned or failed."""
    metric: float | None
    time_s: float
    output_dir: str
    error: str | None = None
    intermediate: list[list[float]] = field(default_factory=list)
    """``[step, value]`` of every logged row of the metric's split (what a pruner saw)."""
    started: str = ""

    @property
    def last_value(self) -> float | None:
        """The metric, or for a pruned trial its last intermediate value."""
        if self.metric is not None:
            return self.metric
        return self.intermediate[-1][1] if self.intermediate else None


class TrialPruned(Exception):
    """Raised from the metric observer to stop a trial the pruner gave up on."""


@dataclass
class SweepResult:
    trials: list[TrialResult]
    best: TrialResult | None
    output_dir: Path


@dataclass
class _Setup:
    """What every trial shares: the base config, its stage and how the pipeline runs it."""

    base_path: Path
    base_raw: dict[str, Any]
    kind: str
    config_class: type
    output_key: str
    resume_key: str | None


def resolve_base(base: str, sweep_path: str | Path | None) -> Path:
    path = Path(base).expanduser()
    if path.is_file() or path.is_absolute() or sweep_path is None:
        return path
    beside = Path(sweep_path).parent / base
    return beside if beside.is_file() else path


def prepare(cfg: SweepConfig, sweep_path: str | Path | None = None) -> tuple[_Setup, list[Dimension]]:
    """Load the base config, find its stage's runner and check every override and searched value
    against the stage's config class (unknown keys and wrong types fail here, before any trial)."""
    from affinage.config import stage_config_class
    from affinage.pipeline import STAGE_RUNNERS, stage_spec

    where = f"sweep {sweep_path}" if sweep_path else "sweep"
    base_path = resolve_base(cfg.base, sweep_path)
    if not base_path.is_file():
        raise ConfigError(f"{where}: base config {cfg.base} does not exist (looked in the working directory"
                          + (f" and beside {sweep_path})" if sweep_path else ")"))
    base_raw = read_yaml(base_path)
    kind = str(base_raw.get("stage", "sft"))
    if kind not in STAGE_RUNNERS:
        raise ConfigError(f"{where}: base config {base_path} is for stage '{kind}', which cannot be swept; "
                          f"stages that run as trials: {', '.join(sorted(STAGE_RUNNERS))}")
    spec = stage_spec(kind)
    setup = _Setup(base_path, base_raw, kind, stage_config_class(kind), spec.output_key, spec.resume_key)
    dims = parse_space(cfg.space)
    reserved = {setup.output_key, "stage"} | ({setup.resume_key} if setup.resume_key else set())
    for key in [*cfg.overrides, *(d.key for d in dims)]:
        if key in reserved:
            raise ConfigError(f"{where}: '{key}' is set by the sweep itself (each trial runs in OUT/trial-NNN); "
                              "remove it from overrides/space")
    overlap = sorted(set(cfg.overrides) & {d.key for d in dims})
    if overlap:
        raise ConfigError(f"{where}: {', '.join(overlap)} is both in overrides and in space; keep it in one of them")
    try:
        build_config(setup, cfg.overrides, {}, Path(cfg.output_dir) / "check")
    except ConfigError as exc:
        raise ConfigError(f"{where}: base {base_path} with the sweep's overrides: {exc}") from None
    for dim in dims:
        for value in dim.check_values():
            try:
                build_config(setup, cfg.overrides, {dim.key: value}, Path(cfg.output_dir) / "check")
            except ConfigError as exc:
                raise ConfigError(f"{where}: space key '{dim.key}' = {value!r}: {exc}") from None
    return setup, dims


def build_config(setup: _Setup, overrides: dict[str, Any], params: dict[str, Any], out: Path, *, resume: bool = False) -> Any:
    """The trial's typed config: base, then the sweep's overrides, then the trial's values."""
    import copy

    raw = copy.deepcopy(setup.base_raw)
    for key, value in [*overrides.items(), *params.items()]:
        set_dotted(raw, key, copy.deepcopy(value))
    return build_run_config(setup.config_class, raw, output_key=setup.output_key, output_dir=out,
                            resume_key=setup.resume_key, resume=resume)


def read_metric(run_dir: Path, metric: str, stage_metrics: dict[str, float]) -> tuple[float | None, str | None]:
    """(value, why it is missing) of ``metric`` for a finished trial (see the module docstring)."""
    from affinage.engine.metrics import read_metrics

    split, _, key = metric.partition(".")
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        rows = [r for r in read_metrics(path) if r.get("split", "train") == split]
        if not rows:
            splits = sorted({str(r.get("split", "train")) for r in read_metrics(path)})
            hint = " (set validation data: eval rows come from data.validation)" if split == "eval" else ""
            return None, f"metrics.jsonl has no '{split}' row{hint}; splits logged: {', '.join(splits) or 'none'}"
        value = rows[-1].get(key)
        if key not in rows[-1]:
            return None, f"the last '{split}' row of metrics.jsonl has no '{key}'; its keys: {', '.join(rows[-1])}"
        if not _is_number(value) or not math.isfinite(value):
            return None, f"{metric} is not a finite number in the last '{split}' row ({value!r}: diverged?)"
        return float(value), None
    if metric in stage_metrics and math.isfinite(stage_metrics[metric]):
        return float(stage_metrics[metric]), None
    return None, f"the stage reported no '{metric}'; it reported: {', '.join(sorted(stage_metrics)) or 'nothing'}"


def _intermediate(metric: str, row: dict[str, Any]) -> tuple[int, float] | None:
    split, _, key = metric.partition(".")
    if row.get("split", "train") != split:
        return None
    value = row.get(key)
    if not _is_number(value) or not math.isfinite(value):
        return None
    return int(row.get("step", 0)), float(value)


def run_trial(setup: _Setup, cfg: SweepConfig, number: int, params: dict[str, Any], out: Path,
              report: Any = None, console: Any = None) -> TrialResult:
    """Run one trial as a real run of the stage in ``out``; never raises for a failing run.

    ``report(step, value)`` (Optuna's report + should_prune) is called for every logged row of the
    metric's split and raises :class:`TrialPruned` to stop the run.
    """
    from affinage.engine.metrics import observe_metrics
    from affinage.pipeline import stage_runner

    resume = False
    if out.exists():  # an attempt interrupted earlier: continue from its checkpoint, or start afresh
        has_checkpoint = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
        if setup.resume_key and has_checkpoint:
            resume = True
        else:
            shutil.rmtree(out)
    intermediate: list[list[float]] = []

    def on_row(row: dict[str, Any]) -> None:
        point = _intermediate(cfg.metric, row)
        if point is None:
            return
        intermediate.append([point[0], point[1]])
        if report is not None:
            report(*point)

    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    status, metric, error = "complete", None, None
    try:
        config = build_config(setup, cfg.overrides, params, out, resume=resume)
        with observe_metrics(on_row):
            output = stage_runner(setup.kind)(config)
        metric, why = read_metric(out, cfg.metric, output.metrics)
        if metric is None:
            status, error = "failed", why
    except TrialPruned:
        status = "pruned"
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "error.txt", traceback.format_exc())
    finally:
        gc.collect()  # the trial's model and optimizer go before the next trial loads its own
    result = TrialResult(number, params, status, metric, round(time.perf_counter() - t0, 3), str(out), error,
                         intermediate, started)
    if console is not None:
        shown = f"{metric:.6g}" if metric is not None else "-"
        colour = {"complete": "green", "pruned": "yellow", "failed": "red"}[status]
        console.print(f"trial {number:03d} [{colour}]{status}[/]: {cfg.metric}={shown} ({result.time_s:.1f} s)"
                      + (f"  {error}" if error else ""), highlight=False)
    return result


# ----------------------------------------------------------------------------------------------
# Results on disk
# ----------------------------------------------------------------------------------------------


def trial_dir(out: Path, number: int) -> Path:
    return out / f"trial-{number:03d}"


def read_results(out: Path) -> dict[int, TrialResult]:
    path = out / "results.jsonl"
    if not path.is_file():
        return {}
    results = {}
    names = {f.name for f in dataclasses.fields(TrialResult)}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            results[row["trial"]] = TrialResult(**{k: v for k, v in row.items() if k in names})
    return results


def write_results(out: Path, results: dict[int, TrialResult], keys: list[str]) -> None:
    rows = [results[n] for n in sorted(results)]
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in rows))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "status", "metric", *keys, "time_s", "error", "output_dir"])
    for r in rows:
        writer.writerow([r.trial, r.status, "" if r.metric is None else r.metric,
                         *(_cell(r.params.get(k)) for k in keys), r.time_s, r.error or "", r.output_dir])
    atomic_write_text(out / "results.csv", buffer.getvalue())


def _cell(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _identity(cfg: SweepConfig, setup: _Setup) -> dict[str, Any]:
    """What fixes the trials of a sweep: a re-run must agree on it to reuse recorded trials."""
    return {
        "base": str(setup.base_path),
        "base_sha256": hashlib.sha256(setup.base_path.read_bytes()).hexdigest(),
        "overrides": cfg.overrides, "space": cfg.space, "metric": cfg.metric, "direction": cfg.direction,
        "method": cfg.method, "seed": cfg.seed,
    }


def _check_same_sweep(out: Path, identity: dict[str, Any], has_results: bool) -> None:
    path = out / "sweep.json"
    if path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in identity if json.dumps(recorded.get(k), sort_keys=True) != json.dumps(identity[k], sort_keys=True)]
        if changed and has_results:
            raise ConfigError(
                f"{out} holds the trials of a different sweep ({', '.join(changed)} changed since). Choose another "
                "output_dir, or delete that directory to start over; nothing was overwritten."
            )
    atomic_write_text(path, json.dumps(identity, indent=2) + "\n")


def ranked(results: list[TrialResult], direction: str) -> list[TrialResult]:
    """Complete trials best first, then pruned ones (by their last value), then failed ones."""
    sign = 1.0 if direction == "minimize" else -1.0

    def key(r: TrialResult) -> tuple[int, float, int]:
        group = STATUSES.index(r.status)
        value = r.last_value
        return group, sign * value if value is not None else math.inf, r.trial

    return sorted(results, key=key)


def best_trial(results: list[TrialResult], direction: str) -> TrialResult | None:
    complete = [r for r in results if r.status == "complete" and r.metric is not None]
    return ranked(complete, direction)[0] if complete else None


def write_best(out: Path, setup: _Setup, cfg: SweepConfig, best: TrialResult) -> Path:
    """``best.yaml``: the best trial's full config, its output directory set to ``OUT/best``."""
    config = build_config(setup, cfg.overrides, best.params, out / "best")
    header = (f"# Best trial {best.trial:03d} of the sweep in {out}: {cfg.metric} = {best.metric:.6g} ({cfg.direction})\n"
              f"# values: {json.dumps(best.params)}\n"
              f"# Train it again with: affinage {setup.kind} {out / 'best.yaml'}\n")
    text = header + yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)
    return atomic_write_text(out / "best.yaml", text)


def print_table(results: list[TrialResult], cfg: SweepConfig, keys: list[str], console: Any) -> None:
    from rich.table import Table

    best = best_trial(results, cfg.direction)
    table = Table(title=f"Sweep: {cfg.metric} ({cfg.direction}), {len(results)} trials", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("trial", justify="right")
    table.add_column("status")
    table.add_column(cfg.metric, justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column("time (s)", justify="right")
    for rank, r in enumerate(ranked(results, cfg.direction), 1):
        value = r.metric if r.metric is not None else r.last_value
        shown = "-" if value is None else f"{value:.5g}" + ("" if r.metric is not None else " (last)")
        style = "bold green" if best is not None and r.trial == best.trial else None
        table.add_row(str(rank), f"{r.trial:03d}", r.status, shown, *(_short(r.params.get(k)) for k in keys),
                      f"{r.time_s:.1f}", style=style)
    console.print(table)
    for r in results:
        if r.status == "failed":
            console.print(f"[red]trial {r.trial:03d} failed:[/] {r.error}", highlight=False)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _cell(value)


def plot_sweep(results: list[TrialResult], cfg: SweepConfig, dims: list[Dimension], path: Path) -> Path | None:
    """``sweep.png``: the metric per trial (with the best so far), and the metric against each searched key."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None  # the table and results files hold everything; the plot is a convenience
    shown = [r for r in results if r.last_value is not None]
    fig, axes = plt.subplots(1, 1 + len(dims), figsize=(4.2 * (1 + len(dims)), 3.6), squeeze=False)
    ax = axes[0][0]
    sign = 1.0 if cfg.direction == "minimize" else -1.0
    for status, marker, colour in (("complete", "o", "tab:blue"), ("pruned", "x", "tab:orange")):
        pts = [(r.trial, r.last_value) for r in shown if r.status == status]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, color=colour, label=status)
    best_so_far, best = [], math.inf
    for r in sorted((r for r in shown if r.status == "complete"), key=lambda r: r.trial):
        best = min(best, sign * r.metric)
        best_so_far.append((r.trial, sign * best))
    if best_so_far:
        ax.step(*zip(*best_so_far, strict=True), where="post", color="tab:green", label="best so far")
    failed = [r.trial for r in results if r.status == "failed"]
    for n in failed:
        ax.axvline(n, color="tab:red", alpha=0.3, linewidth=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial" + (" (red: failed)" if failed else ""))
    ax.set_ylabel(cfg.metric)
    ax.set_title(f"{cfg.method} sweep")
    ax.legend(fontsize=7)
    for ax, dim in zip(axes[0][1:], dims, strict=True):
        pts = [(r.params.get(dim.key), r.last_value, r.status) for r in shown]
        if dim.numeric:
            xs = [p[0] for p in pts]
            if dim.log or (xs and min(xs) > 0 and max(xs) / min(xs) >= 100):
                ax.set_xscale("log")
        else:
            labels = [_short(c) for c in dim.choices or ()]
            xs = [labels.index(_short(p[0])) if _short(p[0]) in labels else -1 for p in pts]
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        colours = ["tab:blue" if p[2] == "complete" else "tab:orange" for p in pts]
        ax.scatter(xs, [p[1] for p in pts], c=colours)
        ax.set_xlabel(dim.key)
        ax.set_ylabel(cfg.metric)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------


def run_sweep(cfg: SweepConfig, sweep_path: str | Path | None = None, *, console: Any = None) -> SweepResult:
    """Run (or continue) the sweep ``cfg`` describes; see the module docstring."""
    if console is None:
        from affinage.engine.progress import console
    setup, dims = prepare(cfg, sweep_path)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = read_results(out)
    _check_same_sweep(out, _identity(cfg, setup), bool(results))
    keys = [d.key for d in dims]
    if not cfg.retry_failed:
        skip = set(results)
    else:
        skip = {n for n, r in results.items() if r.status != "failed"}

    def record(result: TrialResult) -> None:
        results[result.trial] = result
        write_results(out, results, keys)

    console.print(f"[bold]sweep[/] {cfg.method} over {', '.join(keys)} of {setup.base_path} ({setup.kind}); "
                  f"{cfg.metric} ({cfg.direction}); {len(skip)} trial(s) already recorded in {out}", highlight=False)
    try:
        if cfg.method == "optuna":
            _run_optuna(cfg, setup, dims, out, results, record, console)
        else:
            planned = (grid_trials(dims, cfg.n_trials) if cfg.method == "grid"
                       else [random_trial(dims, cfg.seed, i) for i in range(cfg.n_trials or 0)])
            for index, params in enumerate(planned):
                number = index + 1
                if number in results and results[number].params != _jsonable(params):
                    raise ConfigError(f"{out}: trial {number:03d} was recorded with {results[number].params}, but the "
                                      f"sweep now gives {params}; use another output_dir")
                if number in skip:
                    continue
                console.print(f"[bold]trial {number:03d}/{len(planned):03d}[/] {_describe(params)}", highlight=False)
                record(run_trial(setup, cfg, number, _jsonable(params), trial_dir(out, number), console=console))
    finally:
        trials = [results[n] for n in sorted(results)]
        best = best_trial(trials, cfg.direction)
        if trials:
            write_results(out, results, keys)
            print_table(trials, cfg, keys, console)
            plot = plot_sweep(trials, cfg, dims, out / "sweep.png")
            if best is not None:
                write_best(out, setup, cfg, best)
                console.print(f"best: trial {best.trial:03d} {cfg.metric}={best.metric:.6g} {_describe(best.params)} "
                              f"-> {out / 'best.yaml'}", highlight=False)
            if plot is not None:
                console.print(f"plot: {plot}")
    return SweepResult(trials, best, out)


def _describe(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params))


# ----------------------------------------------------------------------------------------------
# Optuna
# ----------------------------------------------------------------------------------------------


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("method: optuna needs the optuna package: pip install 'affinage[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _categorical(dim: Dimension) -> bool:
    return all(c is None or isinstance(c, bool | int | float | str) for c in dim.choices or ())


def optuna_distributions(dims: list[Dimension]) -> dict[str, Any]:
    """Optuna distributions of the space; lists of non-scalar choices are searched by their index."""
    optuna = _import_optuna()
    d = optuna.distributions
    out = {}
    for dim in dims:
        if dim.choices is not None:
            out[dim.key] = d.CategoricalDistribution(list(dim.choices) if _categorical(dim) else list(range(len(dim.choices))))
        elif dim.kind == "int":
            out[dim.key] = d.IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
        else:
            out[dim.key] = d.FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    return out


def _to_optuna(dims: list[Dimension], params: dict[str, Any]) -> dict[str, Any]:
    return {d.key: params[d.key] if d.choices is None or _categorical(d) else
            [json.dumps(c, sort_keys=True) for c in d.choices].index(json.dumps(params[d.key], sort_keys=True))
            for d in dims}


def _from_optuna(dims: list[Dimension], values: dict[str, Any]) -> dict[str, Any]:
    return {d.key: values[d.key] if d.choices is None or _categorical(d) else d.choices[values[d.key]] for d in dims}


def make_sampler(cfg: SweepConfig) -> Any:
    optuna = _import_optuna()
    s = optuna.samplers
    factories = {
        "tpe": lambda: s.TPESampler(seed=cfg.seed),
        "random": lambda: s.RandomSampler(seed=cfg.seed),
        "qmc": lambda: s.QMCSampler(seed=cfg.seed),
        "gp": lambda: s.GPSampler(seed=cfg.seed),
        "cmaes": lambda: s.CmaEsSampler(seed=cfg.seed),
    }
    try:
        return factories[cfg.sampler]()
    except ImportError as exc:
        raise ConfigError(f"sampler '{cfg.sampler}' needs a package that is missing ({exc}); use sampler: tpe") from None


def make_pruner(cfg: SweepConfig) -> Any:
    optuna = _import_optuna()
    p = optuna.pruners
    factories = {
        "none": lambda: p.NopPruner(),
        "median": lambda: p.MedianPruner(n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_steps),
        "percentile": lambda: p.PercentilePruner(cfg.pruner_percentile, n_startup_trials=cfg.pruner_startup_trials,
                                                 n_warmup_steps=cfg.pruner_warmup_steps),
        "successive_halving": lambda: p.SuccessiveHalvingPruner(),
        "hyperband": lambda: p.HyperbandPruner(),
    }
    return factories[cfg.pruner]()


def _run_optuna(cfg: SweepConfig, setup: _Setup, dims: list[Dimension], out: Path, results: dict[int, TrialResult],
                record: Any, console: Any) -> None:
    optuna = _import_optuna()
    distributions = optuna_distributions(dims)
    study = optuna.create_study(direction=cfg.direction, sampler=make_sampler(cfg), pruner=make_pruner(cfg))
    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "failed": optuna.trial.TrialState.FAIL}
    # Recorded trials are replayed into the study, in order, so the sampler and the pruner see them
    # and trial numbers continue where the last run stopped.
    for number in sorted(results):
        r = results[number]
        study.add_trial(optuna.trial.create_trial(
            params=_to_optuna(dims, r.params), distributions=distributions, state=states[r.status],
            value=r.metric if r.status == "complete" else None,
            intermediate_values={int(step): value for step, value in r.intermediate},
        ))
    # With retry_failed, failed trials stay recorded (numbers never change) and new ones replace them.
    retried = sum(r.status == "failed" for r in results.values()) if cfg.retry_failed else 0
    while len(study.trials) < (cfg.n_trials or 0) + retried:
        trial = study.ask(distributions)
        number = trial.number + 1
        params = _jsonable(_from_optuna(dims, trial.params))
        console.print(f"[bold]trial {number:03d}/{cfg.n_trials:03d}[/] {_describe(params)}", highlight=False)

        seen: set[int] = set()

        def report(step: int, value: float, _trial: Any = trial, _seen: set[int] = seen) -> None:
            if step in _seen:
                return  # one value per step (a resumed run may log a step twice)
            _seen.add(step)
            _trial.report(value, step)
            if _trial.should_prune():
                raise TrialPruned(f"pruned at step {step} ({cfg.metric}={value:.6g})")

        result = run_trial(setup, cfg, number, params, trial_dir(out, number), report=report, console=console)
        if result.status == "complete":
            study.tell(trial, result.metric)
        else:
            study.tell(trial, state=states[result.status])
        record(result)
