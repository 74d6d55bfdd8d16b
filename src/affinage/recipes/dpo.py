"""Preference optimisation: DPO and its family (cDPO, IPO, hinge, robust, RPO), the reference-free
SimPO and ORPO, and KTO on unpaired answers.

Reads top to bottom like the SFT recipe (:mod:`affinage.recipes.sft`): setup, an explicit loop over
optimizer steps, save. Each micro-batch of B pairs goes through the policy in ONE forward pass: for
models whose attention takes custom masks (Llama, Mistral, Qwen...), one row per pair holding the
chosen sequence and then the rejected answer, which attends to the shared prompt but not to the
chosen answer (the prompt is computed once); otherwise one padded batch ``[2B, T]`` (chosen rows,
then rejected rows). The log-probability of an answer is the sum over its tokens only (prompt and
padding masked), and the output head runs only at answer positions (``logits_to_keep``).

The reference policy pi_ref is, in order of preference:

* nothing, for the reference-free losses (SimPO, ORPO);
* log-probabilities computed once before training and cached on disk (``precompute_reference``),
  keyed by a fingerprint of the model and the tokenised data: training then holds the policy alone;
* with an adapter (LoRA, DoRA, prompt tuning), the policy itself with the adapter disabled: the same
  weights, no second copy in memory;
* for full or layer-freezing fine-tuning, a frozen copy of the starting model.

The loss of an optimizer step is the mean of the per-pair losses over the global batch: each
micro-batch contributes ``sum(losses) * world_size / global_pairs`` (DDP averages gradients over
processes), so accumulation and data parallelism give the gradient of one large batch exactly. The
exception is KTO's reference point z0, estimated per micro-batch (as in the paper and TRL).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from affinage.config import AdapterConfig, ModelConfig, RunConfig, TrainConfig, _check, to_dict
from affinage.data.preference import PreferenceDataConfig
from affinage.engine.batching import BatchPlan
from affinage.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from affinage.engine.metrics import MetricLogger
from affinage.engine.optim import build_optimizer, build_scheduler
from affinage.engine.progress import console, progress_bar
from affinage.engine.runtime import make_accelerator, prepare_run_dir, release_host_memory, seed_everything
from affinage.errors import ModelError
from affinage.losses.preference import (
    DEFAULT_BETA,
    REFERENCE_FREE,
    PairLogps,
    PreferenceLossName,
    PreferenceLossOutput,
    PreferenceLossParams,
    UnpairedLogps,
    frozen_head_logps,
    preference_loss,
    sequence_logps,
)
from affinage.losses.sft import IGNORE_INDEX, shifted_targets, trainable_positions
from affinage.recipes.preference_common import MetricSums, validate_sections

LossChoice = Literal["dpo", "cdpo", "ipo", "hinge", "robust", "simpo", "orpo", "kto", "rpo"]


@dataclass
class DPOConfig:
    """Preference optimisation: ``affinage dpo CONFIG.yaml``."""

    stage: Literal["dpo"] = "dpo"
    model: ModelConfig = field(default_factory=ModelConfig)
    """The starting policy, usually an SFT model (e.g. runs/quickstart/final)."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, warmup_ratio=0.1))
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/dpo"))
    loss: LossChoice = "dpo"
    """dpo (sigmoid), cdpo (label smoothing), ipo, hinge (RSO), robust, simpo, orpo, kto, rpo (DPO + NLL)."""
    beta: float | None = None
    """Strength of the KL regularisation (IPO's tau, ORPO's lambda); null: 0.1, or 2.0 for simpo."""
    label_smoothing: float = 0.0
    """cdpo and robust: the assumed rate of flipped preference labels, in (0, 0.5)."""
    simpo_gamma: float = 0.5
    """simpo: the target reward margin gamma."""
    rpo_alpha: float = 1.0
    """rpo: weight of the NLL of the chosen answer."""
    kto_desirable_weight: float = 1.0
    """kto: lambda_D, the weight of desirable answers (raise it when they are rarer than undesirable ones)."""
    kto_undesirable_weight: float = 1.0
    """kto: lambda_U, the weight of undesirable answers."""
    precompute_reference: bool = False
    """Compute the reference log-probabilities once before training and cache them on disk."""
    reference_cache_dir: str | None = None
    """Where the cached reference log-probabilities go; null: ~/.cache/affinage/reference-logps."""
    samples: list[str] = field(default_factory=list)
    """Prompts answered before and after training, printed side by side and saved to samples.jsonl."""
    sample_max_new_tokens: int = 96

    @property
    def loss_name(self) -> PreferenceLossName:
        return PreferenceLossName(self.loss)

    @property
    def loss_params(self) -> PreferenceLossParams:
        beta = self.beta if self.beta is not None else DEFAULT_BETA[self.loss_name]
        return PreferenceLossParams(
            beta=beta, label_smoothing=self.label_smoothing, simpo_gamma=self.simpo_gamma, rpo_alpha=self.rpo_alpha,
            desirable_weight=self.kto_desirable_weight, undesirable_weight=self.kto_undesirable_weight,
        )

    @property
    def uses_reference(self) -> bool:
        return self.loss_name not in REFERENCE_FREE

    def validate(self) -> None:
        validate_sections(self.train, self.run, self.adapter, self.data)
        _check(self.beta is None or self.beta > 0, "beta", f"must be positive, got {self.beta}")
        if self.loss in ("cdpo", "robust"):
            _check(0 < self.label_smoothing < 0.5, "label_smoothing",
                   f"must be in (0, 0.5) for loss={self.loss} (the share of flipped labels), got {self.label_smoothing}")
        else:
            _check(self.label_smoothing == 0, "label_smoothing",
                   f"is only used by loss=cdpo or loss=robust; remove it for loss={self.loss}")
        _check(self.rpo_alpha >= 0, "rpo_alpha", "must be >= 0")
        _check(self.kto_desirable_weight > 0 and self.kto_undesirable_weight > 0, "kto_desirable_weight",
               "and kto_undesirable_weight must be positive")
        _check(not (self.precompute_reference and not self.uses_reference), "precompute_reference",
               f"has nothing to compute: loss={self.loss} uses no reference model; set it to false")
        _check(self.adapter.method != "freeze" or bool(self.adapter.trainable), "adapter.trainable",
               "method 'freeze' needs patterns of the parameters to train, e.g. ['layers\\.2[89]\\.', 'norm']")
        _check(self.sample_max_new_tokens >= 1, "sample_max_new_tokens", "must be at least 1")


