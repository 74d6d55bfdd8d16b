"""Rejection sampling (Llama 2's rejection-sampling fine-tuning, Touvron et al. 2023, Sec. 3.2.3) and
best-of-N at inference.

For each prompt, N answers are sampled with the KV-cache loop (the N answers of a prompt share one
prefill), every answer is scored by the reward sources, and the best one is kept. ``affinage
sample-best CONFIG.yaml`` writes the kept answers as an SFT dataset (``{"messages": [...]}`` rows,
with the reward beside them), ready for ``affinage sft``; :func:`best_of_n` is the same selection
for inference (``affinage generate --best-of N --reward ...``).

Answers cut at the token budget without ending are never kept when ``require_finished`` is on (a
prompt whose N answers all ran out is skipped and counted), since fine-tuning on them would teach
the model to ramble and stop mid-sentence.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from affinage.config import ModelConfig, _check
from affinage.generation.sampling import GenerationOptions
from affinage.recipes.rl_common import PromptDataConfig
from affinage.rewards import RewardsConfig


@dataclass
class BestOfSampling(GenerationOptions):
    """Sampling for best-of-N: several different answers per prompt (defaults in the class, so a
    YAML that sets one key keeps the others)."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    seed: int | None = 42


@dataclass
class SampleBestConfig:
    """Rejection sampling: ``affinage sample-best CONFIG.yaml``."""

    stage: Literal["sample_best"] = "sample_best"
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model that answers (usually the current policy, e.g. runs/quickstart/final)."""
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    reward: RewardsConfig = field(default_factory=RewardsConfig)
    generation: BestOfSampling = field(default_factory=BestOfSampling)
    n: int = 4
    """Answers sampled per prompt; the best one is kept."""
    batch_size: int = 16
    """Sequences decoded at once."""
    require_finished: bool = True
    """Never keep an answer cut at max_new_tokens; prompts without a finished answer are skipped."""
    min_reward: float | None = None
    """Skip prompts whose best answer scores below this."""
    output: str = "runs/sample_best/best.jsonl"
    """The SFT dataset written (JSONL, one conversation per prompt)."""
    all_candidates: str | None = None
    """Also write every answer with its reward here (JSONL), e.g. for inspection."""
    progress: bool = True

    def validate(self) -> None:
        self.reward.validate()
        _check(bool(self.data.train), "data.train", "needs at least one file of prompts, e.g. data.train=[examples/data/helpdesk/train.jsonl]")
        _check(self.data.max_prompt_length >= 1, "data.max_prompt_length", "must be at least 1")
        _check(self.n >= 1, "n", f"must be at least 1, got {self.n}")
        _check(self.batch_size >= 1, "batch_size", "must be at least 1")
        _check(self.generation.num_beams == 1, "generation.num_beams", "must be 1: answers are sampled, not beam-searched")
        _check(self.generation.temperature > 0 or self.n == 1, "generation.temperature",
               f"must be positive to sample {self.n} different answers per prompt (0 gives N copies of the greedy one)")
        _check(bool(self.output) and self.output.endswith(".jsonl"), "output", "must be a .jsonl path")
        try:
            self.generation.validate()
        except Exception as exc:  # GenerationOptions names the option; say where it lives
            raise type(exc)(f"{exc} (config section 'generation')") from None


@dataclass
class BestOfN:
    """The selection for one prompt."""

    best: str | None
    """The kept answer (None when none qualifies)."""
    best_reward: float | None
    texts: list[str]
    rewards: list[float]
    finished: list[bool]


def best_of_n(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    rewards: Any,
    n: int,
    options: GenerationOptions,
    *,
    rows: Sequence[dict[str, Any]] | None = None,
    batch_size: int = 16,
    require_finished: bool = True,
    prompt_ids: Sequence[list[int]] | None = None,
) -> list[BestOfN]:
    """Sample ``n`` answers to each conversation in ``prompts``, score them with ``rewards`` (an
    :class:`affinage.rewards.Rewards`) and keep the best of each; ties go to the earlier sample."""
    from affinage.data.tokenize import encode_prompt
    from affinage.generation.rollout import SamplingParams, decode_ids
    from affinage.generation.sampling import cut_at_stop, stop_token_ids
    from affinage.rewards import Sample

    options.validate()
    ids = list(prompt_ids) if prompt_ids is not None else [encode_prompt(tokenizer, list(p)) for p in prompts]
    eos = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    out = decode_ids(
        model, ids, SamplingParams.from_options(options), stop_token_ids=eos, pad_token_id=pad, n=n,
        batch_size=batch_size, tokenizer=tokenizer,
    )
    eos_set = set(eos)
    texts = []
    for tokens in out.token_ids:
        body = tokens[:-1] if tokens and tokens[-1] in eos_set else tokens
        texts.append(cut_at_stop(tokenizer.decode(body, skip_special_tokens=True), options.stop))
    rows = rows if rows is not None else [{} for _ in prompts]
    samples = [
        Sample(list(prompts[i // n]), texts[i], rows[i // n], out.finished[i]) for i in range(len(texts))
    ]
    scores = rewards(samples).total
    results = []
    for p in range(len(prompts)):
        group = range(p * n, (p + 1) * n)
        candidates = [i for i in group if out.finished[i] or not require_finished]
        best = max(candidates, key=lambda i: (scores[i], -i)) if candidates else None
        results.append(BestOfN(
            best=texts[best] if best is not None else None,
            best_reward=scores[best] if best is not None else None,
            texts=[texts[i] for i in group], rewards=[scores[i] for i in group],
            finished=[out.finished[i] for i in group],
        ))
    return results


def run(cfg: SampleBestConfig) -> Path:
    """Sample, score and keep the best answer of every prompt; write the SFT dataset; return its path."""
    from transformers.utils import logging as hf_logging

    from affinage.data.io import write_jsonl
    from affinage.engine.progress import console, progress_bar
    from affinage.models.loading import load_model, load_tokenizer
    from affinage.recipes.rl_common import load_prompts
    from affinage.rewards import Rewards

    output = Path(cfg.output)
    tokenizer = load_tokenizer(
        cfg.model.name, chat_template=cfg.model.chat_template, revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    hf_logging.disable_progress_bar()
    prompts = load_prompts(cfg.data, tokenizer)
    model = load_model(
        cfg.model.name, dtype=cfg.model.dtype, revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code, attn_implementation=cfg.model.attn_implementation,
    )
    rewards = Rewards(cfg.reward, device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
    console.print(f"[bold]sample-best[/] {prompts.describe()}; {cfg.n} answers each, rewards: "
                  f"{', '.join(name for name, _, _ in rewards.sources)}")

    per_call = max(1, cfg.batch_size // cfg.n) * 4  # prompts per call: a few decode batches
    kept: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []
    firsts, means, bests = [], [], []
    skipped_unfinished = skipped_low = 0
    start = time.perf_counter()
    options = cfg.generation
    with progress_bar("sample-best", len(prompts.items), enabled=cfg.progress) as bar:
        for offset in range(0, len(prompts.items), per_call):
            chunk = prompts.items[offset : offset + per_call]
            # A different seed per chunk: the same seed everywhere would repeat the random stream.
            seeded = dataclasses.replace(options, seed=None if options.seed is None else options.seed + offset)
            results = best_of_n(
                model, tokenizer, [c.messages for c in chunk], rewards, cfg.n, seeded, rows=[c.row for c in chunk],
                batch_size=cfg.batch_size, require_finished=cfg.require_finished, prompt_ids=[c.ids for c in chunk],
            )
            for item, res in zip(chunk, results, strict=True):
                firsts.append(res.rewards[0])
                means.append(sum(res.rewards) / len(res.rewards))
                if cfg.all_candidates:
                    candidates.extend(
                        {"messages": [*item.messages, {"role": "assistant", "content": t}], "reward": r, "finished": f}
                        for t, r, f in zip(res.texts, res.rewards, res.finished, strict=True)
                    )
                if res.best is None:
                    skipped_unfinished += 1
                    continue
                if cfg.min_reward is not None and res.best_reward < cfg.min_reward:
                    skipped_low += 1
                    continue
                bests.append(res.best_reward)
                kept.append({
                    "messages": [*item.messages, {"role": "assistant", "content": res.best}],
                    "reward": res.best_reward, "rewards": res.rewards,
                })
            bar.update(completed=min(offset + per_call, len(prompts.items)))
    write_jsonl(output, kept)
    if cfg.all_candidates:
        write_jsonl(cfg.all_candidates, candidates)
    summary = {
        "prompts": len(prompts.items), "kept": len(kept), "n": cfg.n,
        "skipped_unfinished": skipped_unfinished, "skipped_below_min_reward": skipped_low,
        "reward_single_sample": _mean(firsts), "reward_mean_of_n": _mean(means), "reward_best_of_n": _mean(bests),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (output.parent / f"{output.stem}.summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    console.print(
        f"kept {len(kept)}/{len(prompts.items)} prompts in {output} (mean reward: one sample "
        f"{summary['reward_single_sample']:.3f}, best of {cfg.n} {summary['reward_best_of_n']:.3f}); "
        f"skipped: {skipped_unfinished} with no finished answer, {skipped_low} below min_reward"
    )
    return output


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def load_rewards_from_specs(specs: Sequence[str], *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Rewards from command-line specs: each a reward-model directory or ``module:function``
    (``path.py:function``), optionally ``weight*spec`` (e.g. ``0.5*runs/rm_safety/final``)."""
    from affinage.rewards import Rewards, RewardSourceConfig

    sources = []
    for spec in specs:
        weight, star, rest = spec.partition("*")
        try:
            w = float(weight) if star else 1.0
        except ValueError:
            w, rest = 1.0, spec
        body = rest if star else spec
        is_function = ":" in body and not Path(body).is_dir()
        sources.append(RewardSourceConfig(function=body) if is_function else RewardSourceConfig(model=body))
        sources[-1].weight = w
    return Rewards(RewardsConfig(sources=sources), device=device, dtype=dtype)


