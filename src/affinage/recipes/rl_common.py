"""What the online RL recipes (PPO, GRPO/RLOO) share: prompts, rollouts, the training forward pass.

One RL step = one rollout (sample answers to a batch of prompts with the current policy, score
them) followed by optimizer steps on it. Everything here is shared so the two recipes cannot
drift apart:

* prompts: rows with "prompt" or "messages" (a trailing assistant turn, a reference answer, is
  dropped), rendered with the policy's chat template; the whole row stays available to reward
  functions (e.g. a reference answer for a verifiable task, Llama 2's "unsafe" tag);
* rollouts: :func:`affinage.generation.rollout.decode_ids`, seeded from the step number, so a
  resumed run samples exactly what an uninterrupted run would have;
* the training forward pass: each sequence is its prompt padded on the left followed by its
  completion padded on the right, ``[B, P + T]``, so completion token t sits at column P + t in
  every row and the logits at columns P - 1 ... P + T - 2 predict it (``logits_to_keep = T + 1``).
  The log-probabilities the ratio pi/pi_old uses are computed by this same forward pass, before
  the first update ("old") and during training ("new"): sampling numerics never enter the ratio,
  which is exactly 1 at the first minibatch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from affinage.config import AdapterConfig, RunConfig, Scheduler, TrainConfig, _check
from affinage.errors import ConfigError, DataError
from affinage.losses.rl import entropy_from_logits, token_logprobs

Message = dict[str, str]


# ----------------------------------------------------------------------------------------------
# Config sections
# ----------------------------------------------------------------------------------------------


@dataclass
class PromptDataConfig:
    """The prompts the policy answers during RL."""

    train: list[str] = field(default_factory=list)
    """Files (JSONL, JSON, CSV, Parquet) whose rows hold "prompt" or "messages"; other columns
    reach reward functions as ``row``."""
    system_prompt: str | None = None
    """Added as the first message of prompts that have none."""
    max_prompt_length: int = 512
    """Prompts longer than this (in tokens, rendered) are skipped and counted."""
    max_examples: int | None = None


@dataclass
class RolloutConfig:
    """How answers are sampled at each RL step."""

    prompts_per_step: int = 8
    """Prompts per RL step, over all processes (each takes an equal share)."""
    samples_per_prompt: int = 1
    """Answers sampled per prompt (GRPO/RLOO: the group size, at least 2)."""
    max_new_tokens: int = 128
    temperature: float = 1.0
    """Sampling temperature; log-probabilities are those of the same softened distribution."""
    top_k: int = 0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    """Stop strings; an answer stopped by one counts as finished."""
    batch_size: int = 16
    """Sequences decoded at once."""
    log_samples: int = 2
    """Samples per step written to rollouts.jsonl (prompt, answer, reward)."""
    engine: Literal["affinage", "vllm"] = "affinage"
    """Who samples: the built-in KV-cache loop, or vLLM colocated on the GPU (``affinage[vllm]``)."""
    vllm_gpu_memory_utilization: float = 0.3
    """engine=vllm: the share of GPU memory vLLM may use (training uses the rest)."""


@dataclass
class RLTrainConfig(TrainConfig):
    """Optimisation for RL: one step is one rollout; a small constant learning rate by default.

    (The defaults live in the class, not in the parent's default_factory: a YAML that sets one key
    of a section rebuilds the section from its class defaults.)"""

    lr: float = 1e-5
    scheduler: Scheduler = "constant"
    max_steps: int | None = 100
    """RL steps (rollouts) to run; null: ``epochs`` passes over the prompts."""


@dataclass
class GroupRolloutConfig(RolloutConfig):
    """Rollouts of GRPO/RLOO: a group of answers per prompt."""

    samples_per_prompt: int = 4


def validate_rl_sections(
    train: TrainConfig, run: RunConfig, adapter: AdapterConfig, data: PromptDataConfig, rollout: RolloutConfig
) -> None:
    t, r, a, d, g = train, run, adapter, data, rollout
    _check(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
    _check(t.batch_size >= 1, "train.batch_size", f"must be at least 1 (sequences per micro-batch), got {t.batch_size}")
    _check(t.grad_accum == 1, "train.grad_accum",
           "must be 1 in RL: each minibatch is split into micro-batches of train.batch_size sequences "
           "automatically; set rl.minibatches for more optimizer steps per rollout")
    _check(t.epochs > 0 or t.max_steps, "train.epochs", "must be positive (or set train.max_steps)")
    _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be at least 1 (RL steps = rollouts)")
    _check(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
    _check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    _check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
    _check(len(t.adam_betas) == 2, "train.adam_betas", "must hold two numbers, e.g. [0.9, 0.999]")
    _check(t.max_grad_norm is None or t.max_grad_norm > 0, "train.max_grad_norm", "must be positive or null")
    _check(bool(d.train), "data.train", "needs at least one file of prompts, e.g. data.train=[examples/data/helpdesk/train.jsonl]")
    _check(d.max_prompt_length >= 1, "data.max_prompt_length", "must be at least 1")
    _check(d.max_examples is None or d.max_examples >= 1, "data.max_examples", "must be at least 1 or null")
    _check(a.method in ("full", "lora", "dora", "freeze"), "adapter.method",
           f"= {a.method!r} is not supported for RL (soft prompts cannot be sampled with the KV-cache loop); "
           "use full, lora, dora or freeze")
    _check(a.dropout == 0, "adapter.dropout",
           f"must be 0 for RL, got {a.dropout}: dropout makes pi/pi_old differ from 1 before any update")
    _check(a.r >= 1, "adapter.r", "must be at least 1")
    _check(a.method != "freeze" or bool(a.trainable), "adapter.trainable",
           "method 'freeze' needs patterns of the parameters to train, e.g. ['layers\\.2[89]\\.', 'norm']")
    _check(g.prompts_per_step >= 1, "rollout.prompts_per_step", "must be at least 1")
    _check(g.samples_per_prompt >= 1, "rollout.samples_per_prompt", "must be at least 1")
    _check(g.max_new_tokens >= 1, "rollout.max_new_tokens", "must be at least 1")
    _check(g.temperature > 0, "rollout.temperature",
           f"must be positive for RL (sampling explores; 0 would be greedy), got {g.temperature}")
    _check(g.top_k >= 0, "rollout.top_k", "must be >= 0 (0 = no limit)")
    _check(0 < g.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    _check(all(isinstance(s, str) and s for s in g.stop), "rollout.stop", "must be a list of non-empty strings")
    _check(g.batch_size >= 1, "rollout.batch_size", "must be at least 1")
    _check(g.log_samples >= 0, "rollout.log_samples", "must be >= 0")
    _check(0 < g.vllm_gpu_memory_utilization < 1, "rollout.vllm_gpu_memory_utilization", "must be in (0, 1)")
    _check(r.keep_last >= 1, "run.keep_last", "must be at least 1")
    _check(r.log_every >= 1, "run.log_every", "must be at least 1")
    _check(r.save_every is None or r.save_every >= 1, "run.save_every", "must be at least 1 or null")
    _check(r.eval_every is None, "run.eval_every",
           "is not used by RL recipes (every step logs its rollout's rewards); leave it null")


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------


@dataclass
class PromptItem:
    messages: list[Message]
    """The conversation to answer (system prompt included)."""
    ids: list[int]
    """Its tokens with the assistant header (what the policy continues)."""
    row: dict[str, Any]


@dataclass
class PromptData:
    items: list[PromptItem]
    skipped_long: int = 0
    files: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lengths = sorted(len(p.ids) for p in self.items)
        median = lengths[len(lengths) // 2] if lengths else 0
        text = f"{len(self.items)} prompts from {', '.join(self.files)} (median {median} tokens)"
        if self.skipped_long:
            text += f"; {self.skipped_long} skipped, longer than data.max_prompt_length"
        return text


def load_prompts(cfg: PromptDataConfig, tokenizer: Any) -> PromptData:
    """Read, render and tokenise every prompt; a malformed row raises :class:`DataError` naming it."""
    from affinage.data.io import read_rows
    from affinage.data.tokenize import encode_prompt
    from affinage.generation.cli import row_prompt

    data = PromptData(items=[], files=list(cfg.train))
    for path in cfg.train:
        for number, row in read_rows(path):
            where = f"{path}, row {number}"
            prompt = row_prompt(row, where)
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            if cfg.system_prompt and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": cfg.system_prompt}, *messages]
            ids = encode_prompt(tokenizer, messages)
            if len(ids) > cfg.max_prompt_length:
                data.skipped_long += 1
                continue
            data.items.append(PromptItem(messages=messages, ids=ids, row=row))
            if cfg.max_examples is not None and len(data.items) >= cfg.max_examples:
                return data
    if not data.items:
        raise DataError(
            f"no usable prompt in {', '.join(cfg.train)}"
            + (f" ({data.skipped_long} longer than data.max_prompt_length)" if data.skipped_long else "")
        )
    return data


# ----------------------------------------------------------------------------------------------
# Rollouts
# ----------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """The samples of one RL step on this process: ``samples_per_prompt`` consecutive per prompt."""

    prompt_index: list[int]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]
    decode_seconds: float
    new_tokens: int

    def __len__(self) -> int:
        return len(self.completion_ids)


def step_seed(seed: int, step: int, rank: int, world: int) -> int:
    """The sampling seed of one process at one RL step (distinct per step and per process)."""
    return (seed * 1_000_003 + step * world + rank) % (2**63)


def make_rollout_engine(cfg: RolloutConfig, model_name: str, dtype: torch.dtype, seed: int) -> Any:
    """``None`` for the built-in loop; a colocated :class:`~affinage.generation.vllm_engine.VLLMRollouts`
    for ``rollout.engine: vllm``."""
    if cfg.engine != "vllm":
        return None
    from affinage.generation.vllm_engine import VLLMRollouts
    from affinage.models.loading import resolve_model_path

    return VLLMRollouts(resolve_model_path(model_name), dtype=dtype,
                        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, seed=seed)


def generate_rollout(
    policy: Any,
    tokenizer: Any,
    items: Sequence[PromptItem],
    indices: Sequence[int],
    cfg: RolloutConfig,
    *,
    seed: int,
    engine: Any = None,
) -> Rollout:
    """Sample ``cfg.samples_per_prompt`` answers to each prompt ``items[i]`` for i in ``indices``
    (with ``engine``, a vLLM engine, after copying the policy's weights into it)."""
    from affinage.generation.rollout import SamplingParams, decode_ids, fast_decode_supported
    from affinage.generation.sampling import cut_at_stop, stop_token_ids

    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        seed=seed, stop=tuple(cfg.stop),
    )
    eos = stop_token_ids(policy, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    n = cfg.samples_per_prompt
    prompts = [items[i].ids for i in indices]
    if engine is not None:
        engine.load_policy(policy)
        out = engine.decode(prompts, params, n=n, stop_token_ids=eos)
    else:
        if (reason := fast_decode_supported(policy)) is not None:
            raise ConfigError(f"RL rollouts need the KV-cache decode loop, which cannot run this model: {reason}")
        out = decode_ids(
            policy, prompts, params, stop_token_ids=eos, pad_token_id=pad, n=n, batch_size=cfg.batch_size,
            tokenizer=tokenizer,
        )
    eos_set = set(eos)
    texts = []
    for ids in out.token_ids:
        body = ids[:-1] if ids and ids[-1] in eos_set else ids
        texts.append(cut_at_stop(tokenizer.decode(body, skip_special_tokens=True), cfg.stop))
    return Rollout(
        prompt_index=[i for i in indices for _ in range(n)],
        prompt_ids=[items[i].ids for i in indices for _ in range(n)],
        completion_ids=out.token_ids,
        texts=texts,
        finished=out.finished,
        decode_seconds=out.decode_seconds,
        new_tokens=out.new_tokens,
    )


# ----------------------------------------------------------------------------------------------
# The training forward pass
# ----------------------------------------------------------------------------------------------


def collate_sequences(
    prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int, device: Any
) -> dict[str, torch.Tensor]:
    """Prompts left-padded to width P, completions right-padded to width T (at least 1).

    Returns input_ids, attention_mask, position_ids [B, P + T], completions and completion_mask [B, T].
    """
    width = max(len(p) for p in prompt_ids)
    steps = max(1, max(len(c) for c in completion_ids))
    batch = len(prompt_ids)
    input_ids = torch.full((batch, width + steps), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width + steps), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        input_ids[i, width - len(p) : width] = torch.tensor(list(p), dtype=torch.long)
        attention_mask[i, width - len(p) : width] = 1
        if c:
            input_ids[i, width : width + len(c)] = torch.tensor(list(c), dtype=torch.long)
            attention_mask[i, width : width + len(c)] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "position_ids": position_ids.to(device),
        "completions": input_ids[:, width:].to(device),
        "completion_mask": attention_mask[:, width:].to(device),
    }