# ----------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------


def train(cfg: DPOConfig) -> Path:
    """Run preference optimisation as ``cfg`` describes; return the ``final/`` model directory."""
    from transformers.utils import logging as hf_logging

    from affinage.data.preference import (
        collate_pairs,
        collate_pairs_shared_prompt,
        collate_unpaired,
        load_preference_data,
    )
    from affinage.models.adapters import apply_adapter, copy_model, count_parameters, save_final
    from affinage.models.loading import load_model, load_tokenizer, model_supports_packing, resolve_dtype
    from affinage.recipes.sft import _answer_samples, _report_samples

    # ---------------------------------------------------------------- setup
    if Path(cfg.model.name).name == "final" and not Path(cfg.model.name).exists():
        raise ModelError(
            f"model.name={cfg.model.name} does not exist yet: it is the final/ directory of an earlier run. "
            "Run that stage first (e.g. `affinage sft examples/quickstart.yaml`), or start from another "
            "model, e.g. model.name=smollm2-135m-instruct"
        )
    accelerator = make_accelerator()
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    out = prepare_run_dir(cfg.run.output_dir, cfg, resume=cfg.run.resume, is_main=main)
    seed_everything(cfg.train.seed)
    show = cfg.run.progress and main
    loss_name, params = cfg.loss_name, cfg.loss_params
    unpaired = loss_name == PreferenceLossName.KTO

    tokenizer = load_tokenizer(
        cfg.model.name, chat_template=cfg.model.chat_template, revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    hf_logging.disable_progress_bar()
    data = load_preference_data(cfg.data, tokenizer, unpaired=unpaired, seed=cfg.train.seed)
    if main:
        data.print_report(console)
    dtype = resolve_dtype(cfg.model.dtype, accelerator.device)
    # As in SFT: fp32 master weights under autocast for full/freeze, frozen weights in the compute
    # dtype under adapters.
    weights_dtype = torch.float32 if cfg.adapter.method in ("full", "freeze") else dtype
    autocast = partial(torch.autocast, accelerator.device.type, dtype=dtype, enabled=dtype != weights_dtype)
    model = load_model(
        cfg.model.name, dtype=weights_dtype, revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code, attn_implementation=cfg.model.attn_implementation,
    )
    has_adapter = cfg.adapter.method in ("lora", "dora", "prompt_tuning")
    # The frozen copy is taken before any training (and before a checkpoint is restored), so the
    # reference stays the starting model on resume.
    live_copy = cfg.uses_reference and not cfg.precompute_reference and not has_adapter
    reference_model = copy_model(model).to(accelerator.device) if live_copy else None
    model = apply_adapter(model, cfg.adapter, gradient_checkpointing=cfg.model.gradient_checkpointing, tokenizer=tokenizer)
    trainable, total = count_parameters(model)
    before = _answer_samples(cfg, model, tokenizer) if main and cfg.samples else None
    # A frozen output head is applied chunk by chunk without keeping logits (see HiddenStatesHead).
    use_hidden_states_head(model)
    if reference_model is not None:
        use_hidden_states_head(reference_model)
    position_offset = cfg.adapter.num_virtual_tokens if cfg.adapter.method == "prompt_tuning" else 0
    # Pairs share their prompt: one row per pair computes it once (custom 4D attention masks need
    # transformers' own mask code, the same condition as padding-free packing).
    shared_prompt = (not unpaired and position_offset == 0 and cfg.model.attn_implementation in ("sdpa", "eager")
                     and model_supports_packing(model))
    pair_collate = collate_pairs_shared_prompt if shared_prompt else collate_pairs
    collate = partial(collate_unpaired if unpaired else pair_collate, pad_token_id=tokenizer.pad_token_id)
    forward = shared_prompt_logps if shared_prompt else partial(concatenated_logps, position_offset=position_offset)
    # With the adapter disabled, prompt tuning prepends no soft tokens: the reference has no offset.
    reference_forward = partial(concatenated_logps, position_offset=0) if position_offset else forward
    reference_kind = (
        "none" if not cfg.uses_reference else "cached" if cfg.precompute_reference
        else "adapter disabled" if has_adapter else "frozen copy"
    )
    if main:
        console.print(
            f"[bold]{cfg.loss}[/] {cfg.model.name} ({dtype}, {accelerator.device}, {world} process(es)) "
            f"adapter={cfg.adapter.method} trainable={trainable:,}/{total:,} ({100 * trainable / total:.2f}%) "
            f"beta={params.beta} reference={reference_kind} layout={'shared prompt' if shared_prompt else 'padded'}"
        )

    model.to(accelerator.device)
    cached = None
    if cfg.precompute_reference:
        fingerprint = reference_fingerprint(cfg, data, weights_dtype, dtype)
        splits = {"train": data.train, "validation": data.validation}
        with autocast():
            cached = cached_reference_logps(
                model, splits, collate, reference_forward, accelerator, cfg.train.batch_size, fingerprint,
                reference_cache_path(cfg.reference_cache_dir, fingerprint), has_adapter, show,
            )

    optimizer = build_optimizer(model, cfg.train)
    plan = BatchPlan(len(data.train), cfg.train.batch_size, cfg.train.grad_accum, world, cfg.train.seed)
    total_steps = plan.total_steps(cfg.train.epochs, cfg.train.max_steps)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    start_step, elapsed_before = 0, 0.0
    checkpoints = out / "checkpoints"
    if cfg.run.resume and (ckpt := latest_checkpoint(checkpoints)) is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator)
        start_step, elapsed_before = state["step"], state.get("elapsed_s", 0.0)
        if main:
            console.print(f"resumed from {ckpt} at step {start_step}/{total_steps}")

    reference = make_reference(
        cached=cached, reference_model=reference_model,
        policy=accelerator.unwrap_model(model) if has_adapter and cfg.uses_reference and cached is None else None,
        forward=reference_forward,
    )
    compute = partial(preference_step_loss, loss_name=loss_name, params=params, forward=forward, reference=reference)
    logger = MetricLogger(out, cfg.run.report_to, enabled=main, run_name=out.name, config=to_dict(cfg))

    def checkpoint(step: int) -> None:
        save_checkpoint(
            checkpoints, step, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
            keep_last=cfg.run.keep_last,
            trainer_state={"step": step, "epoch": plan.epoch_of(step), "elapsed_s": elapsed_before + time.perf_counter() - t0},
        )

    # ---------------------------------------------------------------- loop
    t0 = time.perf_counter()
    window_examples, window_tokens, window_start = 0, 0, time.perf_counter()
    done = start_step
    model.train()
    try:
        with progress_bar(cfg.loss, total_steps, enabled=show, completed=start_step) as bar:
            for step in range(start_step, total_steps):
                global_batch = plan.global_batch(step)
                n_global = len(global_batch)
                sums = MetricSums(accelerator.device)
                micro_batches = plan.micro_batches(step, rank)
                for m, indices in enumerate(micro_batches):
                    batch = {k: v.to(accelerator.device) for k, v in collate([data.train[i] for i in indices]).items()}
                    sync = m == len(micro_batches) - 1  # synchronise gradients on the last micro-batch only
                    with contextlib.nullcontext() if sync else accelerator.no_sync(model), autocast():
                        result = compute(model, batch, indices, "train")
                        accelerator.backward(result.losses.sum() * world / n_global)
                    sums.add({"loss": result.losses, **result.metrics})
                max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm is not None else math.inf
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                release_host_memory(accelerator.device)
                done = step + 1

                window_examples += n_global
                window_tokens += sum(_num_tokens(data.train[i]) for i in global_batch)
                if done % cfg.run.log_every == 0 or done == total_steps:
                    means = summarise(sums, accelerator, metric_keys(loss_name))
                    now = time.perf_counter()
                    span = max(now - window_start, 1e-9)
                    row = {
                        "split": "train", "step": done, "epoch": round(plan.epoch_of(done), 4), **means,
                        "lr": lr, "grad_norm": float(grad_norm),
                        "examples_per_s": window_examples / span, "tokens_per_s": window_tokens / span,
                        "elapsed_s": round(elapsed_before + now - t0, 3),
                    }
                    window_examples, window_tokens, window_start = 0, 0, now
                    logger.log(row)
                    bar.update(completed=done, loss=means["loss"], margin=means.get("margins") or 0.0,
                               acc=means.get("accuracies") or 0.0)
                if data.validation and cfg.run.eval_every and done % cfg.run.eval_every == 0 and done < total_steps:
                    with autocast():
                        _log_eval(model, data.validation, collate, compute, accelerator, cfg, logger, done, plan)
                if cfg.run.save_every and done % cfg.run.save_every == 0 and done < total_steps:
                    checkpoint(done)
    except KeyboardInterrupt:
        if done > start_step:
            checkpoint(done)
            if main:
                console.print(
                    f"[yellow]interrupted: checkpoint saved at step {done} in {checkpoints}; continue with run.resume=true[/]"
                )
        logger.close()
        raise SystemExit(130) from None

    # ---------------------------------------------------------------- save
    if data.validation:
        with autocast():
            _log_eval(model, data.validation, collate, compute, accelerator, cfg, logger, total_steps, plan)
    if start_step < total_steps:
        checkpoint(total_steps)
    final_dir = out / "final"
    restore_head(model)
    if main:
        save_final(accelerator.unwrap_model(model), tokenizer, final_dir, merge=cfg.adapter.merge)
        console.print(f"saved {final_dir}")
        if before is not None:
            after = _answer_samples(cfg, accelerator.unwrap_model(model), tokenizer)
            _report_samples(out, cfg.samples, before, after)
    accelerator.wait_for_everyone()
    logger.close()
    accelerator.end_training()
    return final_dir


