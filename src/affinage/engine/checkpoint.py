"""Checkpoints: save atomically, find the latest, restore exactly, keep the last k.

Layout of ``checkpoints/step-N/``::

    model.safetensors     trainable parameters only (the adapter under LoRA, all weights otherwise)
    optimizer.pt          optimizer state (tensors and numbers; loaded with ``weights_only=True``)
    scheduler.pt          learning-rate scheduler state (same)
    trainer_state.json    step, epoch, tokens seen, elapsed time
    rng-rank{R}.json      Python and torch random states of each process

The directory is written under a temporary name and renamed when complete, so an interrupted save
leaves the previous checkpoints intact and no half-written ``step-N``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from affinage.errors import AffinageError

_STEP_DIR = re.compile(r"^step-(\d+)$")


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": _to_json(random.getstate()),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_from_json(state["python"]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _to_json(obj: Any) -> Any:
    if isinstance(obj, tuple | list):
        return [_to_json(x) for x in obj]
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_from_json(x) for x in obj)
    return obj


def save_checkpoint(
    checkpoints_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    accelerator: Any,
    keep_last: int,
) -> Path:
    """Write ``checkpoints_dir/step-{step}`` from every process (collective: call on all ranks)."""
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / f"step-{step}"
    tmp = checkpoints_dir / f".step-{step}.tmp"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    (tmp / f"rng-rank{accelerator.process_index}.json").write_text(json.dumps(rng_state()))
    if main:
        unwrapped = accelerator.unwrap_model(model)
        save_file(trainable_state_dict(unwrapped), tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    accelerator.wait_for_everyone()
    if main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        prune_checkpoints(checkpoints_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(checkpoints_dir: str | Path) -> list[tuple[int, Path]]:
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for child in checkpoints_dir.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def prune_checkpoints(checkpoints_dir: str | Path, keep_last: int) -> None:
    for _, path in list_checkpoints(checkpoints_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Any,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and random states; return the trainer state."""
    path = Path(path)
    unwrapped = accelerator.unwrap_model(model)
    weights = load_file(path / "model.safetensors", device=str(next(unwrapped.parameters()).device))
    expected = {name for name, p in unwrapped.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:5]
        extra = sorted(set(weights) - expected)[:5]
        raise AffinageError(
            f"checkpoint {path} does not match the model being trained (missing {missing}, unexpected "
            f"{extra}); was it written with another model or adapter config? Start a new output_dir "
            "or set run.resume=false."
        )
    unwrapped.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-rank{accelerator.process_index}.json"
    if rng_file.is_file():
        set_rng_state(json.loads(rng_file.read_text()))
    return json.loads((path / "trainer_state.json").read_text())