class ValueModel(torch.nn.Module):
    """A critic: a transformer trunk and a linear head giving one value per position.

    Built from a reward model (``AutoModelForSequenceClassification``: its trunk and ``score``
    head, so values start as the reward model's per-position scores, as in InstructGPT) or from a
    causal LM (its trunk and a new zero-initialised head).
    """

    def __init__(self, trunk: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # [B, L, H]
        return self.head(hidden).squeeze(-1).float()  # [B, L]


def load_value_model(name: str, dtype: torch.dtype) -> ValueModel:
    """A :class:`ValueModel` from a reward-model directory or any causal LM (alias, dir, hub id)."""
    config_file = Path(name) / "config.json"
    architectures: list[str] = []
    if config_file.is_file():
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(name, dtype=dtype)
        if model.config.num_labels != 1:
            raise ConfigError(f"value.model {name} has {model.config.num_labels} labels; a value model needs 1")
        return ValueModel(getattr(model, model.base_model_prefix), model.score)
    from affinage.models.loading import load_model

    lm = load_model(name, dtype=dtype)
    head = torch.nn.Linear(lm.config.hidden_size, 1, bias=False, dtype=dtype)
    torch.nn.init.zeros_(head.weight)
    return ValueModel(lm.get_decoder(), head)


class PolicyWithValue(torch.nn.Module):
    """The trained modules in one container, so one DDP wrapper, one optimizer and one checkpoint
    cover them: the policy, and for PPO a separate critic or a value head on the policy's last
    hidden states.

    ``forward`` returns, for the completion tokens of a batch from :func:`collate_sequences`,
    their log-probabilities under the policy at ``temperature`` [B, T], the entropy of the
    policy's distribution at each position [B, T] (when asked) and the values V(s_t) [B, T] (when a
    critic or head exists and values are asked). Each is read at the position that predicts token t.
    """

    def __init__(self, policy: torch.nn.Module, critic: ValueModel | None = None, value_head: torch.nn.Linear | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.value_head = value_head

    @property
    def has_values(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def forward(
        self, batch: dict[str, torch.Tensor], temperature: float, *, with_entropy: bool = False, with_values: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        steps = batch["completions"].shape[1]
        want_hidden = with_values and self.value_head is not None
        out = self.policy(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
            logits_to_keep=steps + 1, use_cache=False, output_hidden_states=want_hidden,
        )
        logits = out.logits[:, :-1].float() / temperature  # [B, T, V]: position P-1+t predicts token t
        logprobs = token_logprobs(logits, batch["completions"])
        entropy = entropy_from_logits(logits) if with_entropy else None
        values = None
        if with_values and self.value_head is not None:
            hidden = out.hidden_states[-1][:, -steps - 1 : -1]  # [B, T, H]
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        elif with_values and self.critic is not None:
            values = self.critic(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[:, -steps - 1 : -1]
        return logprobs, entropy, values


@torch.no_grad()
def reference_logprobs(reference: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """log pi_ref(token) of each completion token [B, T], by the same arithmetic as the policy's."""
    steps = batch["completions"].shape[1]
    out = reference(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
        logits_to_keep=steps + 1, use_cache=False,
    )
    return token_logprobs(out.logits[:, :-1].float() / temperature, batch["completions"])


def pad_stack(rows: Sequence[torch.Tensor], width: int, value: float = 0.0) -> torch.Tensor:
    """1-D tensors of different lengths -> [len(rows), width], padded with ``value``."""
    out = torch.full((len(rows), width), value, dtype=torch.float32, device=rows[0].device if rows else "cpu")
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[:width]
    return out


def chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


def split_even(indices: Sequence[int], parts: int) -> list[list[int]]:
    """``indices`` in ``parts`` consecutive pieces whose sizes differ by at most one."""
    size, extra = divmod(len(indices), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        out.append(list(indices[start:end]))
        start = end
    return [p for p in out if p]


def global_sum(accelerator: Any, value: float | torch.Tensor) -> float:
    """The sum of a number over every process (collective)."""
    tensor = torch.as_tensor(value, dtype=torch.float64, device=accelerator.device).reshape(())
    return float(accelerator.reduce(tensor, reduction="sum").item())


def global_mean_var(accelerator: Any, values: torch.Tensor) -> tuple[float, float]:
    """Mean and unbiased variance of ``values`` [N] gathered over every process (collective)."""
    stats = torch.stack([values.double().sum(), (values.double() ** 2).sum(), torch.tensor(float(values.numel()), dtype=torch.float64)])
    s, s2, n = accelerator.reduce(stats.to(accelerator.device), reduction="sum").tolist()
    mean = s / max(n, 1)
    var = (s2 - n * mean * mean) / max(n - 1, 1)
    return mean, max(var, 0.0)


class Sums:
    """Totals and counts of named metrics over one RL step; averaged over every process at the end."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, name: str, total: float | torch.Tensor, count: float | torch.Tensor = 1.0) -> None:
        """Add ``total`` (a sum over ``count`` items) to metric ``name``."""
        self.totals[name] = self.totals.get(name, 0.0) + float(total)
        self.counts[name] = self.counts.get(name, 0.0) + float(count)

    def add_mean(self, name: str, mean: float | torch.Tensor, count: float | torch.Tensor) -> None:
        """Add a mean over ``count`` items."""
        self.add(name, float(mean) * float(count), count)

    def means(self, accelerator: Any, names: Sequence[str]) -> dict[str, float | None]:
        """Global means of ``names`` (every process passes the same names, collective)."""
        stacked = torch.tensor(
            [[self.totals.get(k, 0.0), self.counts.get(k, 0.0)] for k in names], dtype=torch.float64,
            device=accelerator.device,
        )
        stacked = accelerator.reduce(stacked, reduction="sum").tolist()
        return {k: (v / w if w > 0 else None) for k, (v, w) in zip(names, stacked, strict=True)}


def write_samples(path: Path, step: int, rollout: Rollout, items: Sequence[PromptItem], scores: Sequence[float], k: int) -> None:
    """Append the first ``k`` samples of a rollout to ``rollouts.jsonl`` (main process)."""
    if k <= 0:
        return
    with path.open("a", encoding="utf-8") as fh:
        for j in range(min(k, len(rollout))):
            messages = items[rollout.prompt_index[j]].messages
            prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            row = {
                "step": step, "prompt": prompt, "completion": rollout.texts[j], "reward": scores[j],
                "finished": rollout.finished[j], "tokens": len(rollout.completion_ids[j]),
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def step_row(means: dict[str, float | None], step: int, plan: Any, lr: float, grad_norm: Any, kl_coef: float,
             rollout_tokens: float, decode_seconds: float, step_seconds: float, elapsed: float) -> dict[str, Any]:
    """The metrics row of one RL step: reward mean and spread, every other mean, rates and times."""
    reward, reward_sq = means.get("reward") or 0.0, means.get("reward_sq") or 0.0
    row: dict[str, Any] = {
        "split": "train", "step": step, "epoch": round(plan.epoch_of(step), 4),
        "reward": reward, "reward_std": math.sqrt(max(reward_sq - reward * reward, 0.0)),
    }
    for key, value in means.items():
        if key not in ("reward", "reward_sq"):
            row[key] = value
    row.update({
        "kl_coef": kl_coef, "lr": lr, "grad_norm": float(grad_norm),
        "rollout_tokens_per_s": rollout_tokens / max(decode_seconds, 1e-9),
        "step_s": round(step_seconds, 3), "elapsed_s": round(elapsed, 3),
    })
    return row
