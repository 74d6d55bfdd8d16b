"""What is trained (all weights, LoRA/DoRA, soft prompts, chosen layers) and how the result is saved.

``apply_adapter`` turns a loaded model into the model the optimizer sees; ``save_final`` writes a
directory that ``AutoModelForCausalLM.from_pretrained`` loads as is, with the peft adapter beside
it; ``disabled_adapter`` runs a peft model as its base model (the DPO reference, for free).

Layout written by :func:`save_final`::

    out_dir/                  config.json, model.safetensors, generation_config.json, tokenizer files
    out_dir/adapter/          peft adapter (LoRA, DoRA, prompt tuning): adapter_config.json, adapter_model.safetensors
    out_dir/README.md         only when out_dir holds the *base* weights (LoRA with merge=False, prompt tuning)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from affinage.config import AdapterConfig
from affinage.errors import ModelError
from affinage.utils.fs import atomic_directory, atomic_write_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

ADAPTER_SUBDIR = "adapter"


# ----------------------------------------------------------------------------------------------
# Applying
# ----------------------------------------------------------------------------------------------


def apply_adapter(
    model: PreTrainedModel,
    cfg: AdapterConfig,
    *,
    tokenizer: PreTrainedTokenizerBase | str | None = None,
    gradient_checkpointing: bool = False,
) -> torch.nn.Module:
    """Make ``model`` trainable as ``cfg.method`` says and return the model to optimise.

    * ``full``: every parameter trainable (the same model object is returned).
    * ``lora`` / ``dora``: a peft ``PeftModelForCausalLM`` with rank ``cfg.r`` adapters, scale
      ``cfg.alpha / cfg.r``, on ``cfg.target_modules`` (``["all-linear"]``: every linear layer but
      the output head). DoRA (Liu et al. 2024) adds a trainable magnitude vector per layer.
    * ``prompt_tuning``: ``cfg.num_virtual_tokens`` trainable embeddings prepended to every row
      (Lester et al. 2021), initialised from the embeddings of ``cfg.prompt_init_text`` (needs
      ``tokenizer``) or from randomly drawn vocabulary rows.
    * ``freeze``: only parameters whose name matches one of the ``cfg.trainable`` regexes train.

    ``gradient_checkpointing`` recomputes activations in the backward pass (non-reentrant, which
    also works when the embeddings are frozen) and turns the KV cache off.
    """
    if gradient_checkpointing:
        # transformers >= 5.x renamed gradient_checkpointing_enable to activation_checkpointing_enable.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    method = cfg.method
    if method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        result: torch.nn.Module = model
    elif method in ("lora", "dora"):
        result = _apply_lora(model, cfg)
    elif method == "prompt_tuning":
        result = _apply_prompt_tuning(model, cfg, tokenizer)
    elif method == "freeze":
        result = _apply_freeze(model, cfg.trainable)
    else:
        raise ModelError(
            f"config key 'adapter.method' must be one of full, lora, dora, prompt_tuning, freeze; got {method!r}"
        )
    trainable, total = count_parameters(result)
    logger.info(
        "adapter %s: %s of %s parameters trainable (%.3f%%)",
        method,
        trainable,
        total,
        100 * trainable / max(total, 1),
    )
    return result


def _apply_lora(model: PreTrainedModel, cfg: AdapterConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = (
        "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    )
    lora_config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_dora=cfg.method == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora_config)
    except ValueError as exc:
        if "target" not in str(exc).lower():
            raise
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, mod in model.named_modules()
                if isinstance(mod, torch.nn.Linear)
            }
        )
        raise ModelError(
            f"config key 'adapter.target_modules' = {cfg.target_modules} matches no layer of this model "
            f"({exc}). Linear layers here: {', '.join(linear)}; or use ['all-linear']."
        ) from exc


def _apply_prompt_tuning(
    model: PreTrainedModel, cfg: AdapterConfig, tokenizer: PreTrainedTokenizerBase | str | None
) -> torch.nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    pt_config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=cfg.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    )
    peft_model = get_peft_model(model, pt_config)
    if cfg.prompt_init_text:
        # peft's own TEXT init reloads a tokenizer by name, which an alias or in-memory tokenizer
        # lacks; embedding the text here does the same thing with the tokenizer we have.
        if tokenizer is None:
            raise ModelError(
                "config key 'adapter.prompt_init_text' needs the tokenizer: pass tokenizer= to apply_adapter"
            )
        if isinstance(tokenizer, str):
            from affinage.models.loading import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        ids = tokenizer(cfg.prompt_init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ModelError("config key 'adapter.prompt_init_text' is empty once tokenised")
        n = cfg.num_virtual_tokens
        ids = (ids * (n // len(ids) + 1))[:n]  # repeat the text to fill every virtual token
        embeddings = model.get_input_embeddings()
        with torch.no_grad():
            vectors = embeddings(torch.tensor(ids, device=embeddings.weight.device))
            prompt = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
            prompt.copy_(vectors.to(prompt.dtype))
    return peft_model


def _apply_freeze(model: PreTrainedModel, patterns: list[str]) -> torch.nn.Module:
    if not patterns:
        raise ModelError(
            "config key 'adapter.trainable' is empty: method 'freeze' needs patterns, e.g. ['norm']"
        )
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as exc:
        raise ModelError(f"config key 'adapter.trainable': invalid regular expression ({exc})") from exc
    matched = 0
    for name, param in model.named_parameters():
        keep = any(p.search(name) for p in compiled)
        param.requires_grad_(keep)
        matched += keep
    if not matched:
        names = [name for name, _ in model.named_parameters()]
        sample = names[:4] + names[len(names) // 2 : len(names) // 2 + 2] + names[-3:]
        raise ModelError(
            f"config key 'adapter.trainable' = {patterns} matches no parameter; names look like: "
            f"{', '.join(dict.fromkeys(sample))}"
        )
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied parameters are counted once."""
    trainable = total = 0
    for param in model.parameters():  # parameters() already skips shared (tied) tensors
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


