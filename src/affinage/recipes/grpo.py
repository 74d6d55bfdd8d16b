"""Critic-free online RL: GRPO (Shao et al. 2024, DeepSeekMath) and RLOO (Ahmadian et al. 2024).

Each prompt is answered ``rollout.samples_per_prompt`` = G times; the other answers to the same
prompt are the baseline, so no value model is trained:

* ``advantage: grpo``: A_i = (r_i - mean(r)) / std(r) over the group (DeepSeekMath Sec. 4.1.2);
  ``scale_advantages: false`` drops the division, as Dr. GRPO does (Liu et al. 2025);
* ``advantage: rloo``: A_i = r_i - mean_{j != i} r_j, the leave-one-out baseline.

The advantage of an answer goes to each of its tokens; the loss per token is PPO's clipped
surrogate plus ``beta`` times the k3 estimate of KL(pi || pi_ref) (DeepSeekMath Eq. 3-4: the KL is in
the loss, not in the reward). Per-token losses become the loss of an optimizer step as the paper
named by ``loss_aggregation`` does it: ``grpo`` (mean over each answer, then over answers), ``dapo``
(mean over all tokens, Yu et al. 2025) or ``dr_grpo`` (sum divided by answers x max_new_tokens).

Reads top to bottom like the SFT and PPO recipes: setup, an explicit loop over RL steps (rollout,
rewards, reference log-probabilities, epochs of minibatches), save. The n answers of a prompt are
sampled on the same process, so group statistics need no communication.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from affinage.config import AdapterConfig, ModelConfig, RunConfig, _check, to_dict
from affinage.engine.batching import BatchPlan
from affinage.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from affinage.engine.metrics import MetricLogger
from affinage.engine.optim import build_optimizer, build_scheduler
from affinage.engine.progress import console, progress_bar
from affinage.engine.runtime import make_accelerator, prepare_run_dir, release_host_memory, seed_everything
from affinage.errors import ConfigError
from affinage.losses.rl import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    aggregation_denominator,
    clipped_policy_loss,
    masked_sum,
    whiten,
)
from affinage.recipes.rl_common import (
    GroupRolloutConfig,
    PolicyWithValue,
    PromptDataConfig,
    RLTrainConfig,
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
class GRPORunConfig(RunConfig):
    output_dir: str = "runs/grpo"


@dataclass
class GRPOConfig:
    """GRPO and RLOO: ``affinage grpo CONFIG.yaml``."""

    stage: Literal["grpo"] = "grpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    """The starting policy, usually an SFT model; also the reference."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    rollout: GroupRolloutConfig = field(default_factory=GroupRolloutConfig)
    reward: RewardsConfig = field(default_factory=RewardsConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)
    run: GRPORunConfig = field(default_factory=GRPORunConfig)
    advantage: Literal["grpo", "rloo"] = "grpo"
    """grpo: group-normalised rewards; rloo: leave-one-out baselines."""
    scale_advantages: bool = True
    """grpo: divide by the group's standard deviation (false: Dr. GRPO's centring only)."""
    loss_aggregation: Literal["grpo", "dapo", "dr_grpo"] = "grpo"
    """grpo: mean per answer then over answers; dapo: mean over tokens; dr_grpo: sum / (answers x max_new_tokens)."""
    beta: float = 0.04
    """Weight of the KL(pi || pi_ref) term in the loss (0.04 in DeepSeekMath; 0 drops the reference)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    epochs_per_rollout: int = 1
    """Passes over each rollout (GRPO's mu); with 1 pass and 1 minibatch the update is on-policy."""
    minibatches: int = 1
    """Optimizer steps per pass over a rollout."""
    clip: float = 0.2
    clip_high: float | None = None
    """Upper clip (DAPO's clip-higher, e.g. 0.28); null: the same as ``clip``."""
    entropy_coef: float = 0.0

    def validate(self) -> None:
        validate_rl_sections(self.train, self.run, self.adapter, self.data, self.rollout)
        self.reward.validate()
        _check(self.rollout.samples_per_prompt >= 2, "rollout.samples_per_prompt",
               f"must be at least 2 for {self.advantage} (the other answers to a prompt are the baseline), "
               f"got {self.rollout.samples_per_prompt}")
        _check(self.beta >= 0, "beta", "must be >= 0")
        _check(self.epochs_per_rollout >= 1, "epochs_per_rollout", "must be at least 1")
        _check(self.minibatches >= 1, "minibatches", "must be at least 1")
        _check(0 < self.clip < 1, "clip", f"must be in (0, 1), got {self.clip}")
        _check(self.clip_high is None or self.clip_high > 0, "clip_high", "must be positive or null")
        _check(self.entropy_coef >= 0, "entropy_coef", "must be >= 0")
        _check(self.advantage == "grpo" or self.scale_advantages, "scale_advantages",
               "only applies to advantage=grpo (RLOO's baseline is not scaled); remove it")


def train(cfg: GRPOConfig) -> Path:
    """Run GRPO or RLOO as ``cfg`` describes; return the ``final/`` model directory."""
    from transformers.utils import logging as hf_logging

    from affinage.models.adapters import (
        apply_adapter,
        copy_model,
        count_parameters,
        disabled_adapter,
        save_final,
    )
    from affinage.models.loading import load_model, load_tokenizer, resolve_dtype
    from affinage.recipes.rl_common import load_prompts, reference_logprobs
    from affinage.rewards import Rewards, Sample

    # ---------------------------------------------------------------- setup
    accelerator = make_accelerator()
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    out = prepare_run_dir(cfg.run.output_dir, cfg, resume=cfg.run.resume, is_main=main)
    seed_everything(cfg.train.seed)
    show = cfg.run.progress and main
    g, n = cfg.rollout, cfg.rollout.samples_per_prompt
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
    weights_dtype = torch.float32 if cfg.adapter.method in ("full", "freeze") else dtype
    autocast = partial(torch.autocast, accelerator.device.type, dtype=dtype, enabled=dtype != weights_dtype)
    policy = load_model(
        cfg.model.name, dtype=weights_dtype, revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code, attn_implementation=cfg.model.attn_implementation,
    )
    has_adapter = cfg.adapter.method in ("lora", "dora")
    use_reference = cfg.beta > 0
    reference = copy_model(policy).to(accelerator.device) if use_reference and not has_adapter else None
    policy = apply_adapter(policy, cfg.adapter, gradient_checkpointing=cfg.model.gradient_checkpointing, tokenizer=tokenizer)
    model = PolicyWithValue(policy).to(accelerator.device)
    rewards = Rewards(cfg.reward, device=accelerator.device, dtype=dtype)
    trainable, total = count_parameters(model)
    if main:
        console.print(f"[bold]{cfg.advantage}[/] prompts: {prompts.describe()}")
        console.print(
            f"[bold]{cfg.advantage}[/] {cfg.model.name} ({dtype}, {accelerator.device}, {world} process(es)) "
            f"adapter={cfg.adapter.method} trainable={trainable:,}/{total:,} group={n} beta={cfg.beta} "
            f"loss={cfg.loss_aggregation} rewards={', '.join(name for name, _, _ in rewards.sources)}"
        )

    engine = make_rollout_engine(g, cfg.model.name, dtype, cfg.train.seed)
    optimizer = build_optimizer(model, cfg.train)
    plan = BatchPlan(len(items), g.prompts_per_step // world, 1, world, cfg.train.seed)
    total_steps = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps * cfg.epochs_per_rollout * cfg.minibatches)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: PolicyWithValue = accelerator.unwrap_model(model)

    start_step, elapsed_before = 0, 0.0
    checkpoints = out / "checkpoints"
    if cfg.run.resume and (ckpt := latest_checkpoint(checkpoints)) is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator)
        start_step, elapsed_before = state["step"], state.get("elapsed_s", 0.0)
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
    advantage_fn = ADVANTAGE_ESTIMATORS[cfg.advantage]
    advantage_kwargs = {"scale": cfg.scale_advantages} if cfg.advantage == "grpo" else {}
    max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm is not None else math.inf

    def checkpoint(step: int) -> None:
        save_checkpoint(
            checkpoints, step, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
            keep_last=cfg.run.keep_last,
            trainer_state={"step": step, "epoch": plan.epoch_of(step), "elapsed_s": elapsed_before + time.perf_counter() - t0},
        )

    # ---------------------------------------------------------------- loop
    t0 = time.perf_counter()
    done = start_step
    try:
        with progress_bar(cfg.advantage, total_steps, enabled=show, completed=start_step) as bar:
            for step in range(start_step, total_steps):
                step_start = time.perf_counter()
                sums = Sums()
                # 1. rollout: n answers per prompt, consecutive
                indices = plan.micro_batches(step, rank)[0]
                model.eval()
                with autocast():
                    rollout = generate_rollout(
                        unwrapped.policy, tokenizer, items, indices, g,
                        seed=step_seed(cfg.train.seed, step, rank, world), engine=engine,
                    )
                n_samples = len(rollout)

                # 2. rewards and group baselines
                samples = [
                    Sample(items[p].messages, text, items[p].row, fin)
                    for p, text, fin in zip(rollout.prompt_index, rollout.texts, rollout.finished, strict=True)
                ]
                scored = rewards(samples)
                scores = torch.tensor(scored.total, dtype=torch.float32)  # [S]
                if cfg.reward.whiten:
                    mean, var = global_mean_var(accelerator, scores)
                    scores = whiten(scores, mean=mean, var=var)
                advantages = advantage_fn(scores, n, **advantage_kwargs).to(accelerator.device)  # [S]
                spread = scores.view(-1, n).std(dim=1) > 0  # groups whose answers differ: the only ones that teach
                for name, part in scored.parts.items():
                    sums.add(f"reward/{name}", sum(part), len(part))
                sums.add("reward", sum(scored.total), n_samples)
                sums.add("reward_sq", sum(x * x for x in scored.total), n_samples)
                sums.add("groups_with_signal", spread.sum(), len(spread))
                sums.add("finished", sum(rollout.finished), n_samples)

                # 3. log pi_old (only needed when the policy moves within a rollout) and log pi_ref
                width = max(1, max(len(c) for c in rollout.completion_ids))
                mask = pad_stack([torch.ones(len(c)) for c in rollout.completion_ids], width).to(accelerator.device)
                off_policy = cfg.epochs_per_rollout > 1 or cfg.minibatches > 1
                old_logps, ref_logps, entropies = [], [], []
                with torch.no_grad(), autocast():
                    for micro in split_even(range(n_samples), math.ceil(n_samples / cfg.train.batch_size)):
                        batch = collate_sequences(
                            [rollout.prompt_ids[i] for i in micro], [rollout.completion_ids[i] for i in micro],
                            pad_id, accelerator.device,
                        )
                        logp, ent, _ = unwrapped(batch, g.temperature, with_entropy=True)
                        ref = reference_forward(batch) if use_reference else logp
                        for k, i in enumerate(micro):
                            length = len(rollout.completion_ids[i])
                            old_logps.append(logp[k, :length].float())
                            ref_logps.append(ref[k, :length].float())
                            entropies.append(ent[k, :length].float())
                old_logp = pad_stack(old_logps, width)
                ref_logp = pad_stack(ref_logps, width)
                sums.add("kl", masked_sum(kl_fn(old_logp, ref_logp), mask), n_samples)  # per answer
                sums.add("entropy", sum(e.sum() for e in entropies), mask.sum())
                sums.add("answer_length", mask.sum(), n_samples)

                # 4. epochs of minibatches
                model.train()
                order_gen = torch.Generator().manual_seed(step_seed(cfg.train.seed + 1, step, rank, world))
                for _epoch in range(cfg.epochs_per_rollout):
                    order = torch.randperm(n_samples, generator=order_gen).tolist()
                    for minibatch in split_even(order, cfg.minibatches):
                        denominator = aggregation_denominator(
                            cfg.loss_aggregation,
                            num_sequences=int(global_sum(accelerator, len(minibatch))),
                            num_tokens=int(global_sum(accelerator, mask[minibatch].sum())),
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
                                logp, ent, _ = model(batch, g.temperature, with_entropy=cfg.entropy_coef > 0)
                                # On-policy (one pass, one minibatch) pi_old is pi itself, detached: the ratio
                                # is 1 and its gradient is the policy gradient.
                                old = old_logp[sel, :steps] if off_policy else logp.detach()
                                token_adv = advantages[sel, None].expand(-1, steps)
                                pg_tokens, pg_metrics = clipped_policy_loss(logp, old, token_adv, mmask, cfg.clip, cfg.clip_high)
                                loss_tokens = pg_tokens
                                if use_reference:
                                    kl_tokens = kl_fn(logp, ref_logp[sel, :steps]) * mmask
                                    loss_tokens = loss_tokens + cfg.beta * kl_tokens
                                if cfg.entropy_coef > 0:
                                    loss_tokens = loss_tokens - cfg.entropy_coef * ent * mmask
                                loss = aggregate(loss_tokens, mmask) / denominator
                                accelerator.backward(loss * world)
                            tokens = mmask.sum()
                            sums.add("policy_loss", pg_tokens.detach().sum(), tokens)
                            if use_reference:
                                sums.add("kl_loss", kl_tokens.detach().sum(), tokens)
                            for key, value in pg_metrics.items():
                                sums.add_mean(key, value, tokens)
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                        lr = scheduler.get_last_lr()[0]
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        release_host_memory(accelerator.device)
                done = step + 1

                # 5. metrics
                means = sums.means(accelerator, sorted(sums.totals))
                row = step_row(means, done, plan, lr, grad_norm, cfg.beta, rollout.new_tokens, rollout.decode_seconds,
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
