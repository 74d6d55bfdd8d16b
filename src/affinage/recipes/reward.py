"""Reward models: a scalar head on a causal language model, trained on preference pairs with the
Bradley-Terry ranking loss (and Llama 2's margin), saved so that
``transformers.AutoModelForSequenceClassification.from_pretrained(final)`` loads it.

The model is the backbone loaded as ``AutoModelForSequenceClassification`` with ``num_labels=1``:
transformers adds a linear ``score`` head and reads the reward at the last token that is not
padding. Each micro-batch of B pairs is one padded batch ``[2B, T]`` (chosen rows, then rejected
rows) and goes through the model in one forward pass. What trains:

* ``adapter.method: full``: every weight;
* ``lora`` / ``dora``: a peft adapter (task SEQ_CLS) with the ``score`` head fully trainable
  (peft's ``modules_to_save``); ``final/`` holds the merged weights, the adapter sits in ``final/adapter``;
* ``freeze``: the head plus the parameters matching ``adapter.trainable``; with an empty list, the
  backbone is frozen and only the head trains (a linear probe on the LM's last hidden state).

Validation reports accuracy (chosen scored above rejected) overall, per Llama 2 strength bucket and
per category, and the mean margin ``r(chosen) - r(rejected)``. As in the SFT recipe, the loss of a
step is the mean over the global batch of pairs, so accumulation and processes are exact.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from affinage.config import AdapterConfig, ModelConfig, RunConfig, TrainConfig, _check, to_dict
from affinage.data.preference import STRENGTHS, PreferenceDataConfig, TokenizedPair
from affinage.engine.batching import BatchPlan
from affinage.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from affinage.engine.metrics import MetricLogger
from affinage.engine.optim import build_optimizer, build_scheduler
from affinage.engine.progress import console, progress_bar
from affinage.engine.runtime import make_accelerator, prepare_run_dir, release_host_memory, seed_everything
from affinage.errors import ConfigError, ModelError
from affinage.losses.preference import bradley_terry_loss
from affinage.recipes.preference_common import MetricSums, validate_sections
from affinage.utils.fs import atomic_directory, atomic_write_text


@dataclass
class RewardConfig:
    """Reward-model training: ``affinage rm CONFIG.yaml``."""

    stage: Literal["rm"] = "rm"
    model: ModelConfig = field(default_factory=ModelConfig)
    """The backbone: a causal LM (its output head is replaced by a scalar ``score`` head)."""
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(method="full"))
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-5, warmup_ratio=0.05))
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/rm"))
    margin: Literal["none", "small", "large"] = "none"
    """Llama 2 margin m(r) in the loss: its 'small' or 'large' table by strength (a row's numeric
    ``margin`` wins), or none."""
    center_rewards_coefficient: float | None = None
    """Adds c * (r_chosen + r_rejected)^2 to keep rewards centred on 0 (Eisenstein et al. 2023)."""

    def validate(self) -> None:
        validate_sections(self.train, self.run, self.adapter, self.data)
        _check(self.adapter.method != "prompt_tuning", "adapter.method",
               "prompt_tuning is not supported for reward models; use full, lora, dora or freeze")
        _check(self.adapter.merge, "adapter.merge",
               "must be true for reward models: the trained score head lives in the merged weights of final/")
        _check(self.center_rewards_coefficient is None or self.center_rewards_coefficient >= 0,
               "center_rewards_coefficient", "must be >= 0 or null")


# ----------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------


def train(cfg: RewardConfig) -> Path:
    """Train a reward model as ``cfg`` describes; return the ``final/`` model directory."""
    from transformers.utils import logging as hf_logging

    from affinage.data.preference import collate_pairs, load_preference_data
    from affinage.models.adapters import count_parameters
    from affinage.models.loading import load_tokenizer, resolve_dtype

    # ---------------------------------------------------------------- setup
    accelerator = make_accelerator()
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    out = prepare_run_dir(cfg.run.output_dir, cfg, resume=cfg.run.resume, is_main=main)
    seed_everything(cfg.train.seed)
    show = cfg.run.progress and main

    tokenizer = load_tokenizer(
        cfg.model.name, chat_template=cfg.model.chat_template, revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    hf_logging.disable_progress_bar()
    pad_note = use_distinct_pad_token(tokenizer)
    data = load_preference_data(cfg.data, tokenizer)
    if main:
        data.print_report(console)
    dtype = resolve_dtype(cfg.model.dtype, accelerator.device)
    weights_dtype = torch.float32 if cfg.adapter.method in ("full", "freeze") else dtype
    autocast = partial(torch.autocast, accelerator.device.type, dtype=dtype, enabled=dtype != weights_dtype)
    model = load_reward_model(cfg.model, dtype=weights_dtype, pad_token_id=tokenizer.pad_token_id)
    model = apply_reward_adapter(model, cfg.adapter, gradient_checkpointing=cfg.model.gradient_checkpointing)
    trainable, total = count_parameters(model)
    if main:
        console.print(
            f"[bold]rm[/] {cfg.model.name} ({dtype}, {accelerator.device}, {world} process(es)) "
            f"adapter={cfg.adapter.method} trainable={trainable:,}/{total:,} ({100 * trainable / total:.2f}%) "
            f"margin={cfg.margin}"
        )
        if pad_note:
            console.print(pad_note)

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

    collate = partial(collate_pairs, pad_token_id=tokenizer.pad_token_id)
    compute = partial(pair_loss, margin_scale=cfg.margin, center=cfg.center_rewards_coefficient)
    logger = MetricLogger(out, cfg.run.report_to, enabled=main, run_name=out.name, config=to_dict(cfg))
    train_keys = ["loss", "accuracies", "margins", "chosen_rewards", "rejected_rewards"]

    def checkpoint(step: int) -> None:
        save_checkpoint(
            checkpoints, step, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
            keep_last=cfg.run.keep_last,
            trainer_state={"step": step, "epoch": plan.epoch_of(step), "elapsed_s": elapsed_before + time.perf_counter() - t0},
        )

    # ---------------------------------------------------------------- loop
    t0 = time.perf_counter()
    window_pairs, window_start = 0, time.perf_counter()
    done = start_step
    model.train()
    try:
        with progress_bar("rm", total_steps, enabled=show, completed=start_step) as bar:
            for step in range(start_step, total_steps):
                global_batch = plan.global_batch(step)
                n_global = len(global_batch)
                sums = MetricSums(accelerator.device)
                micro_batches = plan.micro_batches(step, rank)
                for m, indices in enumerate(micro_batches):
                    pairs = [data.train[i] for i in indices]
                    batch = {k: v.to(accelerator.device) for k, v in collate(pairs).items()}
                    sync = m == len(micro_batches) - 1
                    with contextlib.nullcontext() if sync else accelerator.no_sync(model), autocast():
                        result = compute(model, batch, pairs)
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

                window_pairs += n_global
                if done % cfg.run.log_every == 0 or done == total_steps:
                    means = sums.means(accelerator, train_keys)
                    now = time.perf_counter()
                    row = {
                        "split": "train", "step": done, "epoch": round(plan.epoch_of(done), 4), **means,
                        "lr": lr, "grad_norm": float(grad_norm),
                        "pairs_per_s": window_pairs / max(now - window_start, 1e-9),
                        "elapsed_s": round(elapsed_before + now - t0, 3),
                    }
                    window_pairs, window_start = 0, now
                    logger.log(row)
                    bar.update(completed=done, loss=means["loss"], acc=means["accuracies"])
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
            metrics = _log_eval(model, data.validation, collate, compute, accelerator, cfg, logger, total_steps, plan)
        if main:
            _print_eval_table(metrics)
            atomic_write_text(out / "eval.json", json.dumps(metrics, indent=2) + "\n")
    if start_step < total_steps:
        checkpoint(total_steps)
    final_dir = out / "final"
    if main:
        save_reward_model(accelerator.unwrap_model(model), tokenizer, final_dir)
        console.print(f"saved {final_dir} (loads with AutoModelForSequenceClassification)")
    accelerator.wait_for_everyone()
    logger.close()
    accelerator.end_training()
    return final_dir


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def load_reward_model(model_cfg: ModelConfig, *, dtype: torch.dtype, pad_token_id: int) -> Any:
    """The backbone as ``AutoModelForSequenceClassification`` with one label (a new ``score`` head
    when the directory holds a causal LM; the trained head when it holds a reward model)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from affinage.models.loading import resolve_model

    source = resolve_model(model_cfg.name)
    if source.kind == "gguf":
        raise ModelError(
            f"model '{model_cfg.name}' is a GGUF file; a reward model needs a Hugging Face directory. "
            "Use a built-in alias (converted on first use) or convert the file with save_pretrained."
        )
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": model_cfg.trust_remote_code,
                              "attn_implementation": model_cfg.attn_implementation, "num_labels": 1}
    if source.kind == "hub":
        kwargs["revision"] = model_cfg.revision
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "score.weight newly initialised" report is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load '{model_cfg.name}' as a reward model from {source.path}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    # The reward is read at the last token that is not padding: the model must know the pad id.
    model.config.pad_token_id = pad_token_id
    return model


