"""Preference verbs: ``rm`` (reward models: ``rm train`` and ``rm score``) and ``dpo``.

``affinage rm CONFIG.yaml [overrides]`` is short for ``affinage rm train CONFIG.yaml [overrides]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from affinage.cli import OverridesArg, app


class _TrainByDefault(TyperGroup):
    """A group whose first argument, when it is not a subcommand, is the config of ``train``."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["train", *args]
        return super().resolve_command(ctx, args)


rm_app = typer.Typer(
    cls=_TrainByDefault,
    name="rm",
    help="Reward models: `rm CONFIG.yaml` (or `rm train CONFIG.yaml`) trains one, `rm score MODEL` scores answers.",
    no_args_is_help=True,
)
app.add_typer(rm_app)


@rm_app.command("train")
def rm_train(
    config: Annotated[Path, typer.Argument(help="YAML config with stage: rm (see `affinage defaults rm`).")],
    overrides: OverridesArg = None,
) -> None:
    """Train a reward model on preference pairs (Bradley-Terry, optional Llama 2 margin)."""
    from affinage.config import load_config
    from affinage.recipes.reward import RewardConfig, train

    train(load_config(RewardConfig, config, overrides or []))


@rm_app.command("score")
def rm_score(
    model: Annotated[str, typer.Argument(help="A reward model directory (e.g. runs/rm/final).")],
    input: Annotated[Path, typer.Option("--input", "-i", help="JSONL/JSON/CSV/Parquet: prompt + completion "
                                        "(or answer/response), messages, or prompt/chosen/rejected rows.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the scored rows (JSONL).")],
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    max_length: Annotated[int, typer.Option(help="Tokens of prompt + answer; use the training value.")] = 1024,
    system: Annotated[str | None, typer.Option(help="System prompt, as in training (data.system_prompt).")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
) -> None:
    """Score answers with a reward model into a JSONL (a `reward` field, or chosen/rejected rewards for pairs)."""
    from affinage.engine.progress import console
    from affinage.recipes.reward import score_file

    summary = score_file(model, str(input), str(output), batch_size=batch_size, max_length=max_length,
                         system_prompt=system, dtype=dtype)
    mean = summary["mean_reward"]
    text = f"scored {summary['scored']} answers of {summary['rows']} rows into {output}"
    text += f"; mean reward {mean:.4f}" if mean is not None else ""
    if summary["skipped"]:
        text += f"; {summary['skipped']} skipped (no answer token within --max-length)"
    if "pair_accuracy" in summary:
        text += f"; pairs ranked right: {summary['pair_accuracy']:.3f}"
    console.print(text)


@app.command()
def dpo(
    config: Annotated[Path, typer.Argument(help="YAML config with stage: dpo (see `affinage defaults dpo`).")],
    overrides: OverridesArg = None,
) -> None:
    """Preference optimisation: loss=dpo|cdpo|ipo|hinge|robust|simpo|orpo|kto|rpo."""
    from affinage.config import load_config
    from affinage.recipes.dpo import DPOConfig, train

    train(load_config(DPOConfig, config, overrides or []))
