"""The pipeline: stages chained in one YAML file, artifacts with lineage, skip, resume and gates.

``affinage pipeline PIPELINE.yaml`` runs its stages in order::

    name: quickstart                     # everything goes under runs/quickstart/
    output_dir: runs
    stages:
      - name: sft                        # unique; other stages refer to its artifacts as ${sft.final}
        stage: sft                       # which kind of stage (default: the name)
        config: examples/quickstart.yaml # a YAML file, or the config inline as a mapping
        overrides: {train.max_steps: 40} # dotted keys, as on the command line
      - name: eval
        stage: eval
        config:
          models: [{label: base, name: smollm2-135m-instruct}, {label: sft, name: "${sft.final}"}]
          sets: [{path: examples/data/eval/helpdesk_qa.jsonl}]
        gates:                            # stop here unless the metric passes
          sft.helpdesk_qa.rouge_l: {min: 0.15}

Each stage writes into ``runs/NAME/STAGE/`` (the pipeline sets the stage's output directory key) and,
once it has succeeded, a ``manifest.json``: the config and its hash, the hashes of its inputs (the
artifacts of earlier stages it refers to, and the local files its config names), the package
version, the git commit when there is one, its metrics, its artifacts with their hashes, and its
timings. On a re-run:

* a stage whose manifest matches (same config hash, same input hashes, artifacts still intact) is
  **skipped**, its artifacts and metrics taken from the manifest;
* a stage that failed (no manifest) is run again; when its config and inputs are those of the failed
  attempt and the stage can resume (SFT's ``run.resume``), it **resumes** from its last checkpoint,
  otherwise its directory is cleared first. Earlier stages are never touched;
* **gates** (``metric: {min, max}``) are checked on a stage's metrics right after it (also when it is
  skipped); a failing gate stops the pipeline, writes ``runs/NAME/report/report.html`` saying why,
  and later stages (export...) do not run.

Stages are found through :data:`STAGE_RUNNERS` (kind -> "module:function" that runs a loaded config and
returns a :class:`StageOutput`) and ``affinage.config.STAGE_CONFIGS`` (kind -> config class), both looked
up lazily: a stage whose module is not installed fails at start-up, before anything runs, naming it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import functools
import glob
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from affinage.config import (
    build_run_config,
    from_dict,
    parse_override,
    read_yaml,
    set_dotted,
    stage_config_class,
    to_dict,
)
from affinage.errors import AffinageError, ConfigError
from affinage.utils.fs import atomic_write_text

MANIFEST = "manifest.json"
ATTEMPT = ".attempt.json"
STATUS = "pipeline.json"


# ----------------------------------------------------------------------------------------------
# The registry of stages
# ----------------------------------------------------------------------------------------------


@dataclass
class StageOutput:
    """What a stage hands to the pipeline: named artifacts (paths) and flat metrics."""

    artifacts: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    """How the pipeline runs one kind of stage."""

    runner: str
    """``module:function`` taking the stage's loaded config. It returns a :class:`StageOutput`, or, for
    a training recipe (``recipe=True``), the ``final/`` directory of a run whose ``run.output_dir``
    holds ``metrics.jsonl`` (its last values become the stage's metrics)."""
    recipe: bool = False
    output_key: str = "run.output_dir"
    """Dotted config key the pipeline sets to the stage's directory ``runs/NAME/STAGE``."""
    artifacts: tuple[str, ...] = ()
    """Artifacts it produces, relative to its directory, as ``name=relative/path`` (checked before running)."""
    resume_key: str | None = None
    """Dotted boolean key set to true to continue an interrupted attempt with the same config."""
    always_run: bool = False
    """Never skipped (cheap stages that read everything before them, such as the report)."""
    defaults: tuple[tuple[str, Any], ...] = ()
    """Dotted keys set when the stage's config lacks them (references allowed)."""

    def artifact_paths(self, stage_dir: Path) -> dict[str, Path]:
        paths = {"dir": stage_dir}
        for item in self.artifacts:
            name, _, rel = item.partition("=")
            paths[name] = stage_dir / (rel or name)
        return paths


_RECIPE: dict[str, Any] = {
    "recipe": True,
    "artifacts": ("final", "adapter=final/adapter", "samples=samples.jsonl"),
    "resume_key": "run.resume",
}

STAGE_RUNNERS: dict[str, StageSpec] = {
    "sft": StageSpec("affinage.recipes.sft:train", **_RECIPE),
    "rm": StageSpec("affinage.recipes.reward:train", **_RECIPE),
    "dpo": StageSpec("affinage.recipes.dpo:train", **_RECIPE),
    "ppo": StageSpec("affinage.recipes.ppo:train", **_RECIPE),
    "grpo": StageSpec("affinage.recipes.grpo:train", **_RECIPE),
    "safety_classifier": StageSpec(
        "affinage.pipeline_stages:run_safety_classifier_stage", artifacts=("final",)
    ),
    "safety_eval": StageSpec(
        "affinage.pipeline_stages:run_safety_eval_stage", output_key="output_dir", artifacts=("results=results.json",)
    ),
    "redteam": StageSpec(
        "affinage.pipeline_stages:run_redteam_stage",
        output_key="output_dir",
        artifacts=("report=report.json", "sft_feedback=sft_feedback.jsonl", "preference_feedback=preference_feedback.jsonl"),
    ),
    "curate": StageSpec(
        "affinage.pipeline_stages:run_curate_stage",
        output_key="output.dir",
        artifacts=("train=train.jsonl", "validation=validation.jsonl", "dataset", "card=card.md"),
    ),
    "export": StageSpec(
        "affinage.pipeline_stages:run_export_stage", output_key="output_dir", artifacts=("model",)
    ),
    "eval": StageSpec(
        "affinage.evaluation.evaluate:run_stage",
        output_key="output_dir",
        artifacts=("results=results.json", "predictions=predictions.jsonl"),
    ),
    "report": StageSpec(
        "affinage.evaluation.report:run_stage",
        output_key="output_dir",
        artifacts=("html=report.html", "markdown=report.md"),
        always_run=True,
        defaults=(("source", "${pipeline.dir}"),),
    ),
}
"""Stage kind -> how to run it. The config class comes from ``affinage.config.STAGE_CONFIGS``."""


def stage_spec(kind: str) -> StageSpec:
    if kind not in STAGE_RUNNERS:
        raise ConfigError(f"unknown stage kind '{kind}'; the pipeline knows: {', '.join(sorted(STAGE_RUNNERS))}")
    return STAGE_RUNNERS[kind]


def stage_runner(kind: str) -> Callable[[Any], StageOutput]:
    """The function that runs a stage of ``kind``, imported now (a clear error when it is not installed)."""
    spec = stage_spec(kind)
    module_name, _, func_name = spec.runner.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"stage kind '{kind}' is not available in this installation: its module {module_name} cannot "
            f"be imported ({exc}). Update affinage, or remove the stage from the pipeline."
        ) from None
    func = getattr(module, func_name, None)
    if func is None:
        raise ConfigError(f"stage kind '{kind}' is not available: {module_name} has no function '{func_name}'")
    if not spec.recipe:
        return func

    def run_recipe(cfg: Any) -> StageOutput:
        return recipe_output(cfg, Path(func(cfg)))

    return run_recipe