# ----------------------------------------------------------------------------------------------
# Unwrapping and disabling
# ----------------------------------------------------------------------------------------------


def _strip_wrappers(model: Any) -> Any:
    """Remove DDP / DataParallel / torch.compile wrappers (not peft)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _peft_model(model: Any) -> Any | None:
    from peft import PeftModel

    model = _strip_wrappers(model)
    return model if isinstance(model, PeftModel) else None


def unwrap_to_base(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP / compile / peft wrappers.

    For LoRA/DoRA the returned model still has the adapter layers injected and active; use
    :func:`disabled_adapter` to compute without them.
    """
    model = _strip_wrappers(model)
    peft_model = _peft_model(model)
    if peft_model is not None:
        return peft_model.get_base_model()
    return model


@contextlib.contextmanager
def disabled_adapter(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run a peft model as its base model inside the block (LoRA, DoRA, prompt tuning).

    Raises ``ValueError`` for a model without adapter: full or freeze fine-tuning needs a separate
    reference model, and silently using the trained one would make e.g. DPO's reference drift.
    """
    peft_model = _peft_model(model)
    if peft_model is None:
        raise ValueError("disabled_adapter: the model has no peft adapter; load a separate reference model")
    with peft_model.disable_adapter():
        yield model


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------

_LORA_PART = re.compile(r"(^|\.)lora_[^.]*(\.|$)")


def save_final(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    merge: bool = True,
) -> Path:
    """Write ``out_dir`` so that ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it as is.

    * plain models (full, freeze): the model, tokenizer (with chat template) and generation config;
    * LoRA/DoRA: the adapter in ``out_dir/adapter`` (peft format) and, with ``merge=True``, the
      merged weights in ``out_dir``; with ``merge=False`` the base weights in ``out_dir`` and a
      README saying to load the adapter with ``PeftModel.from_pretrained(model, out_dir/adapter)``;
    * prompt tuning (cannot be merged): base weights in ``out_dir``, adapter in
      ``out_dir/adapter`` and a README. Soft prompts apply only when loaded with peft.

    The training model is left as it was (merging happens on a copy of the merged weights and
    the originals are restored bit for bit). ``out_dir`` is written atomically and replaces an
    existing directory only once complete. Pass an unsharded model (unwrap DDP first).
    """
    model = _strip_wrappers(model)
    peft_model = _peft_model(model)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        if peft_model is None:
            model.save_pretrained(tmp)
        else:
            peft_config = peft_model.peft_config[peft_model.active_adapter]
            peft_model.save_pretrained(tmp / ADAPTER_SUBDIR)
            if peft_config.is_prompt_learning:
                peft_model.get_base_model().save_pretrained(tmp)
                _write_readme(tmp, out_dir, kind="prompt tuning (soft prompts cannot be merged into weights)")
            else:
                state = _lora_base_state_dict(peft_model, merge=merge)
                from affinage.models.loading import plain_copy

                plain_copy(peft_model.get_base_model(), state).save_pretrained(tmp)
                if not merge:
                    _write_readme(tmp, out_dir, kind="LoRA saved without merging (adapter.merge=false)")
        tokenizer.save_pretrained(tmp)
        _complete_generation_config(tmp, tokenizer)
    return out_dir


def _lora_base_state_dict(peft_model: Any, *, merge: bool) -> dict[str, torch.Tensor]:
    """The base model's state dict under its original names, with LoRA merged in when ``merge``.

    peft merges in place; we merge, copy the merged weights to the CPU, unmerge and then put the
    original tensors back exactly (unmerging alone leaves rounding differences, large in bf16).
    """
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    if not merge:
        return _strip_lora_names(base.state_dict(), copy_to_cpu=False)
    layers = [m for m in base.modules() if isinstance(m, LoraLayer)]
    originals = [layer.get_base_layer().weight.detach().to("cpu", copy=True) for layer in layers]
    peft_model.merge_adapter()
    try:
        state = _strip_lora_names(base.state_dict(), copy_to_cpu=True)
    finally:
        peft_model.unmerge_adapter()
        with torch.no_grad():
            for layer, original in zip(layers, originals, strict=True):
                layer.get_base_layer().weight.copy_(original)
    return state


def _strip_lora_names(state: dict[str, torch.Tensor], *, copy_to_cpu: bool) -> dict[str, torch.Tensor]:
    clean = {}
    for name, tensor in state.items():
        if _LORA_PART.search(name):
            continue
        name = name.replace(".base_layer.", ".")
        clean[name] = tensor.detach().to("cpu", copy=True) if copy_to_cpu else tensor.detach()
    return clean


def _complete_generation_config(path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make sure generation stops at the tokenizer's eos and pads with its pad token."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(path)
    except OSError:
        gen = GenerationConfig()
    changed = False
    if gen.eos_token_id is None and tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id
        changed = True
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
        changed = True
    if changed or not (path / "generation_config.json").is_file():
        gen.save_pretrained(path)


def _write_readme(tmp: Path, out_dir: Path, *, kind: str) -> None:
    text = f"""# {out_dir.name}: base weights + peft adapter

This directory holds the **base model** weights; the trained part is the peft adapter in
`{ADAPTER_SUBDIR}/` ({kind}). Loading this directory alone gives the untrained base model.
Load both with:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{out_dir}")
model = PeftModel.from_pretrained(base, "{out_dir / ADAPTER_SUBDIR}")
tokenizer = AutoTokenizer.from_pretrained("{out_dir}")
```
"""
    atomic_write_text(tmp / "README.md", text)


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy with gradients off, e.g. a frozen reference for full fine-tuning."""
    ref = copy.deepcopy(_strip_wrappers(model))
    for param in ref.parameters():
        param.requires_grad_(False)
    return ref.eval()
