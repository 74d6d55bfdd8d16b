"""Safety verbs: ``safety classify | train-classifier | eval | import``, ``redteam``, ``constitutional``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affinage.cli import OverridesArg, app

safety_app = typer.Typer(
    name="safety",
    help="Safety classifiers, guardrail evaluation and data importers.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(safety_app, name="safety")


@safety_app.command("classify")
def classify(
    model: Annotated[str, typer.Argument(help="A chat model (self-reflection) or a trained classifier's final/ directory.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="JSONL/CSV rows: prompt (+ response) or messages; optional label, category, language.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the judged rows (JSONL); default: standard output.")] = None,
    kind: Annotated[str, typer.Option(help="auto, self_reflection or trained.")] = "auto",
    threshold: Annotated[float | None, typer.Option(help="Score from which a text is unsafe (default: 0.5, or the trained one).")] = None,
    judge_format: Annotated[str, typer.Option(help="Self-reflection prompt: affinage, or llama_guard for Llama Guard models.")] = "affinage",
    taxonomy: Annotated[Path | None, typer.Option(help="Taxonomy YAML file (default: the built-in one).")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the metrics (labelled input) as JSON here.")] = None,
    batch_size: Annotated[int, typer.Option(help="Conversations per forward pass.")] = 8,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    chat_template: Annotated[str | None, typer.Option(help="Named template or Jinja string for the judge.")] = None,
) -> None:
    """Judge prompts and answers as safe/unsafe (with categories); report P/R/F1/AUPRC on labelled rows."""
    from affinage.errors import ConfigError
    from affinage.safety.classifiers import classify_file

    if kind not in ("auto", "self_reflection", "trained"):
        raise ConfigError(f"--kind must be auto, self_reflection or trained, got {kind!r}")
    if judge_format not in ("affinage", "llama_guard"):
        raise ConfigError(f"--judge-format must be affinage or llama_guard, got {judge_format!r}")
    classify_file(
        model, str(input), str(output) if output else None, kind=kind, threshold=threshold,  # type: ignore[arg-type]
        judge_format=judge_format, taxonomy_file=str(taxonomy) if taxonomy else None,  # type: ignore[arg-type]
        batch_size=batch_size, dtype=dtype, chat_template=chat_template, report_path=str(report) if report else None,
    )


@safety_app.command("train-classifier")
def train_classifier(
    config: Annotated[Path, typer.Argument(help="YAML config (see `affinage defaults safety_classifier`).")],
    overrides: OverridesArg = None,
) -> None:
    """Fine-tune a safety classifier (head, LoRA or full) and choose its threshold on validation data."""
    from affinage.config import load_config
    from affinage.safety.training import ClassifierTrainConfig
    from affinage.safety.training import train_classifier as run

    run(load_config(ClassifierTrainConfig, config, overrides or []))


@safety_app.command("eval")
def eval_(
    config: Annotated[Path, typer.Argument(help="YAML config (see `affinage defaults safety_eval`).")],
    overrides: OverridesArg = None,
) -> None:
    """Violation rate, false-refusal rate, helpfulness; sweep the guard and draw the Pareto front."""
    from affinage.config import load_config
    from affinage.safety.evaluate import SafetyEvalConfig, run_safety_eval

    run_safety_eval(load_config(SafetyEvalConfig, config, overrides or []))


@safety_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="The dataset file (CSV or JSONL).")],
    format: Annotated[str, typer.Option("--format", "-f", help="xstest, harmbench, advbench, jailbreakbench or llamaguard.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the rows (JSONL).")],
    label: Annotated[str | None, typer.Option(help="Force every row's label (safe or unsafe), e.g. for benign sets.")] = None,
) -> None:
    """Convert a public safety dataset into the project's prompt/label/category rows."""
    from rich.console import Console

    from affinage.data.io import write_jsonl
    from affinage.safety.importers import import_rows

    rows = import_rows(file, format, label=label)
    n = write_jsonl(output, rows)
    Console(stderr=True).print(f"wrote {n} rows to {output}")


@app.command()
def redteam(
    config: Annotated[Path, typer.Argument(help="YAML config (see `affinage defaults redteam`).")],
    overrides: OverridesArg = None,
) -> None:
    """Run attack transformations against a model (with or without guard); ASR per technique/category/language."""
    from affinage.config import load_config
    from affinage.safety.redteam import RedTeamConfig, run_redteam

    run_redteam(load_config(RedTeamConfig, config, overrides or []))


@app.command()
def constitutional(
    config: Annotated[Path, typer.Argument(help="YAML config (see `affinage defaults constitutional`).")],
    overrides: OverridesArg = None,
) -> None:
    """Constitutional AI: answer, critique against a principle, revise; write SFT and preference data."""
    from affinage.config import load_config
    from affinage.safety.constitution import ConstitutionConfig, run_constitutional

    run_constitutional(load_config(ConstitutionConfig, config, overrides or []))
