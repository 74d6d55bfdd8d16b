"""The report: one self-contained HTML file and a Markdown file for a run or a whole pipeline.

``affinage report RUN_DIR`` reads whatever the directory holds and writes ``report.html`` (tables,
plots embedded as base64 PNG, no external resource: it opens offline and can be mailed) and
``report.md`` (the same tables, figures in ``figures/``). ``RUN_DIR`` is either one run (an
``affinage sft`` output directory, an eval directory...) or a pipeline directory ``runs/NAME/``, whose
stages are read in the order of its ``pipeline.json``. What it shows, when the files are there:

* the pipeline's stages, their status, timings and gates (a failed gate first, in red);
* training curves from each ``metrics.jsonl`` (rows carry ``split`` and ``step``): loss, and the
  families other recipes log: accuracies (reward models, DPO), reward margins, rewards, KL (PPO);
* evaluation results from ``results.json``: a table per set with every model side by side and the
  change from one model (stage) to the next, bar charts, per-language and per-category breakdowns,
  win rate with its length-bias check, judge scores, lm-eval tasks;
* the safety trade-off: violation rate against false-refusal rate (or helpfulness), Pareto front drawn;
* sample answers side by side (base, SFT, aligned) from ``predictions.jsonl`` or SFT's ``samples.jsonl``;
* provenance: package versions, git commit, config hashes.

Plots need matplotlib (optional extra ``report``); without it the report has every table and says
which extra adds the plots.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from affinage.errors import ConfigError
from affinage.utils.fs import atomic_write_text

LOWER_IS_BETTER = frozenset(
    {"perplexity", "loss", "violation_rate", "false_refusal_rate", "attack_success_rate", "unparsable_rate", "kl"}
)
METRIC_NAMES = {
    "exact_match": "Exact match",
    "rouge_l": "ROUGE-L",
    "bleu": "BLEU",
    "chrf": "chrF",
    "perplexity": "Perplexity",
    "accuracy": "Accuracy",
    "accuracy_norm": "Accuracy (length-normalised)",
    "win_rate": "Win rate vs baseline",
    "win_rate_stderr": "Win rate std. error",
    "win_rate_length_matched": "Win rate, length-matched pairs",
    "n_length_matched": "Length-matched pairs",
    "longer_preferred": "Judge prefers the longer answer",
    "mean_reward": "Mean reward",
    "mean_reward_baseline": "Mean reward of the baseline",
    "judge": "Judge score",
    "judge_parsed": "Judge verdicts parsed",
    "answer_chars": "Answer length (characters)",
    "violation_rate": "Violation rate",
    "false_refusal_rate": "False-refusal rate",
    "helpfulness": "Helpfulness",
}
NEUTRAL = frozenset(
    {"answer_chars", "n_length_matched", "longer_preferred", "win_rate_stderr", "mean_reward_baseline", "n", "judge_parsed"}
)
"""Descriptive numbers: their changes are shown in grey and no model is "best" at them."""
CHART_METRICS = ("exact_match", "rouge_l", "bleu", "chrf", "perplexity", "accuracy", "accuracy_norm", "win_rate", "judge")
PALETTE = ["#64748b", "#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04"]
"""Model colours in order: the first (usually the base model) in slate, then the stages."""
_BOOKKEEPING = {"step", "epoch", "lr", "grad_norm", "tokens_per_s", "trained_tokens", "elapsed_s", "tokens", "n"}


@dataclass
class ReportConfig:
    """The report: ``affinage report RUN_DIR`` or a pipeline stage ``stage: report``."""

    stage: Literal["report"] = "report"
    source: str = ""
    """A run directory or a pipeline directory (``runs/NAME``); in a pipeline, its own directory."""
    output_dir: str | None = None
    """Where report.html, report.md and figures/ go (default: ``source``)."""
    title: str | None = None
    max_samples: int = 8
    """Sample answers shown side by side per set."""

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("config key 'source' must name a run or pipeline directory")
        if self.max_samples < 0:
            raise ConfigError("config key 'max_samples' must be >= 0")


# ----------------------------------------------------------------------------------------------
# Reading run directories
# ----------------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    name: str
    kind: str
    dir: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    """This stage's entry of pipeline.json (status, duration, gates)."""
    metrics_rows: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    eval_results: dict[str, Any] | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    """PNG files the stage wrote itself (embedded as they are)."""
    extra_results: dict[str, Any] = field(default_factory=dict)
    """Other ``*.json`` result files of the stage (safety, red team...), by file name."""


@dataclass
class ReportData:
    source: Path
    title: str
    pipeline: dict[str, Any] | None
    runs: list[RunInfo]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a half-written last line of a run still in progress
                if isinstance(row, dict):
                    rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
    except OSError:
        pass
    return rows


_RUN_FILES = ("manifest.json", "metrics.jsonl", "results.json", "samples.jsonl", "config.yaml")
_KNOWN_JSON = {"manifest.json", "results.json", "pipeline.json", "config.json", "trainer_state.json"}


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in _RUN_FILES)


