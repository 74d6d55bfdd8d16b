"""Using a model: generate and chat."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affinage.cli import app


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
    guard: Annotated[Path | None, typer.Option(help="Guard YAML (examples/guard.yaml): safety system prompt, input/output moderation.")] = None,
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
        system, batch_size, dtype, chat_template, str(guard) if guard else None,
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
    guard: Annotated[Path | None, typer.Option(help="Guard YAML (examples/guard.yaml): safety system prompt, input/output moderation.")] = None,
) -> None:
    """Chat with a model in the terminal; answers stream as they are generated."""
    from affinage.generation.cli import chat_command
    from affinage.generation.sampling import GenerationOptions

    options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    chat_command(model, system, options, dtype, chat_template, str(guard) if guard else None)
