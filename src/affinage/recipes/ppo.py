"""RLHF with PPO: optimise the policy against a reward while a per-token KL penalty keeps it near the
reference (the supervised model). InstructGPT (Ouyang et al. 2022, Sec. 3.5) and Llama 2 (Touvron
et al. 2023, Sec. 3.2.3) after Ziegler et al. 2019.

Reads top to bottom like the SFT recipe: setup, an explicit loop over RL steps, save. One RL step:

1. rollout: ``rollout.prompts_per_step`` prompts (over all processes), answers sampled with the
   KV-cache loop of :mod:`affinage.generation.rollout`;
2. rewards: the reward sources score each answer (less a penalty for answers that never end;
   optionally whitened over the rollout);
3. with the training forward pass, no gradient: log pi_old, log pi_ref and values V(s_t) of every
   completion token; per-token rewards r_t = -beta * KL_t plus the score on the last token
   (:func:`~affinage.losses.rl.kl_penalised_rewards`), advantages and returns by GAE, advantages
   whitened over the rollout;
4. ``epochs_per_rollout`` passes over the rollout in ``minibatches`` optimizer steps each, with the
   clipped policy loss and the clipped value loss; a minibatch is split into micro-batches of
   ``train.batch_size`` sequences whose losses are normalised by counts over the whole minibatch on
   every process, so accumulation and data parallelism give the gradient of one large batch;
5. the adaptive KL controller (optional) moves beta towards ``kl_target``.

The critic is a separate model (``value.model``: a reward-model directory, whose score head gives
the initial values, or any causal LM with a new head) or a value head on the policy's last hidden
states (``value.model: null``). The reference is a frozen copy of the starting policy, or under
LoRA/DoRA the policy itself with its adapter disabled.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from affinage.config import AdapterConfig, ModelConfig, RunConfig, TrainConfig, _check, to_dict
from affinage.engine.batching import BatchPlan
from affinage.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from affinage.engine.metrics import MetricLogger
from affinage.engine.optim import build_scheduler
from affinage.engine.progress import console, progress_bar
from affinage.engine.runtime import make_accelerator, prepare_run_dir, release_host_memory, seed_everything
from affinage.errors import ConfigError
from affinage.losses.rl import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    adaptive_kl_coef,
    aggregation_denominator,
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages,
    kl_penalised_rewards,
    masked_sum,
    token_sum,
    whiten,
)
from affinage.recipes.rl_common import (
    PolicyWithValue,
    PromptDataConfig,
    RLTrainConfig,
    RolloutConfig,
    Sums,
    collate_sequences,
    generate_rollout,
    global_mean_var,
    global_sum,
    make_rollout_engine,
    pad_stack,
    split_even,
    step_row,
    step_seed,
    validate_rl_sections,
    write_samples,
)
from affinage.rewards import RewardsConfig


@dataclass
class PPORunConfig(RunConfig):
    output_dir: str = "runs/ppo"


@dataclass
class ValueConfig:
    """The critic."""

    model: str | None = None
    """A reward-model directory (its score head gives the initial values, as in InstructGPT), any
    causal LM (a new zero head on its trunk), or null: a value head on the policy's hidden states."""
    coef: float = 0.1
    """Weight of the value loss in the total loss (matters for a head sharing the policy's trunk)."""
    clip: float = 0.2
    """Clip range of the value update around the rollout's values."""
    lr: float | None = None
    """Learning rate of the critic or head (null: train.lr)."""