def stage_config_for(kind: str) -> type:
    try:
        return stage_config_class(kind)
    except ConfigError:
        raise ConfigError(
            f"stage kind '{kind}' has a runner but no config class in affinage.config.STAGE_CONFIGS; "
            "it is not available in this installation"
        ) from None
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ConfigError(f"stage kind '{kind}' is not available in this installation: {exc}") from None


def recipe_output(cfg: Any, final: Path) -> StageOutput:
    """A training run's artifacts (``final/``, its adapter, samples) and the last logged metrics."""
    out = Path(cfg.run.output_dir)
    artifacts = {"final": str(final)}
    if (out / "samples.jsonl").is_file():
        artifacts["samples"] = str(out / "samples.jsonl")
    if (final / "adapter").is_dir():
        artifacts["adapter"] = str(final / "adapter")
    return StageOutput(artifacts=artifacts, metrics=last_metrics(out / "metrics.jsonl"))


def last_metrics(path: str | Path) -> dict[str, float]:
    """``{split}.{key}`` -> the last logged value, from a ``metrics.jsonl`` (numbers only)."""
    from affinage.engine.metrics import read_metrics

    flat: dict[str, float] = {}
    if not Path(path).is_file():
        return flat
    for row in read_metrics(path):
        split = row.get("split", "train")
        for key, value in row.items():
            if key not in ("split", "step") and isinstance(value, int | float) and not isinstance(value, bool):
                flat[f"{split}.{key}"] = float(value)
    return flat


