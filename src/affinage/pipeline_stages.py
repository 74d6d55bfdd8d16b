"""Pipeline adapters for stages whose entry points return something other than a :class:`StageOutput`.

Each function takes the stage's loaded config (the pipeline has already pointed its output directory
at ``runs/NAME/STAGE``), calls the stage's own entry point, and hands back its artifacts and a flat
dict of metrics for gates and the report. Imported only when a pipeline uses one of these stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from affinage.errors import ConfigError
from affinage.export import ExportOptions
from affinage.pipeline import StageOutput, last_metrics

SAFETY_KEYS = (
    "violation_rate", "false_refusal_rate", "harmful_refusal_rate", "benign_refusal_rate",
    "helpfulness_reward", "helpfulness_proxy",
)


def _numbers(values: dict[str, Any], keys: tuple[str, ...] | None = None) -> dict[str, float]:
    return {
        k: float(v) for k, v in values.items()
        if (keys is None or k in keys) and isinstance(v, int | float) and not isinstance(v, bool)
    }


# ----------------------------------------------------------------------------------------------
# Safety
# ----------------------------------------------------------------------------------------------


def deployed_setting(cfg: Any) -> str | None:
    """The sweep setting name of the guard as configured (``guard:`` of the safety eval config), or
    None when a moderation is on at the classifier's own threshold (no sweep value names it)."""
    from affinage.safety.evaluate import setting_name

    g = cfg.guard
    if not g.enabled:
        return setting_name(False, None, None)
    if (g.input.enabled and g.input.threshold is None) or (g.output.enabled and g.output.threshold is None):
        return None
    t_in = g.input.threshold if g.input.enabled else None
    t_out = g.output.threshold if g.output.enabled else None
    return setting_name(g.system_prompt, t_in, t_out)


def run_safety_eval_stage(cfg: Any) -> StageOutput:
    """``safety_eval``: every guard setting of the sweep as ``SETTING.violation_rate`` etc., and the
    deployed setting (the config's ``guard``, when the sweep has it) also without a prefix, so that
    gates read ``violation_rate`` and ``false_refusal_rate`` directly."""
    from affinage.safety.evaluate import run_safety_eval

    results = run_safety_eval(cfg)
    out = Path(cfg.output_dir)
    metrics: dict[str, float] = {}
    for setting in results.get("settings", []):
        for key, value in _numbers(setting.get("overall", {}), SAFETY_KEYS).items():
            metrics[f"{setting['name']}.{key}"] = value
    deployed = next((s for s in results.get("settings", []) if s["name"] == deployed_setting(cfg)), None)
    if deployed is not None:
        metrics.update(_numbers(deployed.get("overall", {}), SAFETY_KEYS))
    artifacts = {"results": str(out / "results.json")}
    if (out / "pareto.png").is_file():
        artifacts["pareto"] = str(out / "pareto.png")
    return StageOutput(artifacts=artifacts, metrics=metrics)


def run_safety_classifier_stage(cfg: Any) -> StageOutput:
    """``safety_classifier``: the trained classifier's ``final/`` and its last logged metrics."""
    from affinage.safety.training import train_classifier

    final = Path(train_classifier(cfg))
    return StageOutput(artifacts={"final": str(final)}, metrics=last_metrics(Path(cfg.run.output_dir) / "metrics.jsonl"))


def run_redteam_stage(cfg: Any) -> StageOutput:
    """``redteam``: attack success rate overall and per technique; the feedback data as artifacts."""
    from affinage.safety.redteam import run_redteam

    report = run_redteam(cfg)
    out = Path(cfg.output_dir)
    metrics: dict[str, float] = {}
    overall = report.get("overall") or {}
    if isinstance(overall.get("asr"), int | float):
        metrics["attack_success_rate"] = float(overall["asr"])
    for group in ("per_technique", "per_category", "per_language"):
        for name, rates in (report.get(group) or {}).items():
            if isinstance(rates.get("asr"), int | float):
                metrics[f"{group.removeprefix('per_')}.{name}.attack_success_rate"] = float(rates["asr"])
    names = ("report.json", "successful_attacks.jsonl", "transcripts.jsonl", "sft_feedback.jsonl", "preference_feedback.jsonl")
    artifacts = {n.split(".")[0]: str(out / n) for n in names if (out / n).is_file()}
    return StageOutput(artifacts=artifacts, metrics=metrics)


# ----------------------------------------------------------------------------------------------
# Data curation
# ----------------------------------------------------------------------------------------------


def run_curate_stage(cfg: Any) -> StageOutput:
    """``curate``: the curated files as artifacts (``train``, ``validation``, ``dataset``, ``card``)
    and rows in and out as metrics."""
    from affinage.curation.pipeline import curate

    result = curate(cfg)
    artifacts = {}
    for name, path in result.stats.outputs.items():
        key = name.split(".")[0] if name.endswith((".jsonl", ".md")) else name.replace(".", "_")
        if name == "card.html":
            key = "card_html"
        artifacts[key] = path
    stats = result.stats.to_dict()
    metrics = _numbers(stats)
    for key in ("rows_in", "rows_out", "train_rows", "validation_rows"):
        if isinstance(stats.get(key), int | float):
            metrics[key] = float(stats[key])
    return StageOutput(artifacts=artifacts, metrics=metrics)


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


@dataclass
class ExportStageConfig:
    """The ``export`` stage of a pipeline: ``affinage export SOURCE`` into the stage's directory."""

    stage: Literal["export"] = "export"
    source: str = ""
    """A run directory, a ``final/`` directory or an adapter, e.g. ``${dpo.final}``."""
    options: ExportOptions = field(default_factory=ExportOptions)
    output_dir: str = "runs/export"
    """Set by the pipeline; the exported model is written to ``output_dir/model``."""

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("config key 'source' must name what to export, e.g. source: ${dpo.final}")
        self.options.validate()


def run_export_stage(cfg: ExportStageConfig) -> StageOutput:
    from affinage.export import export

    out = Path(cfg.output_dir)
    manifest = export(cfg.source, out / "model", cfg.options)
    metrics: dict[str, float] = {}
    for key, value in (manifest or {}).items():
        if isinstance(value, dict):
            metrics.update({f"{key}.{k}": v for k, v in _numbers(value).items()})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = float(value)
    artifacts = {"model": str(out / "model")}
    for gguf in sorted((out / "model" / "gguf").glob("*.gguf")):
        artifacts["gguf"] = str(gguf)
    return StageOutput(artifacts=artifacts, metrics=metrics)