@dataclass
class PPOConfig:
    """RLHF with PPO: ``affinage ppo CONFIG.yaml``."""

    stage: Literal["ppo"] = "ppo"
    model: ModelConfig = field(default_factory=ModelConfig)
    """The starting policy, usually an SFT model (e.g. runs/quickstart/final); also the reference."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardsConfig = field(default_factory=RewardsConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)
    run: PPORunConfig = field(default_factory=PPORunConfig)
    epochs_per_rollout: int = 4
    """Passes over each rollout (PPO's K epochs)."""
    minibatches: int = 1
    """Optimizer steps per pass over a rollout."""
    clip: float = 0.2
    """PPO's epsilon: the ratio pi/pi_old is clipped to [1 - clip, 1 + clip_high]."""
    clip_high: float | None = None
    """Upper clip (DAPO's clip-higher); null: the same as ``clip``."""
    gamma: float = 1.0
    lam: float = 0.95
    """GAE's lambda."""
    kl_coef: float = 0.05
    """beta of the per-token KL penalty in the reward (the starting value when adaptive)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """k1 = log(pi/pi_ref) (InstructGPT), k3 = r - 1 - log r with r = pi_ref/pi (never negative)."""
    adaptive_kl: bool = False
    """Adapt beta towards kl_target (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    """Target KL per answer (nats) of the adaptive controller."""
    kl_horizon: float = 10000.0
    whiten_advantages: bool = True
    entropy_coef: float = 0.0
    """Weight of an entropy bonus (0: off)."""
    loss_aggregation: Literal["grpo", "dapo", "dr_grpo"] = "dapo"
    """How per-token policy losses become the step's loss: dapo (token mean, the usual PPO one),
    grpo (mean per answer, then over answers), dr_grpo (sum / (answers x max_new_tokens))."""

    def validate(self) -> None:
        validate_rl_sections(self.train, self.run, self.adapter, self.data, self.rollout)
        self.reward.validate()
        _check(self.epochs_per_rollout >= 1, "epochs_per_rollout", "must be at least 1")
        _check(self.minibatches >= 1, "minibatches", "must be at least 1")
        _check(0 < self.clip < 1, "clip", f"must be in (0, 1), got {self.clip}")
        _check(self.clip_high is None or self.clip_high > 0, "clip_high", "must be positive or null")
        _check(0 <= self.gamma <= 1, "gamma", "must be in [0, 1]")
        _check(0 <= self.lam <= 1, "lam", "must be in [0, 1]")
        _check(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        _check(self.kl_target > 0, "kl_target", "must be positive")
        _check(self.kl_horizon > 0, "kl_horizon", "must be positive")
        _check(self.entropy_coef >= 0, "entropy_coef", "must be >= 0")
        _check(self.value.coef > 0, "value.coef", "must be positive")
        _check(self.value.clip > 0, "value.clip", "must be positive")
        _check(self.value.lr is None or self.value.lr > 0, "value.lr", "must be positive or null")


# ----------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------


def train(cfg: PPOConfig) -> Path:
    """Run PPO as ``cfg`` describes; return the ``final/`` model directory."""
    from transformers.utils import logging as hf_logging

    from affinage.models.adapters import (
        apply_adapter,
        copy_model,
        count_parameters,
        disabled_adapter,
        save_final,
    )
    from affinage.models.loading import load_model, load_tokenizer, resolve_dtype
    from affinage.recipes.rl_common import load_prompts, load_value_model, reference_logprobs
    from affinage.rewards import Rewards, Sample

    # ---------------------------------------------------------------- setup
    accelerator = make_accelerator()
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    out = prepare_run_dir(cfg.run.output_dir, cfg, resume=cfg.run.resume, is_main=main)
    seed_everything(cfg.train.seed)
    show = cfg.run.progress and main
    g = cfg.rollout
    if g.prompts_per_step % world:
        raise ConfigError(
            f"rollout.prompts_per_step={g.prompts_per_step} must be a multiple of the number of processes ({world})"
        )

    tokenizer = load_tokenizer(
        cfg.model.name, chat_template=cfg.model.chat_template, revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    hf_logging.disable_progress_bar()
    prompts = load_prompts(cfg.data, tokenizer)
    items = prompts.items
    dtype = resolve_dtype(cfg.model.dtype, accelerator.device)
    # As in SFT: fp32 master weights under autocast for full/freeze, frozen weights in the compute
    # dtype under adapters.
    weights_dtype = torch.float32 if cfg.adapter.method in ("full", "freeze") else dtype
    autocast = partial(torch.autocast, accelerator.device.type, dtype=dtype, enabled=dtype != weights_dtype)
    policy = load_model(
        cfg.model.name, dtype=weights_dtype, revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code, attn_implementation=cfg.model.attn_implementation,
    )
    has_adapter = cfg.adapter.method in ("lora", "dora")
    # Taken before training and before a checkpoint is restored: the reference is the starting model.
    reference = None if has_adapter else copy_model(policy).to(accelerator.device)
    policy = apply_adapter(policy, cfg.adapter, gradient_checkpointing=cfg.model.gradient_checkpointing, tokenizer=tokenizer)
    if cfg.value.model is not None:
        critic, value_head = load_value_model(cfg.value.model, torch.float32), None
    else:
        critic = None
        value_head = torch.nn.Linear(policy.config.hidden_size, 1, bias=False, dtype=torch.float32)
        torch.nn.init.zeros_(value_head.weight)
    model = PolicyWithValue(policy, critic, value_head).to(accelerator.device)
    rewards = Rewards(cfg.reward, device=accelerator.device, dtype=dtype)
    trainable, total = count_parameters(model.policy)
    if main:
        console.print(f"[bold]ppo[/] prompts: {prompts.describe()}")
        console.print(
            f"[bold]ppo[/] {cfg.model.name} ({dtype}, {accelerator.device}, {world} process(es)) "
            f"adapter={cfg.adapter.method} trainable={trainable:,}/{total:,} "
            f"critic={'value head on the policy' if critic is None else cfg.value.model} "
            f"reference={'adapter disabled' if has_adapter else 'frozen copy'} "
            f"rewards={', '.join(name for name, _, _ in rewards.sources)}"
        )

    engine = make_rollout_engine(g, cfg.model.name, dtype, cfg.train.seed)
    optimizer = build_rl_optimizer(model, cfg.train, cfg.value.lr)
    plan = BatchPlan(len(items), g.prompts_per_step // world, 1, world, cfg.train.seed)
    total_steps = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    updates_per_step = cfg.epochs_per_rollout * cfg.minibatches
    scheduler = build_scheduler(optimizer, cfg.train, total_steps * updates_per_step)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: PolicyWithValue = accelerator.unwrap_model(model)

    start_step, elapsed_before, kl_coef = 0, 0.0, cfg.kl_coef
    checkpoints = out / "checkpoints"
    if cfg.run.resume and (ckpt := latest_checkpoint(checkpoints)) is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator)
        start_step, elapsed_before = state["step"], state.get("elapsed_s", 0.0)
        kl_coef = state.get("kl_coef", kl_coef)
        if main:
            console.print(f"resumed from {ckpt} at step {start_step}/{total_steps}")

    def reference_forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if reference is not None:
            return reference_logprobs(reference, batch, g.temperature)
        with disabled_adapter(unwrapped.policy):
            return reference_logprobs(unwrapped.policy, batch, g.temperature)

    logger = MetricLogger(out, cfg.run.report_to, enabled=main, run_name=out.name, config=to_dict(cfg))
    pad_id = tokenizer.pad_token_id
    kl_fn = KL_ESTIMATORS[cfg.kl_estimator]
    aggregate = LOSS_AGGREGATIONS[cfg.loss_aggregation]
    max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm is not None else math.inf

    def checkpoint(step: int) -> None:
        save_checkpoint(
            checkpoints, step, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
            keep_last=cfg.run.keep_last,
            trainer_state={"step": step, "epoch": plan.epoch_of(step), "kl_coef": kl_coef,
                           "elapsed_s": elapsed_before + time.perf_counter() - t0},
        )

    # ---------------------------------------------------------------- loop
    t0 = time.perf_counter()
    done = start_step
    try:
        with progress_bar("ppo", total_steps, enabled=show, completed=start_step) as bar:
            for step in range(start_step, total_steps):
                step_start = time.perf_counter()
                sums = Sums()
                # 1. rollout
                indices = plan.micro_batches(step, rank)[0]
                model.eval()
                with autocast():
                    rollout = generate_rollout(
                        unwrapped.policy, tokenizer, items, indices, g,
                        seed=step_seed(cfg.train.seed, step, rank, world), engine=engine,
                    )
                n_samples = len(rollout)
                finished = torch.tensor(rollout.finished, dtype=torch.float32)

                # 2. rewards
                samples = [
                    Sample(items[p].messages, text, items[p].row, fin)
                    for p, text, fin in zip(rollout.prompt_index, rollout.texts, rollout.finished, strict=True)
                ]
                scored = rewards(samples)
                scores = torch.tensor(scored.total, dtype=torch.float32)  # [S]
                if cfg.reward.whiten:
                    mean, var = global_mean_var(accelerator, scores)
                    scores = whiten(scores, mean=mean, var=var)
                for name, part in scored.parts.items():
                    sums.add(f"reward/{name}", sum(part), len(part))
                sums.add("reward", sum(scored.total), n_samples)
                sums.add("reward_sq", sum(x * x for x in scored.total), n_samples)

                # 3. old log-probs, reference log-probs and values, by the training forward pass
                old_logps, ref_logps, old_values, entropies = [], [], [], []
                with torch.no_grad(), autocast():
                    for micro in split_even(range(n_samples), math.ceil(n_samples / cfg.train.batch_size)):
                        batch = collate_sequences(
                            [rollout.prompt_ids[i] for i in micro], [rollout.completion_ids[i] for i in micro],
                            pad_id, accelerator.device,
                        )
                        logp, ent, values = unwrapped(batch, g.temperature, with_entropy=True, with_values=True)
                        ref = reference_forward(batch)
                        for k, i in enumerate(micro):
                            length = len(rollout.completion_ids[i])
                            old_logps.append(logp[k, :length].float())
                            ref_logps.append(ref[k, :length].float())
                            old_values.append(values[k, :length].float())
                            entropies.append(ent[k, :length].float())
                width = max(1, max(len(c) for c in rollout.completion_ids))
                mask = pad_stack([torch.ones(len(c)) for c in rollout.completion_ids], width).to(accelerator.device)
                old_logp = pad_stack(old_logps, width)
                ref_logp = pad_stack(ref_logps, width)
                old_value = pad_stack(old_values, width)
                kl = kl_fn(old_logp, ref_logp) * mask  # [S, T]
                token_rewards = kl_penalised_rewards(scores.to(mask.device), kl, mask, kl_coef)
                advantages, returns = gae_advantages(token_rewards, old_value, mask, cfg.gamma, cfg.lam)
                if cfg.whiten_advantages:
                    adv_mean, adv_var = _global_masked_mean_var(accelerator, advantages, mask)
                    advantages = whiten(advantages, mask, mean=adv_mean, var=adv_var)
                sums.add("kl", kl.sum(), n_samples)  # mean KL per answer (sum over its tokens)
                sums.add("entropy", sum(e.sum() for e in entropies), mask.sum())
                sums.add("answer_length", mask.sum(), n_samples)
                sums.add("finished", finished.sum(), n_samples)
                sums.add("value_mean", masked_sum(old_value, mask), mask.sum())

                # 4. epochs of minibatches
                model.train()
                order_gen = torch.Generator().manual_seed(step_seed(cfg.train.seed + 1, step, rank, world))
                grad_norm = torch.zeros(())
                for _epoch in range(cfg.epochs_per_rollout):
                    order = torch.randperm(n_samples, generator=order_gen).tolist()
                    for minibatch in split_even(order, cfg.minibatches):
                        mb_tokens = global_sum(accelerator, mask[minibatch].sum())
                        mb_sequences = global_sum(accelerator, len(minibatch))
                        denominator = aggregation_denominator(
                            cfg.loss_aggregation, num_sequences=int(mb_sequences), num_tokens=int(mb_tokens),
                            max_new_tokens=g.max_new_tokens,
                        )
                        micro_batches = split_even(minibatch, math.ceil(len(minibatch) / cfg.train.batch_size))
                        for m, micro in enumerate(micro_batches):
                            batch = collate_sequences(
                                [rollout.prompt_ids[i] for i in micro], [rollout.completion_ids[i] for i in micro],
                                pad_id, accelerator.device,
                            )
                            steps = batch["completions"].shape[1]
                            sel = torch.tensor(micro, device=mask.device)
                            mmask = mask[sel, :steps]
                            sync = m == len(micro_batches) - 1
                            with contextlib.nullcontext() if sync else accelerator.no_sync(model), autocast():
                                logp, ent, values = model(
                                    batch, g.temperature, with_entropy=cfg.entropy_coef > 0, with_values=True
                                )
                                pg_tokens, pg_metrics = clipped_policy_loss(
                                    logp, old_logp[sel, :steps], advantages[sel, :steps], mmask, cfg.clip, cfg.clip_high
                                )
                                vf_tokens, vf_metrics = clipped_value_loss(
                                    values, old_value[sel, :steps], returns[sel, :steps], mmask, cfg.value.clip
                                )
                                loss = aggregate(pg_tokens, mmask) / denominator
                                loss = loss + cfg.value.coef * token_sum(vf_tokens, mmask) / max(mb_tokens, 1.0)
                                if cfg.entropy_coef > 0:
                                    loss = loss - cfg.entropy_coef * aggregate(ent, mmask) / denominator
                                accelerator.backward(loss * world)
                            tokens = mmask.sum()
                            sums.add("policy_loss", pg_tokens.detach().sum(), tokens)
                            sums.add("value_loss", vf_tokens.detach().sum(), tokens)
                            for key, value in {**pg_metrics, **vf_metrics}.items():
                                sums.add_mean(key, value, tokens)
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                        lr = scheduler.get_last_lr()[0]
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        release_host_memory(accelerator.device)
                done = step + 1

                # 5. metrics and the KL controller
                means = sums.means(accelerator, sorted(sums.totals))
                if cfg.adaptive_kl:
                    kl_coef = adaptive_kl_coef(kl_coef, means["kl"], cfg.kl_target, cfg.kl_horizon, g.prompts_per_step * g.samples_per_prompt)
                row = step_row(means, done, plan, lr, grad_norm, kl_coef, rollout.new_tokens, rollout.decode_seconds,
                               time.perf_counter() - step_start, elapsed_before + time.perf_counter() - t0)
                if done % cfg.run.log_every == 0 or done == total_steps:
                    logger.log(row)
                if main:
                    write_samples(out / "rollouts.jsonl", done, rollout, items, scored.total, g.log_samples)
                bar.update(completed=done, reward=row["reward"], kl=row["kl"], len=row["answer_length"])
                if cfg.run.save_every and done % cfg.run.save_every == 0 and done < total_steps:
                    checkpoint(done)
    except KeyboardInterrupt:
        if done > start_step:
            checkpoint(done)
            if main:
                console.print(f"[yellow]interrupted: checkpoint saved at step {done} in {checkpoints}; continue with run.resume=true[/]")
        logger.close()
        raise SystemExit(130) from None

    # ---------------------------------------------------------------- save
    if start_step < total_steps:
        checkpoint(total_steps)
    final_dir = out / "final"
    if main:
        save_final(accelerator.unwrap_model(model).policy, tokenizer, final_dir, merge=cfg.adapter.merge)
        console.print(f"saved {final_dir}")
    accelerator.wait_for_everyone()
    logger.close()
    accelerator.end_training()
    return final_dir


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def build_rl_optimizer(model: PolicyWithValue, train: TrainConfig, value_lr: float | None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the critic or value head may have its own learning rate.
    No weight decay on biases, norms and other 1-D tensors (as :func:`affinage.engine.optim.build_optimizer`)."""
    groups: list[dict[str, Any]] = []
    parts = [(model.policy, train.lr)]
    value_modules = [m for m in (model.critic, model.value_head) if m is not None]
    for module in value_modules:
        parts.append((module, value_lr if value_lr is not None else train.lr))
    for module, lr in parts:
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        if decay:
            groups.append({"params": decay, "weight_decay": train.weight_decay, "lr": lr})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr})
    return torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.adam_betas), eps=train.adam_eps, foreach=True)


def _global_masked_mean_var(accelerator: Any, values: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean and unbiased variance of ``values`` where ``mask`` is 1, over every process."""
    return global_mean_var(accelerator, values[mask.bool()])