def _kind_of(path: Path, manifest: dict[str, Any]) -> str:
    if manifest.get("stage"):
        return str(manifest["stage"])
    if (path / "results.json").is_file():
        return "eval"
    config = path / "config.yaml"
    if config.is_file():
        match = re.search(r"^stage:\s*(\S+)", config.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
        if match:
            return match.group(1).strip("'\"")
    return "run"


def dedupe_steps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (split, step), the last logged, sorted by step: a run resumed from a checkpoint
    logs again the steps between that checkpoint and the interruption."""
    last: dict[tuple[str, Any], dict[str, Any]] = {}
    for row in rows:
        last[(str(row.get("split", "train")), row.get("step"))] = row
    return sorted(last.values(), key=lambda r: (r.get("step") if isinstance(r.get("step"), int | float) else -1))


def read_run(path: Path, name: str | None = None, status: dict[str, Any] | None = None) -> RunInfo:
    manifest = _read_json(path / "manifest.json") or {}
    run = RunInfo(name=name or path.name, kind=_kind_of(path, manifest), dir=path, manifest=manifest, status=status or {})
    if (path / "metrics.jsonl").is_file():
        run.metrics_rows = dedupe_steps(_read_jsonl(path / "metrics.jsonl"))
    if (path / "samples.jsonl").is_file():
        run.samples = _read_jsonl(path / "samples.jsonl", limit=200)
    results = _read_json(path / "results.json")
    if isinstance(results, dict) and "sets" in results:
        run.eval_results = results
    elif isinstance(results, dict):
        run.extra_results["results.json"] = results
    if (path / "predictions.jsonl").is_file():
        run.predictions = _read_jsonl(path / "predictions.jsonl", limit=5000)
    for f in sorted(path.glob("*.json")):
        if f.name not in _KNOWN_JSON and f.stat().st_size < 2_000_000:
            data = _read_json(f)
            if isinstance(data, dict | list):
                run.extra_results[f.name] = data
    run.figures = [f for f in sorted(path.glob("*.png")) if f.stat().st_size < 3_000_000]
    return run


def collect(source: str | Path, title: str | None = None) -> ReportData:
    """Everything the report shows, read from a run directory or a pipeline directory."""
    source = Path(source)
    if not source.is_dir():
        raise ConfigError(f"report: {source} is not a directory; give a run directory or a pipeline directory (runs/NAME)")
    pipeline = _read_json(source / "pipeline.json")
    runs: list[RunInfo] = []
    if isinstance(pipeline, dict) and isinstance(pipeline.get("stages"), list):
        for entry in pipeline["stages"]:
            stage_dir = source / entry.get("name", "")
            if entry.get("stage") == "report":
                continue
            if stage_dir.is_dir():
                run = read_run(stage_dir, entry.get("name"), entry)
                run.kind = entry.get("stage", run.kind)
                runs.append(run)
            else:
                runs.append(RunInfo(name=entry.get("name", "?"), kind=entry.get("stage", "?"), dir=stage_dir, status=entry))
    elif _is_run_dir(source):
        pipeline = None
        runs.append(read_run(source))
    else:
        pipeline = None
        runs = [read_run(p) for p in sorted(source.iterdir()) if _is_run_dir(p)]
    if not runs:
        raise ConfigError(
            f"report: {source} holds no run (no metrics.jsonl, results.json, manifest.json or pipeline.json); "
            "give the output directory of a run or of a pipeline"
        )
    if isinstance(pipeline, dict):
        # Report stages are this page itself; when one of them is writing it, the pipeline is still
        # "running", but everything before it is done.
        stages = [s for s in pipeline.get("stages", []) if s.get("stage") != "report"]
        pipeline = {**pipeline, "stages": stages}
        if pipeline.get("status") == "running" and stages and all(s.get("status") in ("ran", "skipped") for s in stages):
            pipeline["status"] = "ok"
    default_title = (pipeline or {}).get("name") or source.name
    return ReportData(source, title or f"affinage report: {default_title}", pipeline if isinstance(pipeline, dict) else None, runs)


# ----------------------------------------------------------------------------------------------
# Small pure helpers (tested by value)
# ----------------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A number as a person reads it: 0.123, 4.56, 12.3, 1,234; None and NaN as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        a = abs(value)
        if a >= 1000:
            return f"{value:,.0f}"
        if a >= 10:
            return f"{value:.1f}"
        if a >= 1:
            return f"{value:.2f}"
        if a == 0:
            return "0"
        if a < 0.001:
            return f"{value:.1e}"
        return f"{value:.3f}"
    return str(value)


def metric_name(key: str) -> str:
    return METRIC_NAMES.get(key, key.replace("_", " "))


def lower_is_better(key: str) -> bool:
    last = key.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    if last in LOWER_IS_BETTER or last.endswith("loss"):
        return True
    # violation_rate, refusal_rate, attack_success_rate...; but a win rate is better high
    return last.endswith("_rate") and not last.startswith("win_rate")


def pareto_front(points: list[tuple[float, float]], *, minimize_x: bool = True, minimize_y: bool = True) -> list[int]:
    """Indices of the non-dominated points, sorted by x.

    A point dominates another when it is at least as good on both axes and better on one (each axis
    minimised or maximised as asked). The front is what a person can choose from: every other point
    is beaten on both axes by one of these.
    """
    sx = 1 if minimize_x else -1
    sy = 1 if minimize_y else -1
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            sx * x2 <= sx * x and sy * y2 <= sy * y and (sx * x2 < sx * x or sy * y2 < sy * y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def safety_points(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """(label, violation rate, false-refusal rate or helpfulness) points found in the runs' metrics.

    A flat metric key ``PREFIX.violation_rate`` (or ``violation_rate`` alone, labelled by the stage)
    pairs with ``PREFIX.false_refusal_rate`` and/or ``PREFIX.helpfulness``; stages may also write a
    ``pareto.json`` list of such points.
    """
    points: list[dict[str, Any]] = []
    for run in runs:
        flat: dict[str, float] = dict(run.manifest.get("metrics") or {})
        if run.eval_results:
            flat.update(run.eval_results.get("flat") or {})
        prefixed = any(k.endswith("violation_rate") and k != "violation_rate" for k in flat)
        for key, value in flat.items():
            if not key.endswith("violation_rate") or not isinstance(value, int | float):
                continue
            if key == "violation_rate" and prefixed:
                continue  # the stage's headline number, already one of its labelled points
            prefix = key[: -len("violation_rate")]
            point = {"label": (prefix.rstrip("./_") or run.name), "stage": run.name, "violation_rate": float(value)}
            for other in ("false_refusal_rate", "helpfulness"):
                if isinstance(flat.get(prefix + other), int | float):
                    point[other] = float(flat[prefix + other])
            if len(point) > 3:
                points.append(point)
        found = any(p["stage"] == run.name for p in points)
        safety = run.extra_results.get("results.json")
        if not found and isinstance(safety, dict) and isinstance(safety.get("settings"), list):
            # `affinage safety eval` run on its own: one point per guard setting of its sweep
            for setting in safety["settings"]:
                overall = setting.get("overall") or {}
                if not isinstance(overall.get("violation_rate"), int | float):
                    continue
                point = {"label": str(setting.get("name", "?")), "stage": run.name, "violation_rate": float(overall["violation_rate"])}
                if isinstance(overall.get("false_refusal_rate"), int | float):
                    point["false_refusal_rate"] = float(overall["false_refusal_rate"])
                helpful = overall.get("helpfulness_reward", overall.get("helpfulness_proxy"))
                if isinstance(helpful, int | float):
                    point["helpfulness"] = float(helpful)
                points.append(point)
        pareto = run.extra_results.get("pareto.json")
        if isinstance(pareto, list):
            for p in pareto:
                if isinstance(p, dict) and isinstance(p.get("violation_rate"), int | float):
                    points.append({"label": str(p.get("label", run.name)), "stage": run.name, **{
                        k: float(p[k]) for k in ("violation_rate", "false_refusal_rate", "helpfulness")
                        if isinstance(p.get(k), int | float)
                    }})
    return points


def curve_families(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Group the numeric columns of metrics.jsonl rows into the panels the report draws.

    ``loss`` (every key ending in loss), ``accuracy`` (keys with "acc"), ``margin``, ``reward``
    (reward/score keys that are neither margins nor accuracies), ``kl``, ``perplexity``; learning rate,
    throughput and counters are bookkeeping and not drawn.
    """
    keys: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in keys and k not in ("split",) and k not in _BOOKKEEPING and isinstance(v, int | float) and not isinstance(v, bool):
                keys.append(k)
    families: dict[str, list[str]] = {}

    def add(family: str, key: str) -> None:
        families.setdefault(family, []).append(key)

    for k in keys:
        low = k.lower()
        if "margin" in low:
            add("margin", k)
        elif "acc" in low:
            add("accuracy", k)
        elif re.search(r"(^|[/_.])kl($|[/_.])", low) or low.startswith("kl"):
            add("kl", k)
        elif low.endswith("loss"):
            add("loss", k)
        elif "perplexity" in low:
            add("perplexity", k)
        elif "reward" in low or "score" in low:
            add("reward", k)
    return families


FAMILY_TITLES = {
    "loss": "Loss",
    "perplexity": "Validation perplexity",
    "accuracy": "Accuracy",
    "margin": "Reward margin (chosen − rejected)",
    "reward": "Reward",
    "kl": "KL to the reference",
}


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


class Figures:
    """Renders matplotlib figures to PNG bytes (kept for the HTML and written for the Markdown)."""

    def __init__(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg", force=True)
            import matplotlib.pyplot as plt
        except ImportError:
            self.plt = None
        else:
            self.plt = plt
            plt.rcParams.update(
                {
                    "figure.dpi": 110,
                    "savefig.dpi": 110,
                    "font.size": 9.5,
                    "font.family": "DejaVu Sans",
                    "axes.spines.top": False,
                    "axes.spines.right": False,
                    "axes.edgecolor": "#cbd5e1",
                    "axes.labelcolor": "#334155",
                    "axes.titleweight": "bold",
                    "axes.titlesize": 10.5,
                    "axes.titlecolor": "#0f172a",
                    "axes.grid": True,
                    "axes.axisbelow": True,
                    "grid.color": "#e2e8f0",
                    "grid.linewidth": 0.8,
                    "xtick.color": "#475569",
                    "ytick.color": "#475569",
                    "legend.frameon": False,
                    "legend.fontsize": 8.5,
                }
            )
        self.pngs: dict[str, bytes] = {}

    @property
    def available(self) -> bool:
        return self.plt is not None

    def save(self, name: str, fig: Any) -> str:
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", facecolor="white")
        self.plt.close(fig)
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "figure"
        while slug in self.pngs:
            slug += "-"
        self.pngs[slug] = buffer.getvalue()
        return slug


def _model_colors(labels: list[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def plot_curves(figs: Figures, run: RunInfo) -> str | None:
    """One panel per family of logged metrics; train as lines, eval as dashed lines with markers."""
    if not figs.available or not run.metrics_rows:
        return None
    families = curve_families(run.metrics_rows)
    if not families:
        return None
    order = [f for f in FAMILY_TITLES if f in families]
    n = len(order)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = figs.plt.subplots(rows, cols, figsize=(3.9 * cols, 2.9 * rows), squeeze=False)
    splits = sorted({r.get("split", "train") for r in run.metrics_rows}, key=lambda s: (s != "train", s))
    for ax, family in zip(axes.flat, order, strict=False):
        k = 0
        for key in families[family]:
            for split in splits:
                pts = [(r["step"], r[key]) for r in run.metrics_rows if r.get("split", "train") == split and isinstance(r.get(key), int | float) and isinstance(r.get("step"), int | float)]
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                color = PALETTE[(k + 1) % len(PALETTE)]
                split_name = "validation" if split == "eval" else split
                if len(families[family]) > 1:
                    label = f"{key} ({split_name})" if len(splits) > 1 else key
                else:
                    label = split_name if len(splits) > 1 else None
                if split == "train":
                    ax.plot(xs, ys, color=color, lw=1.8, label=label)
                else:
                    ax.plot(xs, ys, color=color, lw=1.4, ls="--", marker="o", ms=4.5, label=label)
                k += 1
        ax.set_title(FAMILY_TITLES[family])
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return figs.save(f"{run.name}-curves", fig)


def plot_eval_set(figs: Figures, set_name: str, entry: dict[str, Any], labels: list[str]) -> str | None:
    """Small multiples: one bar chart per metric, a bar per model, values written on the bars."""
    if not figs.available:
        return None
    keys = [m for m in CHART_METRICS if any(isinstance(entry["results"][lab]["overall"].get(m), int | float) for lab in labels)]
    if not keys:
        return None
    colors = _model_colors(labels)
    cols = min(len(keys), 4)
    rows = math.ceil(len(keys) / cols)
    fig, axes = figs.plt.subplots(rows, cols, figsize=(2.9 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        values = [entry["results"][lab]["overall"].get(key) for lab in labels]
        heights = [v if isinstance(v, int | float) else 0 for v in values]
        bars = ax.bar(range(len(labels)), heights, color=[colors[lab] for lab in labels], width=0.65)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(fmt(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=8.5, xytext=(0, 2), textcoords="offset points", color="#0f172a")
        ax.set_xticks(range(len(labels)), labels, rotation=0 if len(labels) <= 4 else 30)
        arrow = " ↓" if lower_is_better(key) else " ↑"
        ax.set_title(metric_name(key) + arrow)
        ax.grid(axis="x", visible=False)
        top = max(heights) if heights else 1
        ax.set_ylim(0, top * 1.18 if top > 0 else 1)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    return figs.save(f"eval-{set_name}", fig)


def plot_breakdown(figs: Figures, set_name: str, key: str, metric: str, groups: list[str], table: dict[str, dict[str, Any]], labels: list[str]) -> str | None:
    """Grouped horizontal bars: one group per language (or category), a bar per model."""
    if not figs.available or not groups:
        return None
    colors = _model_colors(labels)
    height = 0.8 / len(labels)
    fig, ax = figs.plt.subplots(figsize=(7.5, max(1.9, 0.7 + 0.3 * len(groups) * len(labels))))
    for m, lab in enumerate(labels):
        ys = [g + m * height for g in range(len(groups))]  # the first model on top once the axis is inverted
        vals = [table[lab].get(g) for g in groups]
        ax.barh(ys, [v if isinstance(v, int | float) else 0 for v in vals], height=height * 0.9, color=colors[lab], label=lab)
        for y, v in zip(ys, vals, strict=True):
            ax.annotate(fmt(v), (v if isinstance(v, int | float) else 0, y), va="center", fontsize=7.5, xytext=(3, 0), textcoords="offset points")
    ax.set_yticks([g + (len(labels) - 1) * height / 2 for g in range(len(groups))], groups)
    ax.invert_yaxis()
    ax.set_title(f"{metric_name(metric)} by {key}")
    ax.grid(axis="y", visible=False)
    top = max([v for lab in labels for v in table[lab].values() if isinstance(v, int | float)] or [1.0])
    ax.set_xlim(0, top * 1.12 if top > 0 else 1)  # room for the value labels
    if len(labels) > 1:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14 if len(groups) > 2 else -0.3), ncol=min(len(labels), 6))
    return figs.save(f"breakdown-{set_name}-{key}", fig)


def plot_pareto(figs: Figures, points: list[dict[str, Any]]) -> str | None:
    """Violation rate against false-refusal rate (both lower is better) or helpfulness (higher)."""
    if not figs.available or not points:
        return None
    use_fr = all("false_refusal_rate" in p for p in points)
    xkey = "false_refusal_rate" if use_fr else "helpfulness"
    pts = [p for p in points if xkey in p]
    if not pts:
        return None
    xy = [(p[xkey], p["violation_rate"]) for p in pts]
    front = pareto_front(xy, minimize_x=use_fr, minimize_y=True)
    fig, ax = figs.plt.subplots(figsize=(6.2, 4.2))
    ax.scatter([x for x, _ in xy], [y for _, y in xy], s=46, color="#94a3b8", zorder=3, label="configurations")
    fx = [xy[i][0] for i in front]
    fy = [xy[i][1] for i in front]
    ax.plot(fx, fy, color="#dc2626", lw=1.8, marker="o", ms=7, zorder=4, label="Pareto front")
    for p, (x, y) in zip(pts, xy, strict=True):
        ax.annotate(p["label"], (x, y), fontsize=8, xytext=(5, 4), textcoords="offset points", color="#334155")
    ax.set_xlabel(metric_name(xkey) + (" (lower is better)" if use_fr else " (higher is better)"))
    ax.set_ylabel("Violation rate (lower is better)")
    ax.set_title("Helpfulness / safety trade-off")
    ax.legend(loc="upper right")
    return figs.save("safety-pareto", fig)


# ----------------------------------------------------------------------------------------------
# The document: sections written once, rendered to HTML and Markdown
# ----------------------------------------------------------------------------------------------


@dataclass
class Cell:
    text: str
    cls: str = ""
    """CSS class: num, best, good, bad, muted, pass, fail."""
    delta: str | None = None
    delta_cls: str = ""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    caption: str | None = None
    compact: bool = False
    """As wide as its content rather than the page."""


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Any] = field(default_factory=list)
    """Strings (paragraphs of plain text), Table, ("figure", slug, caption), ("samples", list), ("banner", kind, text), ("cards", list)."""


def _delta(value: Any, previous: Any, key: str) -> tuple[str | None, str]:
    if not isinstance(value, int | float) or not isinstance(previous, int | float) or isinstance(value, bool):
        return None, ""
    d = value - previous
    if abs(d) < 1e-12:
        return "±0", "muted"
    if key in NEUTRAL:
        return ("+" if d > 0 else "−") + fmt(abs(d)), "muted"
    better = (d < 0) if lower_is_better(key) else (d > 0)
    return ("+" if d > 0 else "−") + fmt(abs(d)), "good" if better else "bad"


def eval_table(entry: dict[str, Any], labels: list[str]) -> Table:
    """Rows: metrics; columns: models, each with its change from the previous model (stage)."""
    keys: list[str] = []
    for lab in labels:
        for k in entry["results"][lab]["overall"]:
            if k not in keys and k != "n":
                keys.append(k)
    rows = []
    for key in keys:
        values = [entry["results"][lab]["overall"].get(key) for lab in labels]
        numbers = [v for v in values if isinstance(v, int | float)]
        best = None
        if len(numbers) > 1 and key not in NEUTRAL:
            best = (min if lower_is_better(key) else max)(numbers)
        cells = [Cell(metric_name(key) + (" ↓" if lower_is_better(key) else ""))]
        for i, v in enumerate(values):
            d, dcls = _delta(v, values[i - 1], key) if i > 0 else (None, "")
            cells.append(Cell(fmt(v), "num best" if v == best and best is not None else "num", d, dcls))
        rows.append(cells)
    return Table(["metric", *labels], rows)


def _headline(entry: dict[str, Any], labels: list[str]) -> list[tuple[str, str, str]]:
    """(metric, first -> last, css) for the main metrics, the change the whole pipeline made."""
    if len(labels) < 2:
        return []
    first, last = entry["results"][labels[0]]["overall"], entry["results"][labels[-1]]["overall"]
    out = []
    for key in CHART_METRICS:
        a, b = first.get(key), last.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float):
            d, cls = _delta(b, a, key)
            out.append((metric_name(key), f"{fmt(a)} → {fmt(b)} ({d})", cls))
    return out


def build_sections(data: ReportData, figs: Figures, max_samples: int) -> list[Section]:
    sections: list[Section] = []
    runs = data.runs
    pipeline = data.pipeline

    # ---------------------------------------------------------------- overview
    overview = Section("overview", "Overview")
    cards = []
    if pipeline:
        st = pipeline.get("status", "?")
        cards.append(("Pipeline", {"ok": "completed", "gate_failed": "stopped by a gate", "failed": "a stage failed", "running": "running"}.get(st, st),
                      {"ok": "pass", "gate_failed": "fail", "failed": "fail"}.get(st, "")))
        counts: dict[str, int] = {}
        for s in pipeline.get("stages", []):
            counts[s.get("status", "?")] = counts.get(s.get("status", "?"), 0) + 1
        cards.append(("Stages", ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items()), ""))
        gates = [g for s in pipeline.get("stages", []) for g in (s.get("gates") or [])]
        if gates:
            failed = sum(not g["passed"] for g in gates)
            cards.append(("Gates", f"{len(gates) - failed}/{len(gates)} passed", "fail" if failed else "pass"))
        if isinstance(pipeline.get("duration_s"), int | float):
            cards.append(("Total time", _duration(pipeline["duration_s"]), ""))
    else:
        run = runs[0]
        cards.append(("Run", f"{run.name} ({run.kind})", ""))
        last_train = [r for r in run.metrics_rows if r.get("split") == "train"]
        if last_train:
            cards.append(("Steps", fmt(last_train[-1].get("step")), ""))
            if isinstance(last_train[-1].get("elapsed_s"), int | float):
                cards.append(("Training time", _duration(last_train[-1]["elapsed_s"]), ""))
    eval_runs = [r for r in runs if r.eval_results]
    if eval_runs:
        models = eval_runs[-1].eval_results.get("models", [])
        cards.append(("Models evaluated", ", ".join(m["label"] for m in models), ""))
        headline = []
        for set_name, entry in eval_runs[-1].eval_results["sets"].items():
            labels = [m["label"] for m in models]
            headline += [(f"{set_name} · {m}", text, cls) for m, text, cls in _headline(entry, labels)[:2]]
        cards += headline[:4]
    overview.blocks.append(("cards", cards))
    if pipeline and pipeline.get("status") == "gate_failed":
        failed = [g for s in pipeline.get("stages", []) for g in (s.get("gates") or []) if not g["passed"]]
        not_run = [s["name"] for s in pipeline.get("stages", []) if s.get("status") == "not_run"]
        overview.blocks.append(("banner", "fail",
                                f"The pipeline stopped after stage '{pipeline.get('failed_stage')}': "
                                + "; ".join(g["message"] for g in failed)
                                + (f". Not run: {', '.join(not_run)}." if not_run else ".")))
    elif pipeline and pipeline.get("status") == "failed":
        stage = next((s for s in pipeline.get("stages", []) if s.get("status") == "failed"), {})
        overview.blocks.append(("banner", "fail", f"Stage '{stage.get('name')}' failed: {stage.get('error', '')}"))
    elif pipeline and pipeline.get("status") == "ok":
        overview.blocks.append(("banner", "pass", "Every stage completed and every gate passed."))
    if pipeline:
        rows = []
        for s in pipeline.get("stages", []):
            status = s.get("status", "?")
            cls = {"ran": "pass", "skipped": "muted", "failed": "fail", "not_run": "muted"}.get(status, "")
            gates = s.get("gates") or []
            gate_text = " ".join(("✓ " if g["passed"] else "✗ ") + g["metric"] for g in gates) or "–"
            key_metrics = ", ".join(f"{k} {fmt(v)}" for k, v in key_metrics_of(s.get("metrics") or {})) or "–"
            rows.append([Cell(s["name"]), Cell(s.get("stage", "")), Cell(status, cls),
                         Cell(_duration(s["duration_s"]) if isinstance(s.get("duration_s"), int | float) else "–", "num"),
                         Cell(gate_text, "fail" if any(not g["passed"] for g in gates) else ("pass" if gates else "muted")),
                         Cell(key_metrics, "small")])
        overview.blocks.append(Table(["stage", "kind", "status", "time", "gates", "metrics"], rows, "Stages in order"))
    sections.append(overview)

    # ---------------------------------------------------------------- gates
    gate_rows = []
    for s in (pipeline or {}).get("stages", []):
        for g in s.get("gates") or []:
            bound = " and ".join([f"≥ {fmt(g['min'])}"] * (g.get("min") is not None) + [f"≤ {fmt(g['max'])}"] * (g.get("max") is not None))
            gate_rows.append([Cell(s["name"]), Cell(g["metric"]), Cell(fmt(g.get("value")), "num"), Cell(bound),
                              Cell("passed" if g["passed"] else "FAILED", "pass" if g["passed"] else "fail")])
    if gate_rows:
        sections.append(Section("gates", "Gates", [
            "A gate is a threshold on a stage's metric; the pipeline stops at the first one that fails, "
            "so that a model that fails it is never exported.",
            Table(["stage", "metric", "value", "threshold", "verdict"], gate_rows),
        ]))

    # ---------------------------------------------------------------- training
    training = Section("training", "Training")
    for run in runs:
        if not run.metrics_rows:
            continue
        training.blocks.append(("h3", f"{run.name} ({run.kind})"))
        slug = plot_curves(figs, run)
        if slug:
            training.blocks.append(("figure", slug, f"Metrics logged by {run.name} (solid: training, dashed: validation)."))
        training.blocks.append(_run_summary(run))
    if training.blocks:
        sections.append(training)

    # ---------------------------------------------------------------- evaluation
    for run in eval_runs:
        results = run.eval_results
        labels = [m["label"] for m in results.get("models", [])]
        section = Section(f"eval-{run.name}", "Evaluation" if len(eval_runs) == 1 else f"Evaluation: {run.name}")
        section.blocks.append(
            "Models: " + "; ".join(
                f"{m['label']} = {m['name']}" + (f" ({m['prompting']})" if m.get("prompting") else "")
                for m in results.get("models", [])
            )
            + ". Each column after the first shows its change from the column before it (green: better)."
        )
        for set_name, entry in results["sets"].items():
            section.blocks.append(("h3", f"{set_name} · {entry['type'].replace('_', ' ')} · {entry['n']} examples"))
            section.blocks.append(eval_table(entry, labels))
            slug = plot_eval_set(figs, set_name, entry, labels) if len(labels) > 1 else None
            if slug:
                section.blocks.append(("figure", slug, f"{set_name}: each metric per model (↑ higher is better, ↓ lower is better)."))
            for key in ("language", "category"):
                by = {lab: entry["results"][lab].get(f"by_{key}") for lab in labels}
                if not all(by.values()):
                    continue
                groups = list(next(iter(by.values())).keys())
                metric = _primary_metric(entry)
                if metric is None:
                    continue
                table = {lab: {g: by[lab].get(g, {}).get(metric) for g in groups} for lab in labels}
                rows = [[Cell(g), Cell(fmt(by[labels[0]].get(g, {}).get("n")), "num muted"),
                         *[Cell(fmt(table[lab][g]), "num") for lab in labels]] for g in groups]
                section.blocks.append(Table([key, "n", *labels], rows, f"{metric_name(metric)} by {key}", compact=True))
                slug = plot_breakdown(figs, set_name, key, metric, groups, table, labels)
                if slug:
                    section.blocks.append(("figure", slug, f"{set_name}: {metric_name(metric)} by {key}."))
            if any("win_rate" in entry["results"][lab]["overall"] for lab in labels):
                section.blocks.append(_win_rate_note(entry, labels, results.get("baseline")))
        if results.get("lm_eval"):
            rows = []
            for lab, tasks in results["lm_eval"].items():
                for task, values in tasks.items():
                    if task.startswith("_"):
                        continue
                    rows.append([Cell(lab), Cell(task), Cell(", ".join(f"{k} {fmt(v)}" for k, v in values.items() if not k.endswith("_stderr")))])
            section.blocks.append(("h3", "lm-evaluation-harness tasks"))
            section.blocks.append(Table(["model", "task", "metrics"], rows))
        sections.append(section)

    # ---------------------------------------------------------------- stage metrics (any stage)
    points = safety_points(runs)
    safety_stages = {p["stage"] for p in points}
    other = [r for r in runs if r.manifest.get("metrics") and not r.eval_results and not r.metrics_rows
             and r.name not in safety_stages]
    if other:
        section = Section("stage-metrics", "Stage results")
        for run in other:
            items = list(run.manifest["metrics"].items())[:40]
            section.blocks.append(Table([f"{run.name} ({run.kind})", "value"],
                                        [[Cell(k), Cell(fmt(v), "num")] for k, v in items], compact=True))
        sections.append(section)

    # ---------------------------------------------------------------- safety
    safety_figs = [(run, f) for run in runs for f in run.figures]
    if points or safety_figs:
        section = Section("safety", "Safety and other figures" if not points else "Safety")
        own_plot = any(f.stem.startswith("pareto") for _, f in safety_figs)
        if points and not own_plot:  # a stage that drew its own front (per language) is shown as is
            slug = plot_pareto(figs, points)
            if slug:
                section.blocks.append(("figure", slug, "Each point is a model or guard setting; the red line joins those no other point beats on both axes."))
        if points:
            cols = ["violation_rate", *[k for k in ("false_refusal_rate", "helpfulness") if any(k in p for p in points)]]
            section.blocks.append(Table(["configuration", *[metric_name(c) for c in cols]],
                                        [[Cell(p["label"]), *[Cell(fmt(p.get(c)), "num") for c in cols]] for p in points], compact=True))
        for run, f in safety_figs:
            slug = f"{run.name}-{f.stem}"
            figs.pngs[slug] = f.read_bytes()
            section.blocks.append(("figure", slug, f"{run.name}: {f.name}"))
        sections.append(section)

    # ---------------------------------------------------------------- samples
    samples = Section("samples", "Answers side by side")
    for run in eval_runs:
        labels = [m["label"] for m in run.eval_results.get("models", [])]
        by_set: dict[str, list[dict[str, Any]]] = {}
        for p in run.predictions:
            if "prompt" in p and p.get("models"):
                by_set.setdefault(p["set"], []).append(p)
        for set_name, preds in by_set.items():
            items = []
            for p in _spread(preds, max_samples):
                answers = []
                for lab in labels:
                    m = p["models"].get(lab, {})
                    badge = f"ROUGE-L {fmt(m['rouge_l'])}" if isinstance(m.get("rouge_l"), int | float) else ""
                    if isinstance(m.get("judge"), int | float):
                        badge += f" · judge {fmt(m['judge'])}"
                    answers.append((lab, m.get("answer", ""), badge.strip(" ·")))
                tags = " · ".join(str(p[k]) for k in ("language", "category") if p.get(k))
                items.append({"prompt": p["prompt"], "tags": tags, "reference": p.get("reference"), "answers": answers})
            if items:
                samples.blocks.append(("h3", f"{set_name}"))
                samples.blocks.append(("samples", items))
    if not samples.blocks:
        for run in runs:
            if run.samples:
                items = [{"prompt": s.get("prompt", ""), "tags": "", "reference": None,
                          "answers": [("before", s.get("before", ""), ""), (f"after {run.name}", s.get("after", ""), "")]}
                         for s in run.samples[:max_samples]]
                samples.blocks.append(("h3", f"{run.name}: before and after training"))
                samples.blocks.append(("samples", items))
    if samples.blocks and max_samples:
        sections.append(samples)

    # ---------------------------------------------------------------- provenance
    prov = Section("provenance", "Provenance")
    info = (pipeline or {}).get("provenance") or next((r.manifest for r in runs if r.manifest), {})
    keys = [k for k in ("affinage", "torch", "transformers", "peft", "accelerate", "git_commit", "git_dirty") if k in info]
    if keys:
        prov.blocks.append(Table(["package / source", "version"], [[Cell(k), Cell(str(info[k])[:40])] for k in keys]))
    rows = []
    for run in runs:
        m = run.manifest
        if m:
            inputs = m.get("inputs") or {}
            rows.append([Cell(run.name), Cell(str(m.get("config_hash", ""))[:12], "mono"), Cell(str(len(inputs))),
                         Cell(", ".join(f"{k} {str(v.get('sha256', ''))[:10]}" for k, v in (m.get("artifacts") or {}).items() if k != "dir"), "mono small"),
                         Cell(m.get("finished_at", "–")), Cell("yes" if m.get("resumed") else "no")])
    if rows:
        prov.blocks.append(Table(["stage", "config hash", "inputs", "artifacts (sha256)", "finished", "resumed"], rows,
                                 "Each stage's manifest.json holds the full config, input hashes and metrics."))
    if prov.blocks:
        sections.append(prov)
    return sections


def key_metrics_of(metrics: dict[str, Any], k: int = 3) -> list[tuple[str, Any]]:
    """The ``k`` metrics that say most about a stage: losses, accuracies, rates, margins first;
    counters and bookkeeping (epoch, lr, tokens/s, n...) never."""
    def last(key: str) -> str:
        return key.rsplit(".", 1)[-1]

    kept = [(key, v) for key, v in metrics.items() if last(key) not in _BOOKKEEPING and last(key) not in NEUTRAL]
    ranked = sorted(kept, key=lambda kv: next(
        (i for i, word in enumerate(("loss", "accuracy", "rate", "margin", "rouge", "perplexity", "reward")) if word in kv[0]), 9
    ))
    return ranked[:k]


def _primary_metric(entry: dict[str, Any]) -> str | None:
    for key in ("rouge_l", "accuracy", "win_rate", "judge", "chrf", "exact_match", "perplexity"):
        if key in entry.get("metrics", []):
            return key
    return None


def _win_rate_note(entry: dict[str, Any], labels: list[str], baseline: str | None) -> Table:
    rows = []
    for lab in labels:
        o = entry["results"][lab]["overall"]
        if "win_rate" not in o:
            continue
        wr, wrm, lp = o.get("win_rate"), o.get("win_rate_length_matched"), o.get("longer_preferred")
        verdict, cls = "no sign of length bias", "pass"
        if isinstance(lp, int | float) and lp >= 0.7:
            verdict, cls = "the judge prefers longer answers", "fail"
        if isinstance(wr, int | float) and isinstance(wrm, int | float) and wr - wrm > 0.15:
            verdict, cls = "the win shrinks when lengths match", "fail"
        rows.append([Cell(lab), Cell(fmt(wr), "num"), Cell(fmt(wrm), "num"), Cell(fmt(o.get("n_length_matched")), "num muted"),
                     Cell(fmt(lp), "num"), Cell(fmt(o.get("answer_chars")), "num"), Cell(verdict, cls)])
    return Table(["model", "win rate", "length-matched", "pairs", "longer preferred", "mean length", "length check"], rows,
                 f"Win rate against {baseline or 'the baseline'}, judged by the reward model, with the length-bias check")


def _spread(items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` items spread over the list (so that every language and category shows up), in order."""
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _run_summary(run: RunInfo) -> Table:
    rows = run.metrics_rows
    train = [r for r in rows if r.get("split", "train") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    cells = []
    if train:
        last = train[-1]
        cells.append(("steps", fmt(last.get("step"))))
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            if isinstance(last.get(key), int | float):
                cells.append((f"last {key.replace('_', ' ')}" if key != "tokens_per_s" else "tokens/s (last window)", fmt(last[key])))
        if isinstance(last.get("elapsed_s"), int | float):
            cells.append(("time", _duration(last["elapsed_s"])))
    if evals:
        losses = [r["loss"] for r in evals if isinstance(r.get("loss"), int | float)]
        if losses:
            cells.append(("best validation loss", fmt(min(losses))))
        if isinstance(evals[-1].get("perplexity"), int | float):
            cells.append(("final validation perplexity", fmt(evals[-1]["perplexity"])))
    for key, value in (run.manifest.get("metrics") or {}).items():
        if not key.startswith(("train.", "eval.")) and len(cells) < 14:
            cells.append((key, fmt(value)))
    return Table([c[0] for c in cells], [[Cell(c[1], "num") for c in cells]], compact=True)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f4f6fb;--card:#fff;--accent:#4338ca;
--good:#15803d;--good-bg:#dcfce7;--bad:#b91c1c;--bad-bg:#fee2e2;}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:linear-gradient(120deg,#1e1b4b 0%,#4338ca 55%,#7c3aed 100%);color:#fff;padding:34px 0 54px}
header .wrap{display:flex;justify-content:space-between;align-items:flex-end;gap:24px;flex-wrap:wrap}
header h1{margin:0;font-size:28px;letter-spacing:-.01em}
header .sub{opacity:.8;font-size:13.5px;margin-top:6px}
.wrap{max-width:1180px;margin:0 auto;padding:0 28px}
nav{position:sticky;top:0;z-index:5;background:rgba(244,246,251,.92);backdrop-filter:blur(6px);border-bottom:1px solid var(--line)}
nav .wrap{display:flex;gap:6px;flex-wrap:wrap;padding-top:9px;padding-bottom:9px}
nav a{color:#3730a3;text-decoration:none;font-size:13px;font-weight:600;padding:4px 11px;border-radius:999px;background:#e0e7ff}
nav a:hover{background:#c7d2fe}
main{margin-top:-34px}
section{background:var(--card);border-radius:14px;box-shadow:0 1px 2px rgba(15,23,42,.06),0 6px 24px rgba(15,23,42,.05);padding:22px 26px;margin:0 0 22px}
h2{margin:0 0 14px;font-size:19px;letter-spacing:-.01em}
h3{margin:22px 0 10px;font-size:15px;color:#1e293b}
p{margin:8px 0 12px;color:#334155}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:12px;margin-bottom:14px}
.card{border:1px solid var(--line);border-radius:11px;padding:12px 14px;background:#fbfcfe}
.card .k{font-size:11.5px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);font-weight:600}
.card .v{font-size:16.5px;font-weight:650;margin-top:3px}
.card.pass{border-color:#86efac;background:#f0fdf4}.card.pass .v{color:var(--good)}
.card.fail{border-color:#fca5a5;background:#fef2f2}.card.fail .v{color:var(--bad)}
.card.good .v{color:var(--good)}.card.bad .v{color:var(--bad)}
.banner{border-radius:10px;padding:11px 15px;margin:6px 0 16px;font-weight:600}
.banner.pass{background:var(--good-bg);color:#14532d}.banner.fail{background:var(--bad-bg);color:#7f1d1d}
.banner.warn{background:#fef3c7;color:#78350f;margin-top:18px}
.tablewrap{overflow-x:auto;margin:8px 0 16px}
table{border-collapse:collapse;width:100%;font-size:13.5px}
caption{caption-side:top;text-align:left;font-weight:600;color:#334155;padding:0 0 6px}
table.compact{width:auto;min-width:min(100%,460px)}
th.num{text-align:right}
th{background:#f1f5f9;color:#334155;text-align:left;font-weight:650;padding:7px 10px;border-bottom:1px solid #cbd5e1;white-space:nowrap}
td{padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
tr:nth-child(even) td{background:#fafbfd}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{font-weight:700;color:#1e1b4b}
td.muted,.muted{color:var(--muted)}
td.pass{color:var(--good);font-weight:650}td.fail{color:var(--bad);font-weight:650}
td.small{font-size:12px;color:#475569}td.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
.delta{display:inline-block;margin-left:6px;font-size:11px;padding:0 6px;border-radius:999px;font-weight:650}
.delta.good{background:var(--good-bg);color:var(--good)}.delta.bad{background:var(--bad-bg);color:var(--bad)}
.delta.muted{background:#f1f5f9;color:var(--muted)}
figure{margin:10px 0 18px;text-align:center}
figure img{max-width:100%;height:auto;border-radius:8px}
figcaption{font-size:12.5px;color:var(--muted);margin-top:4px}
.sample{border:1px solid var(--line);border-radius:12px;margin:0 0 16px;overflow:hidden}
.sample .q{background:#f8fafc;padding:10px 14px;border-bottom:1px solid var(--line)}
.sample .q b{color:#3730a3}.tags{float:right;font-size:11.5px;color:var(--muted)}
.answers{display:grid;gap:0}
.answer{padding:10px 14px;border-right:1px solid var(--line);font-size:13.5px;white-space:pre-wrap;word-wrap:break-word}
.answer:last-child{border-right:none}
.answer .who{display:block;font-weight:700;font-size:12px;text-transform:uppercase;letter-spacing:.04em;margin-bottom:4px;white-space:normal}
.answer .badge{float:right;font-weight:600;font-size:11px;color:var(--muted);text-transform:none;letter-spacing:0}
.ref{padding:8px 14px;background:#fffbeb;border-top:1px solid var(--line);font-size:12.5px;color:#713f12;white-space:pre-wrap}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px 0 30px}
@media (max-width:800px){.answers{grid-template-columns:1fr!important}.answer{border-right:none;border-bottom:1px solid var(--line)}}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(t: Table) -> str:
    out = [f'<div class="tablewrap"><table class="{"compact" if t.compact else ""}">']
    if t.caption:
        out.append(f"<caption>{_esc(t.caption)}</caption>")
    # A header sits right-aligned over a column of numbers.
    numeric = [bool(t.rows) and all(i < len(r) and "num" in r[i].cls.split() for r in t.rows) for i in range(len(t.headers))]
    heads = "".join(f'<th class="{"num" if numeric[i] else ""}">{_esc(h)}</th>' for i, h in enumerate(t.headers))
    out.append(f"<thead><tr>{heads}</tr></thead><tbody>")
    for row in t.rows:
        cells = []
        for c in row:
            delta = f'<span class="delta {c.delta_cls}">{_esc(c.delta)}</span>' if c.delta else ""
            cells.append(f'<td class="{c.cls}">{_esc(c.text)}{delta}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _html_samples(items: list[dict[str, Any]], colors: dict[str, str]) -> str:
    out = []
    for item in items:
        n = max(len(item["answers"]), 1)
        answers = "".join(
            f'<div class="answer"><span class="who" style="color:{colors.get(lab, "#334155")}">{_esc(lab)}'
            f'<span class="badge">{_esc(badge)}</span></span>{_esc(text.strip()) or "<i>(empty)</i>"}</div>'
            for lab, text, badge in item["answers"]
        )
        ref = f'<div class="ref"><b>Reference:</b> {_esc(item["reference"])}</div>' if item.get("reference") else ""
        tags = f'<span class="tags">{_esc(item["tags"])}</span>' if item.get("tags") else ""
        out.append(
            f'<div class="sample"><div class="q">{tags}<b>Prompt:</b> {_esc(item["prompt"])}</div>'
            f'<div class="answers" style="grid-template-columns:repeat({n},minmax(0,1fr))">{answers}</div>{ref}</div>'
        )
    return "".join(out)


def render_html(data: ReportData, sections: list[Section], figs: Figures, generated: str) -> str:
    body = []
    for s in sections:
        parts = [f'<section id="{_esc(s.id)}"><h2>{_esc(s.title)}</h2>']
        for b in s.blocks:
            if isinstance(b, str):
                parts.append(f"<p>{_esc(b)}</p>")
            elif isinstance(b, Table):
                parts.append(_html_table(b))
            elif b[0] == "h3":
                parts.append(f"<h3>{_esc(b[1])}</h3>")
            elif b[0] == "figure":
                data64 = base64.b64encode(figs.pngs[b[1]]).decode()
                parts.append(f'<figure><img alt="{_esc(b[2])}" src="data:image/png;base64,{data64}"><figcaption>{_esc(b[2])}</figcaption></figure>')
            elif b[0] == "cards":
                parts.append('<div class="cards">' + "".join(
                    f'<div class="card {cls}"><div class="k">{_esc(k)}</div><div class="v">{_esc(v)}</div></div>' for k, v, cls in b[1]
                ) + "</div>")
            elif b[0] == "banner":
                parts.append(f'<div class="banner {b[1]}">{_esc(b[2])}</div>')
            elif b[0] == "samples":
                labels = [lab for item in b[1] for lab, _, _ in item["answers"]]
                parts.append(_html_samples(b[1], _model_colors(list(dict.fromkeys(labels)))))
        parts.append("</section>")
        body.append("".join(parts))
    nav = "".join(f'<a href="#{_esc(s.id)}">{_esc(s.title)}</a>' for s in sections)
    missing = "Plots are missing: they need matplotlib, pip install 'affinage[report]'."
    note = "" if figs.available else f'<div class="banner warn">{_esc(missing)}</div>'
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{_esc(data.title)}</title><style>{CSS}</style></head><body>"
        f"<header><div class=\"wrap\"><div><h1>{_esc(data.title)}</h1>"
        f"<div class=\"sub\">{_esc(str(data.source))} · generated {_esc(generated)}</div></div></div></header>"
        f"<nav><div class=\"wrap\">{nav}</div></nav><main><div class=\"wrap\">{note}{''.join(body)}</div></main>"
        "<footer>affinage · every number in this page is read from the run directories named above</footer>"
        "</body></html>\n"
    )


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(data: ReportData, sections: list[Section], generated: str) -> str:
    lines = [f"# {data.title}", "", f"`{data.source}` · generated {generated}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, str):
                lines += [b, ""]
            elif isinstance(b, Table):
                if b.caption:
                    lines += [f"**{b.caption}**", ""]
                lines.append("| " + " | ".join(_md_escape(h) for h in b.headers) + " |")
                lines.append("|" + "|".join("---" for _ in b.headers) + "|")
                for row in b.rows:
                    lines.append("| " + " | ".join(_md_escape(c.text + (f" ({c.delta})" if c.delta else "")) for c in row) + " |")
                lines.append("")
            elif b[0] == "h3":
                lines += [f"### {b[1]}", ""]
            elif b[0] == "figure":
                lines += [f"![{b[2]}](figures/{b[1]}.png)", ""]
            elif b[0] == "cards":
                lines += [f"- **{k}**: {v}" for k, v, _ in b[1]] + [""]
            elif b[0] == "banner":
                lines += [f"> **{'PASSED' if b[1] == 'pass' else 'STOPPED'}**: {b[2]}", ""]
            elif b[0] == "samples":
                for item in b[1]:
                    tags = f" _({item['tags']})_" if item.get("tags") else ""
                    lines += [f"**Prompt**{tags}: {item['prompt']}", ""]
                    if item.get("reference"):
                        lines += [f"> Reference: {_md_escape(item['reference'])}", ""]
                    lines += ["| model | answer |", "|---|---|"]
                    lines += [f"| {_md_escape(lab)} | {_md_escape(text.strip())} |" for lab, text, _ in item["answers"]]
                    lines.append("")
    return "\n".join(lines) + "\n"


def build_report(
    source: str | Path, *, output_dir: str | Path | None = None, title: str | None = None, max_samples: int = 8
) -> Path:
    """Write ``report.html``, ``report.md`` and ``figures/*.png`` for ``source``; return the HTML path."""
    import datetime as _dt

    data = collect(source, title)
    figs = Figures()
    sections = build_sections(data, figs, max_samples)
    out = Path(output_dir) if output_dir else Path(source)
    generated = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out.mkdir(parents=True, exist_ok=True)
    if figs.pngs:
        (out / "figures").mkdir(exist_ok=True)
        for slug, png in figs.pngs.items():
            (out / "figures" / f"{slug}.png").write_bytes(png)
    atomic_write_text(out / "report.md", render_markdown(data, sections, generated))
    return atomic_write_text(out / "report.html", render_html(data, sections, figs, generated))


def run_stage(cfg: ReportConfig) -> Any:
    """Pipeline entry point: the report of the pipeline so far."""
    from affinage.engine.progress import console
    from affinage.pipeline import StageOutput

    out = Path(cfg.output_dir or cfg.source)
    path = build_report(cfg.source, output_dir=out, title=cfg.title, max_samples=cfg.max_samples)
    console.print(f"report: {path}")
    return StageOutput(artifacts={"html": str(path), "markdown": str(out / "report.md")})
