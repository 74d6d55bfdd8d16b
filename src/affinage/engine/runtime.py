"""Process setup shared by every recipe: the accelerate ``Accelerator``, seeds, the run directory."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from affinage.config import dump_yaml
from affinage.engine.checkpoint import list_checkpoints
from affinage.errors import ConfigError
from affinage.utils.fs import atomic_write_text


def make_accelerator(**kwargs: Any):
    """An ``accelerate.Accelerator`` for this process.

    On a machine without CUDA it runs on the CPU; under ``torchrun`` or ``accelerate launch``
    accelerate reads the environment and sets up DDP (gloo on CPU, NCCL on GPUs), or FSDP and
    DeepSpeed from its own config file.
    """
    from accelerate import Accelerator

    kwargs.setdefault("cpu", not torch.cuda.is_available())
    return Accelerator(**kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def prepare_run_dir(output_dir: str | Path, config: Any, *, resume: bool, is_main: bool) -> Path:
    """Create ``output_dir``, refuse to overwrite an earlier run unless resuming, save the config."""
    out = Path(output_dir)
    if is_main:
        has_run = (out / "metrics.jsonl").exists() or bool(list_checkpoints(out / "checkpoints"))
        if has_run and not resume:
            raise ConfigError(
                f"run.output_dir '{out}' already holds a run (metrics.jsonl or checkpoints). Set "
                "run.resume=true to continue it, or choose another run.output_dir; nothing was overwritten."
            )
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(config))
    return out


_LIBC_TRIM: Any = None


def release_host_memory(device: torch.device | str) -> None:
    """Hand the heap memory freed by the last step back to the system (glibc ``malloc_trim``).

    On CPU the activations of a step live on the C heap. Steps of different lengths free blocks of
    one size and then ask for blocks of another, so glibc grows the heap instead of reusing the
    holes and the resident memory creeps up from step to step (measured on the DPO recipe: 2.7 GiB
    after the first step, 4.2 GiB by the third). Trimming once per optimizer step returns the free
    pages; the next step faults them back in as it touches them. A no-op on GPUs and on C
    libraries without ``malloc_trim``.
    """
    global _LIBC_TRIM
    if torch.device(device).type != "cpu":
        return
    if _LIBC_TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
            _LIBC_TRIM = False
    if _LIBC_TRIM:
        _LIBC_TRIM(0)