def use_distinct_pad_token(tokenizer: Any) -> str | None:
    """Make padding use a token that never appears in text; return a note when that is impossible.

    transformers reads a sequence-classification reward at the last token that is not
    ``pad_token_id``. Many chat tokenizers pad with their end-of-turn token, which also closes every
    answer: the reward would then be read one token early (or at an earlier turn's end). Padding
    with an unused special token (``unk``, a reserved pad token) makes the last real token the one
    read, in training, in ``rm score`` and for anyone calling the saved model with padded batches.
    """
    eos, bos = tokenizer.eos_token, tokenizer.bos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token not in (eos, bos):
        return None
    sample = ""
    if getattr(tokenizer, "chat_template", None):
        with contextlib.suppress(Exception):
            sample = tokenizer.apply_chat_template(
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], tokenize=False
            )
    candidates = [tokenizer.unk_token, *getattr(tokenizer, "all_special_tokens", [])]
    for token in candidates:
        if token and token not in (eos, bos) and token not in sample:
            tokenizer.pad_token = token
            return None
    return (f"note: the tokenizer pads with {tokenizer.pad_token!r}, which also ends answers; the reward is "
            "read at the last token that is not padding (transformers' rule) in training and scoring alike")


def apply_reward_adapter(model: Any, cfg: AdapterConfig, *, gradient_checkpointing: bool = False) -> torch.nn.Module:
    """What trains (see the module docstring); the ``score`` head always does."""
    if gradient_checkpointing:
        # transformers >= 5.x renamed gradient_checkpointing_enable to activation_checkpointing_enable.
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if cfg.method in ("lora", "dora"):
        from peft import LoraConfig, get_peft_model

        targets: str | list[str] = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
        if targets == "all-linear":
            # every linear layer of the backbone; the head is trained in full (modules_to_save), not by LoRA
            targets = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                              if isinstance(mod, torch.nn.Linear) and not name.startswith("score")})
        lora = LoraConfig(task_type="SEQ_CLS", r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=targets, use_dora=cfg.method == "dora", bias="none", modules_to_save=["score"])
        try:
            return get_peft_model(model, lora)
        except ValueError as exc:
            raise ModelError(f"config key 'adapter.target_modules' = {cfg.target_modules}: {exc}") from exc
    if cfg.method == "freeze":
        import re

        try:
            patterns = [re.compile(p) for p in cfg.trainable]
        except re.error as exc:
            raise ModelError(f"config key 'adapter.trainable': invalid regular expression ({exc})") from exc
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("score.") or any(p.search(name) for p in patterns))
        return model
    raise ConfigError(f"config key 'adapter.method' = {cfg.method!r} is not supported for reward models")


