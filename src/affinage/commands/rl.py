"""Online RL verbs: ppo, grpo (and RLOO), sample-best (rejection sampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affinage.cli import OverridesArg, app


@app.command()
def ppo(
    config: Annotated[Path, typer.Argument(help="YAML config (see `affinage defaults ppo`).")],
    overrides: OverridesArg = None,
) -> None:
    """RLHF with PPO against reward models or functions, a KL penalty to the reference, GAE."""
    from affinage.config import load_config
    from affinage.recipes.ppo import PPOConfig, train

    train(load_config(PPOConfig, config, overrides or []))


@app.command()
def grpo(
    config: Annotated[Path, typer.Argument(help="YAML config (see `affinage defaults grpo`).")],
    overrides: OverridesArg = None,
) -> None:
    """Critic-free RL: GRPO (group-normalised advantages) or RLOO (advantage=rloo)."""
    from affinage.config import load_config
    from affinage.recipes.grpo import GRPOConfig, train

    train(load_config(GRPOConfig, config, overrides or []))


@app.command("sample-best")
def sample_best(
    config: Annotated[Path, typer.Argument(help="YAML config (see `affinage defaults sample_best`).")],
    overrides: OverridesArg = None,
) -> None:
    """Rejection sampling: N answers per prompt, the best by reward kept as an SFT dataset."""
    from affinage.config import load_config
    from affinage.recipes.sample_best import SampleBestConfig, run

    run(load_config(SampleBestConfig, config, overrides or []))


@app.command("best-of")
def best_of(
    model: Annotated[str, typer.Argument(help="Alias, local directory, .gguf file, hub id or a run's final/.")],
    reward: Annotated[list[str], typer.Option("--reward", "-r", help="Reward-model dir or module:function; 'w*spec' weighs it (repeatable).")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="One prompt to answer.")] = None,
    input: Annotated[Path | None, typer.Option("--input", "-i", help="JSONL with 'prompt' or 'messages' per row.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write answers (JSONL).")] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="Answers sampled per prompt; the best is kept.")] = 4,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (> 0).")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0: off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold (1: off).")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop strings (repeatable).")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences decoded at once.")] = 16,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    chat_template: Annotated[str | None, typer.Option(help="Named template or Jinja string for base models.")] = None,
    require_finished: Annotated[bool, typer.Option(help="Never pick an answer cut at max_new_tokens.")] = False,
) -> None:
    """Best-of-N at inference: sample N answers per prompt and keep the one the reward prefers."""
    from affinage.generation.sampling import GenerationOptions
    from affinage.recipes.sample_best import best_of_command

    options = GenerationOptions(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        stop=list(stop or []),
    )
    best_of_command(
        model, prompt, str(input) if input else None, str(output) if output else None, reward, n, options,
        system_prompt=system, batch_size=batch_size, dtype=dtype, chat_template=chat_template,
        require_finished=require_finished,
    )
