"""Training verbs: sft (and `defaults`, which prints a stage's default config)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affinage.cli import OverridesArg, app


@app.command()
def sft(
    config: Annotated[Path, typer.Argument(help="YAML config (see `affinage defaults sft`).")],
    overrides: OverridesArg = None,
) -> None:
    """Supervised fine-tuning: full, LoRA, DoRA, prompt tuning or chosen layers."""
    from affinage.config import SFTConfig, load_config
    from affinage.recipes.sft import train

    cfg = load_config(SFTConfig, config, overrides or [])
    train(cfg)


@app.command()
def defaults(
    stage: Annotated[str, typer.Argument(help="Which stage's config, e.g. sft.")] = "sft",
) -> None:
    """Print the default config of a stage as YAML, every key with its default value."""
    from affinage.config import commented_yaml, stage_config_class

    typer.echo(commented_yaml(stage_config_class(stage)()))