def best_of_command(
    model_name: str,
    prompt: str | None,
    input_path: str | None,
    output_path: str | None,
    rewards: Sequence[str],
    n: int,
    options: GenerationOptions,
    *,
    system_prompt: str | None = None,
    batch_size: int = 16,
    dtype: str = "auto",
    chat_template: str | None = None,
    require_finished: bool = False,
) -> list[str]:
    """``affinage best-of``: answer one prompt or a file of prompts with the best of ``n`` samples.

    Rows are written like ``affinage generate`` writes them (the input row plus "completion"), with
    "reward" (the best answer's) and "rewards" (all n). Returns the answers.
    """
    from affinage.errors import ConfigError
    from affinage.generation.cli import load_model_and_tokenizer, read_prompts

    options.validate()
    if (prompt is None) == (input_path is None):
        raise ConfigError("give either a prompt (-p) or an input file (--input prompts.jsonl), not both and not neither")
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    if not rewards:
        raise ConfigError("--reward is needed: a reward-model directory or module:function (repeatable)")
    if n > 1 and options.temperature == 0:
        raise ConfigError(f"best of {n} needs sampling: set --temperature above 0, e.g. 0.8")
    if prompt is not None:
        rows, prompts = [{"prompt": prompt}], [prompt]
    else:
        rows, prompts = read_prompts(input_path)
    conversations = []
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        conversations.append(messages)
    model, tokenizer = load_model_and_tokenizer(model_name, dtype, chat_template)
    scorer = load_rewards_from_specs(rewards, device=next(model.parameters()).device)
    results = best_of_n(
        model, tokenizer, conversations, scorer, n, options, rows=rows, batch_size=batch_size,
        require_finished=require_finished,
    )
    answers = [r.best if r.best is not None else "" for r in results]
    out_rows = [
        {**row, "completion": a, "reward": r.best_reward, "rewards": r.rewards}
        for row, a, r in zip(rows, answers, results, strict=True)
    ]
    if prompt is not None:
        print(answers[0])
    if output_path is not None:
        from affinage.data.io import write_jsonl

        write_jsonl(output_path, out_rows)
    elif prompt is None:
        for row in out_rows:
            print(json.dumps(row, ensure_ascii=False, default=str))
    return answers