# ----------------------------------------------------------------------------------------------
# The pipeline file
# ----------------------------------------------------------------------------------------------


@dataclass
class GateConfig:
    """A threshold on one metric of a stage: the pipeline stops unless ``min <= value <= max``."""

    min: float | None = None
    max: float | None = None


@dataclass
class PipelineStageConfig:
    name: str = ""
    """Unique name: the stage's directory and the prefix of its artifacts (``${NAME.final}``)."""
    stage: str | None = None
    """Kind of stage (sft, dpo, eval, report...; default: ``name``)."""
    config: Any = None
    """Path of the stage's YAML config, or the config itself as a mapping (default: all defaults)."""
    overrides: dict[str, Any] | list[str] = field(default_factory=dict)
    """Dotted ``key: value`` pairs applied over the config (or a list of ``key=value`` strings)."""
    gates: dict[str, GateConfig] = field(default_factory=dict)
    """Metric name -> ``{min, max}``, checked right after the stage."""

    @property
    def kind(self) -> str:
        return self.stage or self.name


@dataclass
class PipelineConfig:
    """A chain of stages: ``affinage pipeline PIPELINE.yaml``."""

    stage: Literal["pipeline"] = "pipeline"
    """Marks the file as a pipeline (optional in the file)."""
    name: str = "pipeline"
    """The run's name: everything goes under ``output_dir/name/``."""
    output_dir: str = "runs"
    stages: list[PipelineStageConfig] = field(default_factory=list)

    def validate(self) -> None:
        if not self.stages:
            raise ConfigError("config key 'stages' needs at least one stage")
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"config key 'name' must be letters, digits, '-' or '_', got {self.name!r}")
        seen: list[str] = []
        for i, st in enumerate(self.stages):
            where = f"stages[{i}]"
            if not st.name or not _NAME.fullmatch(st.name) or st.name == "pipeline":
                raise ConfigError(
                    f"config key '{where}.name' must be a non-empty name of letters, digits, '-' or '_' "
                    f"(not 'pipeline'), got {st.name!r}"
                )
            if st.name in seen:
                raise ConfigError(f"config key '{where}.name': stage name '{st.name}' is used twice")
            stage_spec(st.kind)
            if st.config is not None and not isinstance(st.config, str | dict):
                raise ConfigError(f"config key '{where}.config' must be a YAML file path or a mapping")
            for ref_stage, _ in references([st.config, st.overrides]):
                if ref_stage != "pipeline" and ref_stage not in seen:
                    later = " (it comes later: a stage can only use earlier ones)" if ref_stage in self.stage_names() else ""
                    raise ConfigError(f"{where} ({st.name}) refers to unknown stage '{ref_stage}'{later}")
            for metric, gate in st.gates.items():
                if gate.min is None and gate.max is None:
                    raise ConfigError(f"config key '{where}.gates.{metric}' needs min or max")
                if gate.min is not None and gate.max is not None and gate.min > gate.max:
                    raise ConfigError(f"config key '{where}.gates.{metric}': min {gate.min} > max {gate.max}")
            seen.append(st.name)

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_REF = re.compile(r"\$\{([A-Za-z0-9_-]+)\.([A-Za-z0-9_.-]+)\}")


def references(value: Any) -> list[tuple[str, str]]:
    """Every ``${stage.artifact}`` in ``value`` (nested lists and mappings), in order."""
    found: list[tuple[str, str]] = []
    if isinstance(value, str):
        found += _REF.findall(value)
    elif isinstance(value, dict):
        for v in value.values():
            found += references(v)
    elif isinstance(value, list | tuple):
        for v in value:
            found += references(v)
    return found