def save_reward_model(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write ``out_dir`` (atomically) so that ``AutoModelForSequenceClassification.from_pretrained``
    loads it: plain models as they are; peft models merged, with the adapter in ``out_dir/adapter``.
    A peft model is merged in place (call this at the end of training)."""
    from peft import PeftModel

    from affinage.models.adapters import unwrap_to_base

    with atomic_directory(out_dir) as tmp:
        if isinstance(model, PeftModel):
            model.save_pretrained(tmp / "adapter")
            model = model.merge_and_unload()
        else:
            model = unwrap_to_base(model)
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def rewards_of(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The scalar reward of every row of a padded batch.  [N]"""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[:, 0].float()


def pair_loss(model: Any, batch: dict[str, torch.Tensor], pairs: list[TokenizedPair], *, margin_scale: str,
              center: float | None):
    """Bradley-Terry loss and metrics of one micro-batch of pairs (one forward over ``[2B, T]``)."""
    rewards = rewards_of(model, batch)  # [2B]
    b = len(pairs)
    margin = None
    if margin_scale != "none":
        margin = torch.tensor([p.margin_value(margin_scale) for p in pairs], device=rewards.device)
    return bradley_terry_loss(rewards[:b], rewards[b:], margin, center_rewards_coefficient=center)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _bucket_metrics(result_metrics: dict[str, torch.Tensor], pairs: list[TokenizedPair]) -> dict[str, torch.Tensor]:
    """Accuracy per strength bucket and per category: NaN outside the bucket."""
    accuracies = result_metrics["accuracies"]
    out = {}
    for key, values in (("strength", [p.strength for p in pairs]), ("category", [p.category for p in pairs])):
        for value in {v for v in values if v}:
            inside = torch.tensor([v == value for v in values], device=accuracies.device)
            out[f"accuracy/{key}/{value}"] = torch.where(inside, accuracies, torch.full_like(accuracies, float("nan")))
    return out


def eval_keys(examples: list[TokenizedPair]) -> list[str]:
    strengths = [s for s in STRENGTHS if any(p.strength == s for p in examples)]
    categories = sorted({p.category for p in examples if p.category})
    return (["loss", "accuracies", "margins", "chosen_rewards", "rejected_rewards"]
            + [f"accuracy/strength/{s}" for s in strengths] + [f"accuracy/category/{c}" for c in categories])


@torch.no_grad()
def evaluate(model: Any, examples: list[TokenizedPair], collate: Any, compute: Any, accelerator: Any,
             batch_size: int) -> dict[str, float | None]:
    """Loss, accuracy (overall, per strength, per category) and mean margin on ``examples``."""
    was_training = model.training
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    shard = examples[rank::world]
    sums = MetricSums(accelerator.device)
    for start in range(0, len(shard), batch_size):
        pairs = shard[start : start + batch_size]
        batch = {k: v.to(accelerator.device) for k, v in collate(pairs).items()}
        result = compute(model, batch, pairs)
        sums.add({"loss": result.losses, **result.metrics, **_bucket_metrics(result.metrics, pairs)})
    if was_training:
        model.train()
    means = sums.means(accelerator, eval_keys(examples))
    means["pairs"] = len(examples)
    return means


def _log_eval(model, examples, collate, compute, accelerator, cfg, logger, step, plan) -> dict[str, Any]:
    metrics = evaluate(model, examples, collate, compute, accelerator, cfg.train.batch_size)
    logger.log({"split": "eval", "step": step, "epoch": round(plan.epoch_of(step), 4), **metrics})
    if accelerator.is_main_process:
        console.print(f"step {step}: eval loss {metrics['loss']:.4f}  accuracy {metrics['accuracies']:.3f}  "
                      f"margin {metrics['margins']:.3f}")
    return metrics


def _print_eval_table(metrics: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="Reward model on the validation pairs", title_justify="left")
    table.add_column("pairs")
    table.add_column("accuracy", justify="right")
    table.add_row(f"all ({metrics['pairs']})", f"{metrics['accuracies']:.3f}")
    for key, value in metrics.items():
        if key.startswith("accuracy/") and value is not None:
            _, kind, name = key.split("/", 2)
            table.add_row(f"{kind} = {name}", f"{value:.3f}")
    console.print(table)
    console.print(f"mean margin r(chosen) - r(rejected): {metrics['margins']:.4f}")


# ----------------------------------------------------------------------------------------------
# Scoring: affinage rm score
# ----------------------------------------------------------------------------------------------


def score_file(model_name: str, input_path: str, output_path: str, *, batch_size: int = 8, max_length: int = 1024,
               system_prompt: str | None = None, dtype: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Score every row of ``input_path`` with the reward model ``model_name``; write ``output_path``
    (JSONL, atomically): each input row plus ``reward`` (prompt/completion or messages rows) or
    ``chosen_reward``, ``rejected_reward`` and ``reward_margin`` (pair rows). Returns a summary."""
    from transformers.utils import logging as hf_logging

    from affinage.data.io import read_rows, write_jsonl
    from affinage.models.loading import load_tokenizer, resolve_dtype

    hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(model_name)
    torch_dtype = resolve_dtype(dtype)
    model = load_reward_model(ModelConfig(name=model_name), dtype=torch_dtype, pad_token_id=tokenizer.pad_token_id)
    model.eval()
    rows = [row for _, row in read_rows(input_path)]
    # (row index, field) -> conversation to score
    jobs: list[tuple[int, str, list, list]] = []
    for index, row in enumerate(rows):
        where = f"{input_path}, row {index + 1}"
        for field_name, prompt, answer in _conversations_to_score(row, where):
            jobs.append((index, field_name, prompt, answer))
    scores = score_conversations(model, tokenizer, [(p, a) for _, _, p, a in jobs], batch_size=batch_size,
                                 max_length=max_length, system_prompt=system_prompt, progress=progress)
    out_rows = [dict(row) for row in rows]
    for (index, field_name, _, _), score in zip(jobs, scores, strict=True):
        out_rows[index][field_name] = score
    pairs = [r for r in out_rows if "chosen_reward" in r and r["chosen_reward"] is not None and r.get("rejected_reward") is not None]
    for r in pairs:
        r["reward_margin"] = r["chosen_reward"] - r["rejected_reward"]
    write_jsonl(output_path, out_rows)
    valid = [s for s in scores if s is not None]
    summary = {"rows": len(rows), "scored": len(valid), "skipped": len(scores) - len(valid),
               "mean_reward": sum(valid) / len(valid) if valid else None}
    if pairs:
        summary["pair_accuracy"] = sum(r["reward_margin"] > 0 for r in pairs) / len(pairs)
    return summary


def _conversations_to_score(row: dict[str, Any], where: str) -> list[tuple[str, list, list]]:
    """-> [(output field, prompt messages, answer messages)] for one input row."""
    from affinage.data.formats import to_example
    from affinage.data.preference import parse_pair
    from affinage.errors import DataError

    if "chosen" in row and "rejected" in row:
        pair = parse_pair(row, where)
        if isinstance(pair, str):
            return []  # empty or identical: nothing to compare
        return [("chosen_reward", pair.prompt, pair.chosen), ("rejected_reward", pair.prompt, pair.rejected)]
    if "messages" in row:
        messages = to_example(row, "messages", where).messages
        assert messages is not None
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return [("reward", messages[:last], messages[last:])]
    answer_key = next((k for k in ("completion", "answer", "response") if k in row), None)
    if "prompt" in row and answer_key:
        example = to_example({"prompt": row["prompt"], "completion": row[answer_key]}, "prompt_completion", where)
        messages = example.messages
        assert messages is not None
        first_answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return [("reward", messages[:first_answer], messages[first_answer:])]
    raise DataError(
        f"{where}: nothing to score; rows need prompt and completion (or answer/response), a messages "
        f"conversation ending with an assistant turn, or prompt/chosen/rejected pairs (keys: {', '.join(row)})"
    )


@torch.no_grad()
def score_conversations(model: Any, tokenizer: Any, conversations: list[tuple[list, list]], *, batch_size: int = 8,
                        max_length: int = 1024, system_prompt: str | None = None, progress: bool = False) -> list[float | None]:
    """Rewards of ``(prompt, answer)`` message lists, tokenised exactly as in training; None when the
    answer does not fit in ``max_length``."""
    from affinage.data.collate import collate_padded
    from affinage.data.preference import tokenize_conversation

    tokenized = [tokenize_conversation(tokenizer, p, a, max_length=max_length, system_prompt=system_prompt,
                                       where=f"conversation {i + 1}") for i, (p, a) in enumerate(conversations)]
    keep = [i for i, t in enumerate(tokenized) if not isinstance(t, str)]
    scores: list[float | None] = [None] * len(conversations)
    device = next(model.parameters()).device
    with progress_bar("score", math.ceil(len(keep) / batch_size), enabled=progress) as bar:
        for start in range(0, len(keep), batch_size):
            chunk = keep[start : start + batch_size]
            batch = collate_padded([tokenized[i] for i in chunk], tokenizer.pad_token_id)
            rewards = rewards_of(model, {k: v.to(device) for k, v in batch.items()})
            for i, r in zip(chunk, rewards.tolist(), strict=True):
                scores[i] = r
            bar.update(advance=1)
    return scores