# ----------------------------------------------------------------------------------------------
# Log-probabilities and the loss of one micro-batch
# ----------------------------------------------------------------------------------------------


def concatenated_logps(model: Any, batch: dict[str, torch.Tensor], position_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the answer tokens of every row, and their counts.  [N], [N]

    One forward pass over the whole padded batch. Positions come from the attention mask, so rows
    padded on the left get the same positions as unpadded ones; the output head runs only where the
    next token is an answer token of some row. When the model's frozen head was replaced by a
    :class:`HiddenStatesHead`, the forward returns hidden states and the log-probabilities come from
    :func:`~affinage.losses.preference.frozen_head_logps`, which never holds the logits.
    """
    from affinage.models.adapters import unwrap_to_base

    labels = batch["labels"]  # [N, T]
    positions = trainable_positions(labels)  # [P]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if position_offset == 0:  # prompt tuning's soft tokens get their positions from peft
        inputs["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    out = model(**inputs, logits_to_keep=positions + position_offset, use_cache=False).logits  # [N, P, V or H]
    targets = shifted_targets(labels)[:, positions]  # [N, P]
    head = unwrap_to_base(model).get_output_embeddings()
    if not isinstance(head, HiddenStatesHead):
        return sequence_logps(out, targets)
    mask = targets != IGNORE_INDEX  # [N, P]
    token_logps = frozen_head_logps(out[mask], head.weight, targets[mask])  # [M]
    per_position = torch.zeros(targets.shape, dtype=token_logps.dtype, device=token_logps.device)
    per_position = per_position.masked_scatter(mask, token_logps)
    return per_position.sum(dim=-1), mask.sum(dim=-1).float()


def shared_prompt_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`concatenated_logps` for a batch of :func:`~affinage.data.preference.collate_pairs_shared_prompt`:
    one row per pair, the shared prompt computed once.  -> logps [2B] (chosen, then rejected), lengths [2B]"""
    from affinage.models.adapters import unwrap_to_base

    rows, cols = batch["predictor_row"], batch["predictor_col"]  # [M]
    positions, index = torch.unique(cols, return_inverse=True)  # [P], [M]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=positions, use_cache=False).logits  # [B, P, V or H]
    selected = out[rows, index]  # [M, V or H]
    head = unwrap_to_base(model).get_output_embeddings()
    if isinstance(head, HiddenStatesHead):
        token_logps = frozen_head_logps(selected, head.weight, batch["target_ids"])  # [M]
    else:
        token_logps = torch.log_softmax(selected.float(), dim=-1).gather(1, batch["target_ids"][:, None]).squeeze(1)
    b = batch["input_ids"].shape[0]
    sums, counts = [], []
    for weight in (batch["chosen_weight"], batch["rejected_weight"]):
        sums.append(torch.zeros(b, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps * weight))
        counts.append(torch.zeros(b, device=weight.device).index_add(0, rows, weight))
    return torch.cat(sums), torch.cat(counts)


class HiddenStatesHead(torch.nn.Module):
    """Stands in for a frozen, bias-free output head: returns its input, the final hidden states.

    It holds the head's weight under the same name (``lm_head.weight``), so parameters, tying and
    checkpoints are unchanged; :func:`concatenated_logps` then applies the head itself through
    :func:`~affinage.losses.preference.frozen_head_logps`, which saves the ``[N, P, V]`` logits, their
    softmax and their gradient (about 0.5 GB for 4 pairs of 150 tokens on SmolLM2).
    """

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = head.weight
        object.__setattr__(self, "original", head)  # not a submodule: the weight is registered once

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def use_hidden_states_head(model: Any) -> bool:
    """Replace the output head of ``model`` by a :class:`HiddenStatesHead` when it is a frozen
    ``nn.Linear`` without bias (LoRA, DoRA, prompt tuning, a frozen reference); return whether it did."""
    from affinage.models.adapters import unwrap_to_base

    base = unwrap_to_base(model)
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return False
    base.set_output_embeddings(HiddenStatesHead(head))
    return True


def restore_head(model: Any) -> None:
    """Undo :func:`use_hidden_states_head` (before generating or saving)."""
    from affinage.models.adapters import unwrap_to_base

    base = unwrap_to_base(model)
    head = base.get_output_embeddings()
    if isinstance(head, HiddenStatesHead):
        base.set_output_embeddings(head.original)


ReferenceFn = Callable[[dict[str, torch.Tensor], list[int], str], torch.Tensor | None]


def make_reference(*, cached: dict[str, torch.Tensor] | None, reference_model: Any, policy: Any, forward: Callable) -> ReferenceFn:
    """``reference(batch, indices, split) -> log pi_ref of the batch's rows [N]`` (or None: reference-free).

    ``cached``: per split, a ``[n_examples, 2]`` table (chosen/answer, rejected/KL sequence).
    ``reference_model``: a frozen copy. ``policy``: the peft policy, run with its adapter disabled.
    """
    from affinage.models.adapters import disabled_adapter

    if cached is not None:
        def from_cache(batch, indices, split):
            table = cached[split][indices].to(batch["input_ids"].device)  # [B, 2]
            return torch.cat([table[:, 0], table[:, 1]])

        return from_cache
    if reference_model is not None:
        def from_copy(batch, indices, split):
            with torch.no_grad():
                return forward(reference_model, batch)[0]

        return from_copy
    if policy is not None:
        def from_disabled_adapter(batch, indices, split):
            with torch.no_grad(), disabled_adapter(policy):
                return forward(policy, batch)[0]

        return from_disabled_adapter
    return lambda batch, indices, split: None


def preference_step_loss(
    model: Any, batch: dict[str, torch.Tensor], indices: list[int], split: str, *,
    loss_name: PreferenceLossName, params: PreferenceLossParams, forward: Callable, reference: ReferenceFn,
) -> PreferenceLossOutput:
    """Per-example losses and metrics of one micro-batch: reference, policy forward, loss.

    The reference runs first, so its transient memory is freed before the policy's activations are held.
    """
    reference_logps = reference(batch, indices, split)
    logps, lengths = forward(model, batch)  # [2B], [2B]
    b = len(logps) // 2
    if loss_name == PreferenceLossName.KTO:
        desirable = batch["desirable"]
        inputs = UnpairedLogps(logps[:b], reference_logps[:b], desirable, logps[b:], reference_logps[b:])
        out = preference_loss(loss_name, inputs, params)
        nan = torch.full_like(logps[:b], float("nan"))
        out.metrics["chosen_logps"] = torch.where(desirable, logps[:b].detach(), nan)
        out.metrics["rejected_logps"] = torch.where(desirable, nan, logps[:b].detach())
        return out
    ref_chosen, ref_rejected = (None, None) if reference_logps is None else (reference_logps[:b], reference_logps[b:])
    out = preference_loss(loss_name, PairLogps(logps[:b], logps[b:], lengths[:b], lengths[b:], ref_chosen, ref_rejected), params)
    out.metrics["chosen_logps"] = logps[:b].detach()
    out.metrics["rejected_logps"] = logps[b:].detach()
    return out


def metric_keys(loss_name: PreferenceLossName) -> list[str]:
    """The metrics logged for ``loss_name`` (the same list on every process)."""
    keys = ["loss", "chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps"]
    if loss_name == PreferenceLossName.KTO:
        return [*keys, "kl"]
    keys += ["margins", "accuracies"]
    if loss_name == PreferenceLossName.RPO:
        keys.append("nll")
    if loss_name == PreferenceLossName.ORPO:
        keys += ["nll", "log_odds_ratio"]
    return keys


def summarise(sums: MetricSums, accelerator: Any, keys: list[str]) -> dict[str, float | None]:
    """Global means of ``keys``; KTO's margin from its two reward means."""
    means = sums.means(accelerator, keys)
    if "margins" not in means and means.get("chosen_rewards") is not None and means.get("rejected_rewards") is not None:
        means["margins"] = means["chosen_rewards"] - means["rejected_rewards"]
    return means


@torch.no_grad()
def evaluate(
    model: Any, examples: list, collate: Callable, compute: Callable, accelerator: Any, batch_size: int, keys: list[str]
) -> dict[str, float | None]:
    """Mean loss and metrics on ``examples``, sharded over processes."""
    was_training = model.training
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    positions = list(range(rank, len(examples), world))
    sums = MetricSums(accelerator.device)
    for start in range(0, len(positions), batch_size):
        indices = positions[start : start + batch_size]
        batch = {k: v.to(accelerator.device) for k, v in collate([examples[i] for i in indices]).items()}
        result = compute(model, batch, indices, "validation")
        sums.add({"loss": result.losses, **result.metrics})
    if was_training:
        model.train()
    return summarise(sums, accelerator, keys)


def _log_eval(model, examples, collate, compute, accelerator, cfg, logger, step, plan) -> None:
    metrics = evaluate(model, examples, collate, compute, accelerator, cfg.train.batch_size, metric_keys(cfg.loss_name))
    logger.log({"split": "eval", "step": step, "epoch": round(plan.epoch_of(step), 4), **metrics})
    if accelerator.is_main_process:
        margin, accuracy = metrics.get("margins"), metrics.get("accuracies")
        extra = f"  margin {margin:.4f}" if margin is not None else ""
        extra += f"  accuracy {accuracy:.3f}" if accuracy is not None else ""
        console.print(f"step {step}: eval loss {metrics['loss']:.4f}{extra}")


def _num_tokens(item: Any) -> int:
    if hasattr(item, "rejected"):
        return len(item.chosen) + len(item.rejected)
    return len(item.completion) + len(item.kl)


# ----------------------------------------------------------------------------------------------
# Precomputed reference log-probabilities
# ----------------------------------------------------------------------------------------------


def reference_fingerprint(cfg: DPOConfig, data: Any, weights_dtype: torch.dtype, compute_dtype: torch.dtype) -> str:
    """SHA-256 of what the reference log-probabilities depend on: the model (its name, resolved
    location, revision and the size and modification time of its weight files), the dtypes and
    attention implementation, the prompt-tuning offset, and every token id and label of the data."""
    from affinage.models.loading import resolve_model

    source = resolve_model(cfg.model.name)
    weights = []
    path = Path(source.path)
    if path.is_dir():
        for file in sorted(path.iterdir()):
            if file.suffix in (".safetensors", ".bin", ".gguf"):
                stat = file.stat()
                weights.append([file.name, stat.st_size, stat.st_mtime_ns])
    elif path.is_file():
        stat = path.stat()
        weights.append([path.name, stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256()
    header = {
        "model": cfg.model.name, "kind": source.kind, "path": source.path, "revision": cfg.model.revision,
        "weights": weights, "weights_dtype": str(weights_dtype), "compute_dtype": str(compute_dtype),
        "attn": cfg.model.attn_implementation, "adapter": cfg.adapter.method if cfg.adapter.method == "prompt_tuning" else "-",
        "data_kind": data.kind,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for split in (data.train, data.validation):
        digest.update(f"split:{len(split)}".encode())
        for item in split:
            sequences = (item.chosen, item.rejected) if data.kind == "pairs" else (item.completion, item.kl)
            for seq in sequences:
                digest.update(torch.tensor(seq.input_ids, dtype=torch.int64).numpy().tobytes())
                digest.update(torch.tensor(seq.labels, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def reference_cache_path(cache_dir: str | None, fingerprint: str) -> Path:
    from affinage.models.loading import affinage_home

    root = Path(cache_dir).expanduser() if cache_dir else affinage_home() / "reference-logps"
    return root / f"{fingerprint[:32]}.safetensors"


@torch.no_grad()
def cached_reference_logps(
    model: Any, splits: dict[str, list], collate: Callable, forward: Callable, accelerator: Any, batch_size: int,
    fingerprint: str, path: Path, has_adapter: bool, show: bool,
) -> dict[str, torch.Tensor]:
    """Reference log-probabilities of every example, ``{split: [n, 2]}``: read from ``path`` when it
    holds the same fingerprint, else computed (sharded over processes) and written atomically."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from affinage.models.adapters import disabled_adapter

    main = accelerator.is_main_process
    if path.is_file():
        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("fingerprint") == fingerprint:
                if main:
                    console.print(f"reference log-probs: read from the cache {path}")
                return {name: handle.get_tensor(name) for name in splits}
    rank, world = accelerator.process_index, accelerator.num_processes
    was_training = model.training
    model.eval()
    tables = {}
    batches = sum(math.ceil(len(range(rank, len(items), world)) / batch_size) for items in splits.values())
    with progress_bar("reference log-probs", batches, enabled=show) as bar:
        for name, items in splits.items():
            table = torch.zeros(len(items), 2, dtype=torch.float32, device=accelerator.device)
            positions = list(range(rank, len(items), world))
            for start in range(0, len(positions), batch_size):
                indices = positions[start : start + batch_size]
                batch = {k: v.to(accelerator.device) for k, v in collate([items[i] for i in indices]).items()}
                with disabled_adapter(model) if has_adapter else contextlib.nullcontext():
                    logps = forward(model, batch)[0].float()
                b = len(indices)
                table[indices] = torch.stack([logps[:b], logps[b:]], dim=1)
                bar.update(advance=1)
            # every example was computed by exactly one process: a sum gathers them
            tables[name] = accelerator.reduce(table, reduction="sum").cpu()
    if was_training:
        model.train()
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({k: v.contiguous() for k, v in tables.items()}, str(tmp), metadata={"fingerprint": fingerprint})
        os.replace(tmp, path)
        console.print(f"reference log-probs: computed for {sum(len(v) for v in splits.values())} examples, cached in {path}")
    accelerator.wait_for_everyone()
    return tables
