"""What the reward-model and DPO recipes share: validation of the common config sections and the
averaging of per-example metrics over a global batch (all micro-batches, all processes)."""

from __future__ import annotations

from typing import Any

import torch

from affinage.config import AdapterConfig, RunConfig, TrainConfig, _check
from affinage.data.preference import PreferenceDataConfig


def validate_sections(train: TrainConfig, run: RunConfig, adapter: AdapterConfig, data: PreferenceDataConfig) -> None:
    """The checks of SFTConfig.validate that apply to preference stages too."""
    t, r, a, d = train, run, adapter, data
    _check(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
    _check(t.batch_size >= 1, "train.batch_size", f"must be at least 1, got {t.batch_size}")
    _check(t.grad_accum >= 1, "train.grad_accum", f"must be at least 1, got {t.grad_accum}")
    _check(t.epochs > 0 or t.max_steps, "train.epochs", "must be positive (or set train.max_steps)")
    _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be at least 1")
    _check(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
    _check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    _check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
    _check(len(t.adam_betas) == 2, "train.adam_betas", "must hold two numbers, e.g. [0.9, 0.999]")
    _check(t.max_grad_norm is None or t.max_grad_norm > 0, "train.max_grad_norm", "must be positive or null")
    _check(bool(d.train), "data.train", "needs at least one file of preference pairs, e.g. "
           "data.train=[examples/data/preferences/helpdesk_en.jsonl]")
    _check(d.max_length >= 8, "data.max_length", f"must be at least 8, got {d.max_length}")
    _check(0 <= d.validation_fraction < 1, "data.validation_fraction", "must be in [0, 1)")
    _check(not (d.validation and d.validation_fraction), "data.validation_fraction",
           "cannot be combined with data.validation files; use one or the other")
    _check(d.max_examples is None or d.max_examples >= 1, "data.max_examples", "must be at least 1 or null")
    _check(a.r >= 1, "adapter.r", "must be at least 1")
    _check(a.num_virtual_tokens >= 1, "adapter.num_virtual_tokens", "must be at least 1")
    _check(r.keep_last >= 1, "run.keep_last", "must be at least 1")
    _check(r.log_every >= 1, "run.log_every", "must be at least 1")
    _check(r.eval_every is None or r.eval_every >= 1, "run.eval_every", "must be at least 1 or null")
    _check(r.save_every is None or r.save_every >= 1, "run.save_every", "must be at least 1 or null")


class MetricSums:
    """Sums and counts of per-example metrics ``[B]`` over micro-batches; NaN entries (a metric that
    does not apply to an example) are left out. ``means`` reduces over processes (collective)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, values in metrics.items():
            values = values.detach().double()
            valid = ~values.isnan()
            zero = torch.zeros((), dtype=torch.float64, device=self.device)
            self.sums[key] = self.sums.get(key, zero) + values[valid].sum()
            self.counts[key] = self.counts.get(key, zero) + valid.sum()

    def means(self, accelerator: Any, keys: list[str]) -> dict[str, float | None]:
        """Global means of ``keys`` (every process must pass the same keys, in the same order)."""
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        stacked = torch.stack([torch.stack([self.sums.get(k, zero), self.counts.get(k, zero)]) for k in keys])  # [K, 2]
        stacked = accelerator.reduce(stacked, reduction="sum")
        return {k: s / c if c > 0 else None for k, (s, c) in zip(keys, stacked.tolist(), strict=True)}
