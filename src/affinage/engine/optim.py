"""AdamW and the learning-rate schedule (linear warmup, then cosine, linear or constant)."""

from __future__ import annotations

import math

import torch

from affinage.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on biases, norms and other 1-D tensors."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # The fused kernel (CPU since torch 2.4, CUDA, XPU, MPS) reads and writes every parameter and
    # state once per step; foreach makes several passes. One step over a 135M model on the 2-core
    # CPU machines: 0.06 s of CPU time fused, 0.44 s foreach. foreach remains the fallback.
    vectorised = {"fused": True} if _fused_adamw_supported(decay + no_decay) else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, **vectorised)


def _fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # private helper: without it, keep to the devices known to have the kernel
        devices = {"cpu", "cuda"}
    return all(p.is_floating_point() and p.device.type in devices for p in params)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)


def lr_factor(step: int, *, total_steps: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Warmup rises linearly from 1/(warmup+1) to 1; decay then goes from 1 down to ``min_ratio`` at
    the last step (cosine: ``min + (1-min) * (1 + cos(pi * progress)) / 2``).
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    if kind == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = warmup_steps(cfg, total_steps)

    def factor(step: int) -> float:
        return lr_factor(
            step, total_steps=total_steps, warmup=warmup, kind=cfg.scheduler, min_ratio=cfg.min_lr_ratio
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