def substitute(value: Any, lookup: Callable[[str, str], str]) -> Any:
    """``value`` with every ``${stage.artifact}`` replaced by ``lookup(stage, artifact)``."""
    if isinstance(value, str):
        return _REF.sub(lambda m: lookup(m.group(1), m.group(2)), value)
    if isinstance(value, dict):
        return {k: substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, lookup) for v in value]
    return value


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline file. An override ``STAGE.key=value`` goes to that stage's overrides;
    ``name=...`` and ``output_dir=...`` set the pipeline's own keys."""
    raw = read_yaml(path)
    base = Path(path).parent
    stages = {s.get("name"): s for s in raw.get("stages") or [] if isinstance(s, dict)}
    for item in overrides or []:
        key, value = parse_override(item)
        head, _, rest = key.partition(".")
        if head not in stages or not rest:
            set_dotted(raw, key, value)
        elif rest.startswith("gates."):  # STAGE.gates.METRIC.max=...: the pipeline's own key
            set_dotted(stages[head], rest, value)
        else:  # STAGE.key=value: an override of the stage's config
            current = stages[head].get("overrides") or {}
            if isinstance(current, list):
                current = dict(parse_override(str(o)) for o in current)
            if not isinstance(current, dict):
                raise ConfigError(f"stage '{head}': 'overrides' must be a mapping or a list of key=value")
            stages[head]["overrides"] = {**current, rest: value}
    cfg = from_dict(PipelineConfig, raw)
    for st in cfg.stages:
        if isinstance(st.config, str) and not Path(st.config).is_file() and (base / st.config).is_file():
            st.config = str(base / st.config)  # relative to the pipeline file when not to the working dir
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------------------------
# Hashes, fingerprints and provenance
# ----------------------------------------------------------------------------------------------


def config_hash(config: dict[str, Any], ignore: set[str]) -> str:
    """sha256 of the config as canonical JSON, without the keys in ``ignore`` (dotted)."""
    clean = copy.deepcopy(config)
    for key in ignore:
        node = clean
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    # Hidden entries are temporary files of atomic writes and our own bookkeeping.
    return sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))


