"""Evaluation verbs: eval, report, pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affinage.cli import OverridesArg, app


@app.command("eval")
def eval_(
    config: Annotated[Path, typer.Argument(help="YAML config (see `affinage defaults eval` and examples/eval.yaml).")],
    overrides: OverridesArg = None,
) -> None:
    """Evaluate models side by side: perplexity, exact match, ROUGE-L, BLEU, chrF, multiple choice, win rate, LLM judge, lm-eval."""
    from affinage.config import load_config
    from affinage.evaluation.evaluate import EvalConfig, run_eval

    run_eval(load_config(EvalConfig, config, overrides or []))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/sft) or a pipeline directory (runs/NAME).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write report.html/.md (default: RUN_DIR).")] = None,
    title: Annotated[str | None, typer.Option(help="Title of the report.")] = None,
    max_samples: Annotated[int, typer.Option(help="Sample answers shown side by side per set.")] = 8,
) -> None:
    """Write a self-contained HTML report (and Markdown) with tables and plots of a run or pipeline."""
    from affinage.engine.progress import console
    from affinage.evaluation.report import build_report

    path = build_report(run_dir, output_dir=output, title=title, max_samples=max_samples)
    console.print(f"report: {path}")


@app.command()
def pipeline(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML (see examples/pipeline_quickstart.yaml).")],
    overrides: OverridesArg = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run every stage, even unchanged ones.")] = False,
    rerun: Annotated[list[str] | None, typer.Option("--rerun", help="Re-run this stage (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would run or be skipped, run nothing.")] = False,
) -> None:
    """Run stages in order (sft, dpo, eval, report...): skip unchanged ones, resume a failed one, stop at gates."""
    from affinage.pipeline import load_pipeline, print_summary, run_pipeline

    cfg = load_pipeline(config, overrides or [])
    run = run_pipeline(cfg, force=force, rerun=rerun or [], dry_run=dry_run, pipeline_file=str(config))
    print_summary(run)
