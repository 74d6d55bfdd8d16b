"""Supervised fine-tuning: full weights, LoRA, DoRA, prompt tuning or chosen layers.

Reads top to bottom: setup, an explicit loop over optimizer steps, save. The same file runs on one
process or under ``torchrun`` / ``accelerate launch`` (DDP, FSDP, DeepSpeed through accelerate).

The loss of one optimizer step is the sum of token cross-entropies over every trainable token of
the global batch (all micro-batches, all processes) divided by their number. Each micro-batch
contributes ``loss_sum * world_size / global_tokens`` to the backward pass: DDP averages gradients
over processes, which the ``world_size`` factor undoes. Gradient accumulation and data parallelism
then give the gradient of one large batch exactly (tested: 4 micro-batches of 1 == 1 batch of 4,
2 processes == 1 process).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from affinage.config import SFTConfig, to_dict
from affinage.engine.batching import BatchPlan
from affinage.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from affinage.engine.metrics import MetricLogger
from affinage.engine.optim import build_optimizer, build_scheduler
from affinage.engine.progress import console, progress_bar
from affinage.engine.runtime import make_accelerator, prepare_run_dir, release_host_memory, seed_everything
from affinage.errors import ConfigError
from affinage.losses.sft import shifted_targets, token_cross_entropy_sum, trainable_positions
from affinage.utils.fs import atomic_write_text


def train(cfg: SFTConfig) -> Path:
    """Run supervised fine-tuning as ``cfg`` describes; return the ``final/`` model directory."""
    from transformers.utils import logging as hf_logging

    from affinage.data.collate import collate_packed, collate_padded
    from affinage.data.sft import load_sft_data
    from affinage.doctor import preflight
    from affinage.models.adapters import apply_adapter, count_parameters, save_final
    from affinage.models.loading import load_model, load_tokenizer, model_supports_packing, resolve_dtype
    from affinage.models.packed_attention import use_packed_attention

    # ---------------------------------------------------------------- setup
    accelerator = make_accelerator()
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    out = prepare_run_dir(cfg.run.output_dir, cfg, resume=cfg.run.resume, is_main=main)
    seed_everything(cfg.train.seed)
    show = cfg.run.progress and main

    tokenizer = load_tokenizer(
        cfg.model.name,
        chat_template=cfg.model.chat_template,
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    hf_logging.disable_progress_bar()  # our own bars and tables say what is happening
    data = load_sft_data(cfg.data, tokenizer)
    if main:
        data.print_report(console)
    preflight(tokenizer, cfg.data, data, console=console if main else None)  # the doctor's checks; fatal -> DataError
    dtype = resolve_dtype(cfg.model.dtype, accelerator.device)
    # Full and layer-freezing fine-tuning keep fp32 master weights and compute in bf16 under
    # autocast: bf16 weights would round away most small AdamW updates. Adapters train in fp32
    # (peft upcasts them) on top of frozen weights stored in the compute dtype.
    weights_dtype = torch.float32 if cfg.adapter.method in ("full", "freeze") else dtype
    autocast = partial(torch.autocast, accelerator.device.type, dtype=dtype, enabled=dtype != weights_dtype)
    model = load_model(
        cfg.model.name,
        dtype=weights_dtype,
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
        attn_implementation=cfg.model.attn_implementation,
    )
    packing = _decide_packing(cfg, model_supports_packing(model))
    if packing:
        use_packed_attention(model)  # one causal attention per packed example, not a dense block mask
    model = apply_adapter(
        model, cfg.adapter, gradient_checkpointing=cfg.model.gradient_checkpointing, tokenizer=tokenizer
    )
    trainable, total = count_parameters(model)
    # Prompt tuning prepends soft tokens: logits of real positions are shifted by their number.
    position_offset = cfg.adapter.num_virtual_tokens if cfg.adapter.method == "prompt_tuning" else 0

    if main:
        console.print(
            f"[bold]sft[/] {cfg.model.name} ({dtype}, {accelerator.device}, {world} process(es)) "
            f"adapter={cfg.adapter.method} trainable={trainable:,}/{total:,} "
            f"({100 * trainable / total:.2f}%) packing={'on' if packing else 'off'}"
        )
    before = _answer_samples(cfg, model, tokenizer) if main and cfg.samples else None

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

    collate = collate_packed if packing else partial(collate_padded, pad_token_id=tokenizer.pad_token_id)
    trained_tokens = [_count_trained(ex.labels) for ex in data.train]
    logger = MetricLogger(out, cfg.run.report_to, enabled=main, run_name=out.name, config=to_dict(cfg))

    def checkpoint(step: int) -> None:
        save_checkpoint(
            checkpoints, step, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
            keep_last=cfg.run.keep_last,
            trainer_state={"step": step, "epoch": plan.epoch_of(step), "elapsed_s": elapsed_before + time.perf_counter() - t0},
        )

    # ---------------------------------------------------------------- loop
    t0 = time.perf_counter()
    window_tokens, window_start = 0, time.perf_counter()
    done = start_step  # optimizer steps completed
    model.train()
    try:
        with progress_bar("train", total_steps, enabled=show, completed=start_step) as bar:
            for step in range(start_step, total_steps):
                global_batch = plan.global_batch(step)
                global_trained = sum(trained_tokens[i] for i in global_batch)
                loss_sum = torch.zeros((), device=accelerator.device)
                micro_batches = plan.micro_batches(step, rank)
                for m, indices in enumerate(micro_batches):
                    batch = collate([data.train[i] for i in indices])
                    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                    # Synchronise gradients across processes only on the last micro-batch.
                    sync = m == len(micro_batches) - 1
                    with contextlib.nullcontext() if sync else accelerator.no_sync(model), autocast():
                        micro_sum, _ = causal_lm_loss_sum(model, batch, position_offset)
                        accelerator.backward(micro_sum * world / global_trained)
                    loss_sum += micro_sum.detach()
                max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm is not None else math.inf
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                release_host_memory(accelerator.device)
                done = step + 1

                window_tokens += sum(len(data.train[i].input_ids) for i in global_batch)
                if done % cfg.run.log_every == 0 or done == total_steps:
                    loss = (accelerator.reduce(loss_sum, reduction="sum") / global_trained).item()
                    now = time.perf_counter()
                    tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0, now
                    row = {
                        "split": "train", "step": done, "epoch": round(plan.epoch_of(done), 4),
                        "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
                        "tokens_per_s": tokens_per_s, "trained_tokens": global_trained,
                        "elapsed_s": round(elapsed_before + now - t0, 3),
                    }
                    logger.log(row)
                    bar.update(completed=done, loss=loss, lr=lr, tok_s=round(tokens_per_s, 1))
                if data.validation and cfg.run.eval_every and done % cfg.run.eval_every == 0 and done < total_steps:
                    with autocast():
                        _log_eval(model, data.validation, collate, accelerator, cfg, logger, done, plan, position_offset)
                if cfg.run.save_every and done % cfg.run.save_every == 0 and done < total_steps:
                    checkpoint(done)
    except KeyboardInterrupt:
        if done > start_step:
            checkpoint(done)
            if main:
                console.print(
                    f"[yellow]interrupted: checkpoint saved at step {done} in {checkpoints}; "
                    "continue with run.resume=true[/]"
                )
        logger.close()
        raise SystemExit(130) from None

    # ---------------------------------------------------------------- save
    if data.validation:
        with autocast():
            _log_eval(model, data.validation, collate, accelerator, cfg, logger, total_steps, plan, position_offset)
    if start_step < total_steps:
        checkpoint(total_steps)
    final_dir = out / "final"
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


def causal_lm_loss_sum(model: Any, batch: dict[str, torch.Tensor], position_offset: int = 0):
    """Summed next-token cross-entropy over trained tokens of one micro-batch, and their count.

    The output head runs only at positions whose next token is trained (``logits_to_keep``), which
    under assistant-only masking skips the vocabulary projection for prompts and padding.
    """
    labels = batch["labels"]  # [B, T]
    positions = trainable_positions(labels)  # [P]
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**inputs, logits_to_keep=positions + position_offset, use_cache=False).logits  # [B, P, V]
    targets = shifted_targets(labels)[:, positions]  # [B, P]
    return token_cross_entropy_sum(logits, targets)


@torch.no_grad()
def evaluate(model: Any, examples: list, collate: Any, accelerator: Any, batch_size: int, position_offset: int = 0):
    """Mean token loss and perplexity on ``examples``, sharded over processes."""
    was_training = model.training
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    shard = examples[rank::world]
    loss_sum = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    count = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    for start in range(0, len(shard), batch_size):
        batch = collate(shard[start : start + batch_size])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        s, n = causal_lm_loss_sum(model, batch, position_offset)
        loss_sum += s.double()
        count += n.double()
    loss_sum = accelerator.reduce(loss_sum, reduction="sum")
    count = accelerator.reduce(count, reduction="sum")
    if was_training:
        model.train()
    loss = (loss_sum / count.clamp(min=1)).item()
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(count.item())}


def _log_eval(model, examples, collate, accelerator, cfg, logger, step, plan, position_offset) -> None:
    metrics = evaluate(model, examples, collate, accelerator, cfg.train.batch_size, position_offset)
    logger.log({"split": "eval", "step": step, "epoch": round(plan.epoch_of(step), 4), **metrics})
    if accelerator.is_main_process:
        console.print(f"step {step}: eval loss {metrics['loss']:.4f}  perplexity {metrics['perplexity']:.2f}")


def _count_trained(labels: list[int]) -> int:
    return sum(1 for label in labels[1:] if label != -100)


def _decide_packing(cfg: SFTConfig, supported: bool) -> bool:
    mode = cfg.data.packing
    if cfg.adapter.method == "prompt_tuning":
        return False
    if mode == "on" and not supported:
        raise ConfigError(
            f"data.packing=on but {cfg.model.name} does not support padding-free packing "
            "(its attention ignores packed position_ids); use data.packing=auto or off"
        )
    return mode == "on" or (mode == "auto" and supported)


def _answer_samples(cfg: SFTConfig, model: Any, tokenizer: Any) -> list[str]:
    from affinage.generation.sampling import GenerationOptions, generate

    was_training = model.training
    model.eval()
    options = GenerationOptions(max_new_tokens=cfg.sample_max_new_tokens, temperature=0.0)
    answers = generate(
        model, tokenizer, list(cfg.samples), options, system_prompt=cfg.data.system_prompt, progress=cfg.run.progress
    )
    if was_training:
        model.train()
    return answers


def _report_samples(out: Path, prompts: list[str], before: list[str], after: list[str]) -> None:
    from rich.table import Table

    table = Table(title="Answers before and after fine-tuning", show_lines=True)
    table.add_column("question", ratio=1)
    table.add_column("before", ratio=2)
    table.add_column("after", ratio=2)
    for prompt, b, a in zip(prompts, before, after, strict=True):
        table.add_row(prompt, b.strip(), a.strip())
    console.print(table)
    rows = [json.dumps({"prompt": p, "before": b, "after": a}, ensure_ascii=False) for p, b, a in zip(prompts, before, after, strict=True)]
    atomic_write_text(out / "samples.jsonl", "\n".join(rows) + "\n")