def content_hash(path: str | Path) -> str:
    """sha256 over the relative paths and bytes of a file or of every file of a directory."""
    path = Path(path)
    digest = hashlib.sha256()
    for f in _files(path):
        rel = "." if f == path else f.relative_to(path).as_posix()
        digest.update(rel.encode() + b"\0")
        with f.open("rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def fingerprint(path: str | Path) -> str:
    """A cheap stand-in for :func:`content_hash`: relative paths, sizes and modification times."""
    path = Path(path)
    if not path.exists():
        return "missing"
    digest = hashlib.sha256()
    for f in _files(path):
        st = f.stat()
        digest.update(f"{f.relative_to(path) if f != path else '.'}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """Package versions and, when the code lives in a git checkout, its commit."""
    from importlib.metadata import PackageNotFoundError, version

    import affinage

    info: dict[str, Any] = {"affinage": affinage.__version__}
    for pkg in ("torch", "transformers", "peft", "accelerate"):
        with contextlib.suppress(PackageNotFoundError):
            info[pkg] = version(pkg)
    here = Path(affinage.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        info["git_commit"] = commit
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# ----------------------------------------------------------------------------------------------
# Gates
# ----------------------------------------------------------------------------------------------


@dataclass
class GateResult:
    metric: str
    value: float | None
    min: float | None
    max: float | None
    passed: bool
    message: str


def check_gates(gates: dict[str, GateConfig], metrics: dict[str, float]) -> list[GateResult]:
    """Each gate against ``metrics``; a metric the stage did not produce fails its gate, saying so."""
    import difflib

    results = []
    for metric, gate in gates.items():
        parts = []
        if gate.min is not None:
            parts.append(f">= {gate.min:g}")
        if gate.max is not None:
            parts.append(f"<= {gate.max:g}")
        bound = " and ".join(parts)
        value = metrics.get(metric)
        if value is None:
            close = difflib.get_close_matches(metric, list(metrics), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; it produced: {', '.join(sorted(metrics)[:12]) or 'none'}"
            results.append(GateResult(metric, None, gate.min, gate.max, False, f"{metric} {bound}: the stage produced no such metric{hint}"))
            continue
        ok = (gate.min is None or value >= gate.min) and (gate.max is None or value <= gate.max)
        verdict = "passed" if ok else "FAILED"
        results.append(GateResult(metric, value, gate.min, gate.max, ok, f"{metric} = {value:.4g}, must be {bound}: {verdict}"))
    return results


class GateFailed(AffinageError):
    """A gate stopped the pipeline (the report says which and why)."""


class StageFailed(AffinageError):
    """A stage raised a user error; earlier stages are intact and a re-run resumes at this one."""


# ----------------------------------------------------------------------------------------------
# Planning and running
# ----------------------------------------------------------------------------------------------


@dataclass
class PlannedStage:
    spec_cfg: PipelineStageConfig
    spec: StageSpec
    config_class: type
    runner: Callable[[Any], StageOutput]
    dir: Path


@dataclass
class PipelineRun:
    """What :func:`run_pipeline` did, stage by stage."""

    root: Path
    stages: list[dict[str, Any]]
    status: str
    report: Path | None = None

    def by_name(self, name: str) -> dict[str, Any]:
        return next(s for s in self.stages if s["name"] == name)


def plan(cfg: PipelineConfig) -> list[PlannedStage]:
    """Find every stage's config class and runner, and validate every config, before anything runs.

    References to earlier stages are resolved to the paths those artifacts will have, so that a
    typo in a later stage's config fails now and not after an hour of training.
    """
    root = Path(cfg.output_dir) / cfg.name
    planned: list[PlannedStage] = []
    predicted: dict[str, dict[str, Path]] = {}
    for st in cfg.stages:
        spec = stage_spec(st.kind)
        config_class = stage_config_for(st.kind)
        runner = stage_runner(st.kind)
        stage_dir = root / st.name
        item = PlannedStage(st, spec, config_class, runner, stage_dir)

        def lookup(stage: str, artifact: str, _st: PipelineStageConfig = st) -> str:
            return str(_predicted_artifact(predicted, root, cfg.name, _st.name, stage, artifact))

        load_stage_config(item, lookup)
        predicted[st.name] = spec.artifact_paths(stage_dir)
        planned.append(item)
    return planned


def _predicted_artifact(predicted: dict[str, dict[str, Path]], root: Path, name: str, current: str, stage: str, artifact: str) -> Path | str:
    if stage == "pipeline":
        if artifact == "dir":
            return root
        if artifact == "name":
            return name
        raise ConfigError(f"stage '{current}': unknown reference ${{pipeline.{artifact}}}; use pipeline.dir or pipeline.name")
    known = predicted[stage]
    if artifact not in known and "." in artifact:
        return known.get(artifact.split(".")[0], root / stage) / Path(*artifact.split(".")[1:])
    if artifact not in known:
        raise ConfigError(
            f"stage '{current}' refers to ${{{stage}.{artifact}}}, but stage '{stage}' produces: "
            f"{', '.join(known)}"
        )
    return known[artifact]


def load_stage_config(item: PlannedStage, lookup: Callable[[str, str], str], *, resume: bool = False) -> Any:
    """The stage's typed config: file or inline mapping, overrides, references resolved, output directory set."""
    st, spec = item.spec_cfg, item.spec
    where = f"pipeline stage '{st.name}' ({st.kind})"
    if isinstance(st.config, str):
        raw = read_yaml(st.config)
    else:
        raw = copy.deepcopy(st.config or {})
    overrides = st.overrides
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    if "stage" in _field_names(item.config_class):
        raw.setdefault("stage", st.kind)
    for key, value in spec.defaults:
        if _get_dotted(raw, key) is None and key not in overrides:
            set_dotted(raw, key, value)
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    try:
        raw = substitute(raw, lookup)
        config = build_run_config(item.config_class, raw, output_key=spec.output_key, output_dir=item.dir,
                                  resume_key=spec.resume_key, resume=resume)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return config


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def _get_dotted(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


_HASH_LIMIT = 1 << 30
"""Files larger than this (1 GiB) are tracked by fingerprint rather than read on every run."""
_DIR_MARKERS = ("config.json", "adapter_config.json", "dataset_info.json", "dataset_dict.json", "state.json")
"""Directories are inputs only when they are models or saved datasets (not any folder a string names)."""


def _external_inputs(config: dict[str, Any], root: Path) -> dict[str, str]:
    """Local files and directories the config names (data files, models given by path), hashed.

    Files are hashed by content; directories (models, saved datasets) and files over 1 GiB by their
    fingerprint, so that an unchanged multi-GB model is not read again on every run. Paths inside the pipeline's own directory are the
    artifacts of earlier stages, tracked through their manifests instead.
    """
    found: dict[str, str] = {}
    root = root.absolute()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value and len(value) < 4096 and "\n" not in value:
            if any(c in value for c in "*?[") and not Path(value).exists():
                for match in sorted(glob.glob(os.path.expanduser(value), recursive=True)):
                    walk(match)  # data sources given as a glob: every file it matches
                return
            path = Path(value).expanduser()
            try:
                exists = path.exists()
            except OSError:
                return
            if not exists or path.absolute().is_relative_to(root):
                return
            if path.is_file():
                big = path.stat().st_size > _HASH_LIMIT
                found[f"path:{value}"] = ("fingerprint:" + fingerprint(path)) if big else content_hash(path)
            elif any((path / marker).is_file() for marker in _DIR_MARKERS):
                found[f"path:{value}"] = "fingerprint:" + fingerprint(path)

    walk(config)
    return found


def run_pipeline(
    cfg: PipelineConfig,
    *,
    force: bool = False,
    rerun: list[str] | None = None,
    dry_run: bool = False,
    pipeline_file: str | None = None,
) -> PipelineRun:
    """Run (or, with ``dry_run``, only plan) the pipeline; see the module docstring."""
    from affinage.engine.progress import console

    rerun = list(rerun or [])
    unknown = [r for r in rerun if r not in cfg.stage_names()]
    if unknown:
        raise ConfigError(f"--rerun {', '.join(unknown)}: no such stage; stages: {', '.join(cfg.stage_names())}")
    planned = plan(cfg)
    root = Path(cfg.output_dir) / cfg.name
    status: dict[str, Any] = {
        "name": cfg.name,
        "pipeline_file": pipeline_file,
        "started_at": _now(),
        "status": "running",
        "provenance": provenance(),
        "stages": [
            {"name": p.spec_cfg.name, "stage": p.spec_cfg.kind, "dir": str(p.dir), "status": "pending"} for p in planned
        ],
    }
    if not dry_run:
        root.mkdir(parents=True, exist_ok=True)
        write_json(root / STATUS, status)
    done: dict[str, dict[str, Any]] = {}  # stage name -> its manifest (artifacts with hashes, metrics)

    def lookup(stage: str, artifact: str) -> str:
        if stage == "pipeline":
            return str(root) if artifact == "dir" else cfg.name
        artifacts = done[stage]["artifacts"]
        if artifact in artifacts:
            return artifacts[artifact]["path"]
        head, _, rest = artifact.partition(".")
        if rest and head in artifacts:
            return str(Path(artifacts[head]["path"]) / Path(*rest.split(".")))
        raise ConfigError(f"stage '{stage}' produced no artifact '{artifact}'; it produced: {', '.join(artifacts)}")

    t_pipeline = time.perf_counter()
    for k, item in enumerate(planned):
        st, spec = item.spec_cfg, item.spec
        entry = status["stages"][k]
        config = load_stage_config(item, lookup)
        ignore = {spec.output_key, *([spec.resume_key] if spec.resume_key else []), "run.progress", "progress", "run.report_to"}
        resolved = to_dict(config)
        chash = config_hash(resolved, ignore)
        inputs = {f"{s}.{a}": _input_hash(done, s, a) for s, a in references([st.config, st.overrides, list(dict(spec.defaults).values())]) if s != "pipeline"}
        inputs.update(_external_inputs(resolved, root))
        manifest = read_json(item.dir / MANIFEST)
        forced = force or st.name in rerun
        action, why = _decide(manifest, chash, inputs, spec, forced)
        attempt = read_json(item.dir / ATTEMPT)
        if action == "run" and spec.resume_key and attempt and attempt.get("config_hash") == chash and attempt.get("inputs") == inputs and not forced:
            if not spec.recipe or _has_checkpoint(item.dir):
                action, why = "resume", "continuing the interrupted attempt with the same config and inputs"
            else:
                why = "the interrupted attempt left no checkpoint to resume from; starting afresh"
        entry.update(action=action, reason=why)
        console.print(f"[bold]{st.name}[/] ({st.kind}): {action} - {why}")
        if dry_run:
            entry["status"] = "planned"
            if action == "skip" and manifest:
                done[st.name] = manifest
            else:
                done[st.name] = {"artifacts": {n: {"path": str(p), "sha256": "pending"} for n, p in spec.artifact_paths(item.dir).items()}}
            continue

        if action == "skip":
            assert manifest is not None
            done[st.name] = manifest
            entry.update(status="skipped", duration_s=manifest.get("duration_s"), metrics=manifest.get("metrics", {}))
        else:
            if action == "run" and item.dir.exists():
                shutil.rmtree(item.dir)  # a changed config or input: the old outputs are stale
            item.dir.mkdir(parents=True, exist_ok=True)
            (item.dir / MANIFEST).unlink(missing_ok=True)
            write_json(item.dir / ATTEMPT, {"config_hash": chash, "inputs": inputs, "started_at": _now()})
            if action == "resume":
                config = load_stage_config(item, lookup, resume=True)
            entry.update(status="running", started_at=_now())
            write_json(root / STATUS, status)
            t0 = time.perf_counter()
            try:
                output = item.runner(config)
            except BaseException as exc:
                entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", duration_s=round(time.perf_counter() - t0, 2))
                status.update(status="failed", finished_at=_now(), failed_stage=st.name)
                write_json(root / STATUS, status)
                if isinstance(exc, AffinageError):
                    raise StageFailed(
                        f"pipeline '{cfg.name}' stopped: stage '{st.name}' failed: {exc}\nEarlier stages are kept; "
                        f"fix the problem and run the pipeline again: it resumes at '{st.name}'."
                    ) from exc
                raise
            duration = round(time.perf_counter() - t0, 2)
            output = output if isinstance(output, StageOutput) else StageOutput()
            manifest = _write_manifest(item, output, chash, inputs, resolved, duration, resumed=action == "resume")
            (item.dir / ATTEMPT).unlink(missing_ok=True)
            done[st.name] = manifest
            entry.update(status="ran", duration_s=duration, metrics=manifest["metrics"])

        gates = check_gates(st.gates, done[st.name].get("metrics", {}))
        entry["gates"] = [dataclasses.asdict(g) for g in gates]
        for g in gates:
            console.print(f"  gate {'[green]ok[/]' if g.passed else '[bold red]FAILED[/]'} {g.message}")
        if any(not g.passed for g in gates):
            status.update(status="gate_failed", finished_at=_now(), failed_stage=st.name,
                          duration_s=round(time.perf_counter() - t_pipeline, 2))
            for later in status["stages"][k + 1 :]:
                later["status"] = "not_run"
            write_json(root / STATUS, status)
            report = _gate_report(root, cfg.name)
            failed = "; ".join(g.message for g in gates if not g.passed)
            skipped = [s["name"] for s in status["stages"][k + 1 :]]
            raise GateFailed(
                f"pipeline '{cfg.name}' stopped after stage '{st.name}': {failed}."
                + (f" Not run: {', '.join(skipped)}." if skipped else "")
                + (f" Report: {report}" if report else "")
            )
        if not dry_run:
            write_json(root / STATUS, status)

    status.update(status="planned" if dry_run else "ok", finished_at=_now(), duration_s=round(time.perf_counter() - t_pipeline, 2))
    if not dry_run:
        write_json(root / STATUS, status)
    return PipelineRun(root, status["stages"], status["status"])


def _has_checkpoint(stage_dir: Path) -> bool:
    from affinage.engine.checkpoint import latest_checkpoint

    return latest_checkpoint(stage_dir / "checkpoints") is not None


def _input_hash(done: dict[str, dict[str, Any]], stage: str, artifact: str) -> str:
    artifacts = done[stage]["artifacts"]
    head = artifact if artifact in artifacts else artifact.partition(".")[0]
    return str(artifacts.get(head, {}).get("sha256", "missing"))


def _decide(manifest: dict[str, Any] | None, chash: str, inputs: dict[str, str], spec: StageSpec, forced: bool) -> tuple[str, str]:
    if forced:
        return "run", "asked to re-run"
    if spec.always_run:
        return "run", "this kind of stage always runs"
    if manifest is None or manifest.get("status") != "ok":
        return "run", "no completed run yet"
    if manifest.get("config_hash") != chash:
        return "run", "its config changed"
    if manifest.get("inputs") != inputs:
        changed = sorted(k for k in set(inputs) | set(manifest.get("inputs", {})) if inputs.get(k) != manifest.get("inputs", {}).get(k))
        return "run", f"its inputs changed ({', '.join(changed)})"
    for name, art in manifest.get("artifacts", {}).items():
        path = Path(art["path"])
        if not path.exists():
            return "run", f"its artifact '{name}' is missing ({path})"
        if name != "dir" and fingerprint(path) != art.get("fingerprint") and content_hash(path) != art.get("sha256"):
            return "run", f"its artifact '{name}' was modified"
    return "skip", "config and inputs unchanged"


def _write_manifest(item: PlannedStage, output: StageOutput, chash: str, inputs: dict[str, str], resolved: dict[str, Any], duration: float, *, resumed: bool) -> dict[str, Any]:
    artifacts: dict[str, dict[str, Any]] = {}
    for name, path in output.artifacts.items():
        p = Path(path)
        if not p.exists():
            raise RuntimeError(f"stage '{item.spec_cfg.name}' reported artifact '{name}' at {p}, which does not exist")
        artifacts[name] = {"path": str(p), "sha256": content_hash(p), "fingerprint": fingerprint(p)}
    # The stage directory as a whole changes whenever anything in it does: its identity is the run's.
    run_id = hashlib.sha256(json.dumps([chash, inputs, {n: a["sha256"] for n, a in artifacts.items()}], sort_keys=True).encode()).hexdigest()
    artifacts["dir"] = {"path": str(item.dir), "sha256": run_id}
    metrics = {k: float(v) for k, v in output.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool) and v == v}
    manifest = {
        "name": item.spec_cfg.name,
        "stage": item.spec_cfg.kind,
        "status": "ok",
        "config_hash": chash,
        "config": resolved,
        "inputs": inputs,
        "artifacts": artifacts,
        "metrics": metrics,
        "started_at": _dt.datetime.fromtimestamp(time.time() - duration, _dt.UTC).isoformat(timespec="seconds"),
        "finished_at": _now(),
        "duration_s": duration,
        "resumed": resumed,
        **provenance(),
    }
    write_json(item.dir / MANIFEST, manifest)
    return manifest


def _gate_report(root: Path, name: str) -> Path | None:
    """Write the report of what ran, so a stopped pipeline explains itself."""
    try:
        from affinage.evaluation.report import build_report
    except ImportError:
        return None
    try:
        return build_report(root, output_dir=root / "report", title=f"{name}: stopped by a gate")
    except Exception as exc:  # the gate failure is the news; a report problem must not hide it
        from affinage.engine.progress import console

        console.print(f"[yellow]could not write the report: {exc}[/]")
        return None


def print_summary(run: PipelineRun) -> None:
    from rich.table import Table

    from affinage.engine.progress import console

    table = Table(title=f"pipeline {run.root} ({run.status})")
    for col in ("stage", "kind", "status", "time", "gates"):
        table.add_column(col)
    for s in run.stages:
        gates = s.get("gates") or []
        gate_text = " ".join("[green]✓[/]" if g["passed"] else "[red]✗[/]" for g in gates) or "-"
        duration = s.get("duration_s")
        table.add_row(s["name"], s["stage"], s["status"], f"{duration:.1f} s" if isinstance(duration, int | float) else "-", gate_text)
    console.print(table)


__all__ = [
    "STAGE_RUNNERS",
    "GateConfig",
    "GateFailed",
    "PipelineConfig",
    "PipelineStageConfig",
    "StageFailed",
    "StageOutput",
    "StageSpec",
    "check_gates",
    "content_hash",
    "load_pipeline",
    "run_pipeline",
]
