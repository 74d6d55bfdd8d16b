"""The ``affinage`` command line: one verb per stage.

Heavy imports (torch, transformers) happen inside the verbs, so ``affinage --help`` is instant.
Errors the user can fix (:class:`~affinage.errors.AffinageError`) are printed as one clear message
without a stack trace, and the process exits with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from affinage import __version__
from affinage.errors import AffinageError

app = typer.Typer(
    name="affinage",
    help="Post-train causal language models: fine-tune, align, check and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="Config overrides as dotted key=value, e.g. train.lr=1e-4 run.output_dir=runs/x")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"affinage {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """affinage: data -> SFT -> preferences -> RL -> safety -> evaluation -> serving."""


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
    stage: Annotated[str, typer.Argument(help="Which stage's config: sft.")] = "sft",
) -> None:
    """Print the default config of a stage as YAML, every key with its default value."""
    from affinage.config import SFTConfig, dump_yaml

    classes = {"sft": SFTConfig}
    if stage not in classes:
        raise AffinageError(f"unknown stage '{stage}'; choose one of {', '.join(classes)}")
    typer.echo(dump_yaml(classes[stage]()))


@app.command()
def generate(
    model: Annotated[str, typer.Argument(help="Alias, local directory, .gguf file, hub id or a run's final/.")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="One prompt to answer.")] = None,
    input: Annotated[Path | None, typer.Option("--input", "-i", help="JSONL with 'prompt' or 'messages' per row.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write answers (JSONL).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0: off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold (1: off).")] = 1.0,
    num_beams: Annotated[int, typer.Option(help="Beam search width (1: off).")] = 1,
    repetition_penalty: Annotated[float, typer.Option(help="Penalty on repeated tokens (1: off).")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop strings (repeatable).")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch.")] = 16,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    chat_template: Annotated[str | None, typer.Option(help="Named template or Jinja string for base models.")] = None,
) -> None:
    """Answer one prompt or a JSONL file of prompts (batched; greedy, sampling or beam search)."""
    from affinage.generation.cli import generate_command
    from affinage.generation.sampling import GenerationOptions

    options = GenerationOptions(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        num_beams=num_beams, repetition_penalty=repetition_penalty, seed=seed, stop=list(stop or []),
    )
    generate_command(
        model, prompt, str(input) if input else None, str(output) if output else None, options,
        system, batch_size, dtype, chat_template,
    )


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="Alias, local directory, .gguf file, hub id or a run's final/.")],
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = 0.9,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    chat_template: Annotated[str | None, typer.Option(help="Named template or Jinja string for base models.")] = None,
) -> None:
    """Chat with a model in the terminal; answers stream as they are generated."""
    from affinage.generation.cli import chat_command
    from affinage.generation.sampling import GenerationOptions

    options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    chat_command(model, system, options, dtype, chat_template)


def main() -> None:
    try:
        app()
    except AffinageError as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
