"""Data verbs: ``affinage data curate CONFIG`` and ``affinage doctor MODEL DATA``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affinage.cli import OverridesArg, app

data_app = typer.Typer(
    name="data",
    help="Prepare training data: curate sources into a clean, mixed, split dataset with a data card.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command()
def curate(
    config: Annotated[Path, typer.Argument(help="YAML config with stage: curate (see `affinage defaults curate`).")],
    overrides: OverridesArg = None,
) -> None:
    """Clean, filter, scrub, deduplicate, decontaminate, mix and split data sources; write a data card."""
    from affinage.config import load_config
    from affinage.curation import CurateConfig, curate
    from affinage.engine.progress import console

    cfg = load_config(CurateConfig, config, overrides or [])
    result = curate(cfg, console=console)
    stats = result.stats
    console.print(
        f"[bold]curated[/] {stats.rows_read:,} rows -> {stats.train_rows:,} train + {stats.validation_rows:,} "
        f"validation in {stats.seconds:.1f} s; wrote {result.output_dir}"
    )
    for step in stats.steps:
        if step.dropped or step.changes:
            removed = f"removed {step.dropped.total():,}" if step.dropped else ""
            changed = ", ".join(f"{k} {n:,}" for k, n in step.changes.most_common())
            console.print(f"  {step.name}: {removed}{'; ' if removed and changed else ''}{changed}")
    for warning in stats.warnings:
        console.print(f"[yellow]warning: {warning}[/]")
    if "card.html" in stats.outputs:
        console.print(f"data card: {stats.outputs['card.md']} and {stats.outputs['card.html']}")


@app.command()
def doctor(
    model: Annotated[str, typer.Argument(help="Model (alias, local folder, .gguf, hub id), or an sft/dpo YAML config.")],
    data: Annotated[list[str] | None, typer.Argument(help="Data files to check (default: the config's data.train).")] = None,
    chat_template: Annotated[str | None, typer.Option(help="Named template or Jinja string, as model.chat_template.")] = None,
    max_length: Annotated[int, typer.Option(help="Training max_length, as data.max_length.")] = 1024,
    train_on_prompt: Annotated[bool, typer.Option(help="As data.train_on_prompt.")] = False,
    system_prompt: Annotated[str | None, typer.Option(help="As data.system_prompt.")] = None,
    data_format: Annotated[str, typer.Option("--format", help="As data.format.")] = "auto",
    rows: Annotated[int, typer.Option(help="Check at most this many rows.")] = 200,
    examples: Annotated[int, typer.Option(help="Show this many examples with their loss mask.")] = 2,
) -> None:
    """Check a model's chat template and loss mask on your data before training; exits 1 on a fatal problem."""
    from affinage.doctor import check_config_model, doctor
    from affinage.engine.progress import console

    options = {
        "chat_template": chat_template, "max_length": max_length, "train_on_prompt": train_on_prompt,
        "system_prompt": system_prompt, "data_format": data_format,
    }
    if model.endswith((".yaml", ".yml")) and Path(model).is_file():
        from affinage.config import config_class_for, load_config

        model, config_data, options = check_config_model(load_config(config_class_for(model), model))
        data = data or config_data
    report, tokenizer = doctor(model, list(data or []), max_rows=rows, show=examples, **options)
    report.print(console, tokenizer)
    if report.fatal:
        raise typer.Exit(1)
