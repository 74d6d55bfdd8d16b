"""Export a trained model for inference: merge adapters, write a Hugging Face directory, check it.

``affinage export SOURCE --output DIR`` takes

* a run directory (``runs/x``, whose ``final/`` :func:`~affinage.models.save_final` wrote), a
  ``final/`` directory itself, or a bare peft adapter directory (``adapter_config.json``);
* any model :func:`affinage.models.load_model` loads (alias, local directory, ``.gguf``, hub id),

and writes ``DIR`` atomically (a temporary sibling renamed into place once everything passed):

    DIR/config.json, model.safetensors     the weights, LoRA/DoRA merged in (``--dtype``)
    DIR/tokenizer.json, tokenizer_config.json, chat_template.jinja
    DIR/generation_config.json             stops at the tokenizer's eos, pads with its pad token
    DIR/gguf/model-f16.gguf                with ``--gguf f16`` (llama architecture only; in a folder of
                                           its own, so that transformers reads only the GGUF there)
    DIR/export_manifest.json               what was exported, the checks and their figures

Checks, written to the manifest and printed:

* **parity**: the exported directory is loaded back and its logits on a few chat prompts are
  compared with the model before export (base + adapter through peft when there is an adapter).
  The export fails, leaving nothing behind, when the largest logit difference passes the tolerance
  of the stored dtype.
* **int8** (``--int8``): dynamic quantisation of the ``nn.Linear`` layers for CPU inference
  (``torch.ao.quantization.quantize_dynamic``: int8 weights with one scale per output row, activations
  quantised on the fly with one scale per tensor; Jacob et al. 2018), the output head and any layer
  matching ``--int8-skip`` kept in fp32. Measured on held-out text: perplexity of both models, the
  mean per-token KL divergence KL(p_fp32 || p_int8), top-1 agreement, and prefill/decode speed.
  The quantised model is not stored (its packed weights have no safetensors form); it is rebuilt in
  a few seconds at load time: ``affinage serve DIR --int8``.
* **GGUF** (``--gguf f16|f32``): written with the ``gguf`` package's ``GGUFWriter`` under llama.cpp's
  tensor names and metadata, then loaded back with transformers (``gguf_file=``): logits compared with
  the exported model, and the tokenizer rebuilt from the file compared token by token.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from affinage.errors import ConfigError, DataError, ModelError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "export_manifest.json"
ADAPTER_SUBDIR = "adapter"

# Chat turns the parity and GGUF checks run the model on: (user prompt, assistant answer). The
# answers give the check positions inside an assistant turn, where a fine-tuned model differs most.
PARITY_TURNS: list[tuple[str, str]] = [
    ("How do I reset my password on the cluster?",
     "Go to the account portal, choose 'Forgot password' and follow the link sent to your e-mail."),
    ("Mon job reste en attente depuis deux heures, pourquoi ?",
     "La file est probablement pleine : vérifiez avec squeue et réduisez le temps demandé."),
    ("Write a Python function that adds two numbers.",
     "def add(a, b):\n    return a + b"),
    ("What is 17 * 23?", "17 * 23 = 391."),
]

# Held-out text for the int8 quality measurement when no --eval-text is given: short passages
# written for this purpose (support answers, prose, code, French), not drawn from any training set.
HELD_OUT_TEXT: list[str] = [
    "To submit a batch job, write a script that requests the resources you need, such as the number "
    "of nodes, the memory per task and the wall time, then hand it to the scheduler. The job waits in "
    "the queue until the resources are free, runs, and writes its output next to the script.",
    "Le stockage temporaire est effacé chaque semaine. Copiez vos résultats dans votre répertoire de "
    "projet avant la fin du calcul, et gardez une sauvegarde des fichiers qui ne se régénèrent pas.",
    "The river rose through the night, and by morning the lower fields were under water. The farmers "
    "moved the animals to the hill and waited, listening to the rain on the roofs of the barns.",
    "def mean(values):\n    if not values:\n        raise ValueError('mean of an empty list')\n"
    "    return sum(values) / len(values)\n",
    "Numbers in a report should carry their units: 12.5 GB of memory, 3 nodes, 48 hours, 0.05 of "
    "error. A table without units is a table nobody can check.",
]

# Largest logit difference accepted between the exported model and the model before export, by the
# dtype the weights are stored in. fp32 differs only by the order of the merge's sums; 16-bit
# storage rounds every weight (relative error 2^-11 for fp16, 2^-8 for bf16) and the errors add up
# through the layers (measured on SmolLM2-135M: see docs/serving.md).
PARITY_TOLERANCE: dict[str, float] = {"float32": 1e-3, "float16": 0.25, "bfloat16": 1.0}
GGUF_TOLERANCE: dict[str, float] = {"f32": 1e-3, "f16": 0.25}

GGUF_TYPES = ("f32", "f16")

# Layers int8 leaves in fp32 by default: the output head (tied to the embeddings in small models,
# and the layer whose errors reach the logits undamped).
INT8_SKIP = ("^lm_head$",)


@dataclass
class ExportOptions:
    """What ``affinage export`` does beside writing the merged Hugging Face directory."""

    base: str | None = None
    """Base model for a bare adapter directory, or to override the one an adapter names."""
    dtype: str = "auto"
    """Stored dtype: auto (the source's own), float32, bfloat16 or float16."""
    chat_template: str | None = None
    """Set (or replace) the tokenizer's chat template: a name (chatml...), a .jinja file or Jinja."""
    tolerance: float | None = None
    """Largest accepted logit difference in the parity check (default: by stored dtype)."""
    int8: bool = False
    """Measure int8 dynamic quantisation: quality delta and speed on held-out text."""
    eval_text: str | None = None
    """Held-out text for the int8 measurement: .txt (paragraphs) or .jsonl/.json rows."""
    gguf: str | None = None
    """Also write a GGUF file (f16 or f32) for llama.cpp; llama architecture only."""
    gguf_pre: str | None = None
    """llama.cpp pre-tokenizer name to write (default: recognised from the tokenizer)."""
    decode_tokens: int = 32
    """Tokens generated per speed measurement of the int8 check."""
    int8_skip: list[str] = field(default_factory=lambda: list(INT8_SKIP))
    """Regular expressions of layer names kept in fp32 by int8 quantisation (``down_proj``: the
    MLP output projections, whose inputs carry the largest outliers)."""

    def validate(self) -> None:
        from affinage.models.loading import DTYPES

        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"export option 'dtype' must be auto, {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.gguf is not None and self.gguf not in GGUF_TYPES:
            raise ConfigError(f"export option 'gguf' must be one of {', '.join(GGUF_TYPES)}; got {self.gguf!r}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ConfigError(f"export option 'tolerance' must be positive, got {self.tolerance}")
        if self.decode_tokens < 1:
            raise ConfigError(f"export option 'decode_tokens' must be at least 1, got {self.decode_tokens}")
        if self.eval_text is not None and not self.int8:
            raise ConfigError("export option 'eval_text' is only used by the int8 check: add --int8")


# ----------------------------------------------------------------------------------------------
# Finding what to export
# ----------------------------------------------------------------------------------------------


@dataclass
class ExportSource:
    """What ``SOURCE`` points to once resolved."""

    kind: Literal["run", "final", "adapter", "model"]
    name: str
    """As the user gave it."""
    weights: str
    """The model to load first: the base for an adapter that is not merged yet, else the model."""
    tokenizer: str
    adapter: Path | None = None
    weights_are_merged: bool = False
    """``final/`` already holds merged weights (save_final with merge=True); ``weights`` is then the
    base named by the adapter or the run's config, and ``merged_dir`` the stored merged model."""
    merged_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc


def _run_config_model(final_dir: Path) -> str | None:
    """``model.name`` of the run that wrote ``final_dir`` (its ``config.yaml`` one level up)."""
    import yaml

    config = final_dir.parent / "config.yaml"
    if not config.is_file():
        return None
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        name = (data.get("model") or {}).get("name")
        return name if isinstance(name, str) and name else None
    return None


def find_source(source: str, base: str | None = None) -> ExportSource:
    """Classify ``source``: run directory, ``final/`` directory, adapter directory or plain model."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "final" / "config.json").is_file() and not (path / "config.json").is_file():
            src = _final_source(path / "final", base)
            src.kind, src.name = "run", source
            return src
        if (path / "config.json").is_file() and (path / ADAPTER_SUBDIR / "adapter_config.json").is_file():
            src = _final_source(path, base)
            src.name = source
            return src
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            named = _read_json(path / "adapter_config.json").get("base_model_name_or_path")
            weights = base or named
            if not weights:
                raise ModelError(
                    f"{path} holds a peft adapter whose adapter_config.json names no base model; "
                    "give it with --base MODEL"
                )
            has_tokenizer = (path / "tokenizer_config.json").is_file()
            return ExportSource("adapter", source, weights, str(path) if has_tokenizer else weights, path)
    return ExportSource("model", source, source, source)


def _final_source(final: Path, base: str | None) -> ExportSource:
    adapter = final / ADAPTER_SUBDIR
    if not (adapter / "adapter_config.json").is_file():
        return ExportSource("final", str(final), str(final), str(final))
    # save_final writes a README beside the weights exactly when they are the *base* weights
    # (LoRA with merge=false, prompt tuning); otherwise they already hold the adapter merged in.
    if (final / "README.md").is_file():
        return ExportSource("final", str(final), base or str(final), str(final), adapter)
    named = _read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    candidates = [c for c in (base, _run_config_model(final), named) if c]
    return ExportSource(
        "final", str(final), candidates[0] if candidates else str(final), str(final), adapter,
        weights_are_merged=True, merged_dir=final,
    )


# ----------------------------------------------------------------------------------------------
# Logits and their comparison
# ----------------------------------------------------------------------------------------------


def check_texts(tokenizer: Any) -> list[str]:
    """The texts the parity checks run on: :data:`PARITY_TURNS` through the chat template, if any."""
    texts = []
    for prompt, answer in PARITY_TURNS:
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        else:
            texts.append(f"{prompt}\n{answer}")
    return texts


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    # A rendered chat template carries its own special tokens; plain text gets the tokenizer's.
    add_special = not getattr(tokenizer, "chat_template", None)
    return [list(tokenizer(t, add_special_tokens=add_special)["input_ids"]) for t in texts]


@torch.inference_mode()
def sequence_logits(model: Any, rows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """fp32 logits ``[T, V]`` of each row, run one row at a time (no padding to get wrong)."""
    device = next(model.parameters()).device
    out = []
    for row in rows:
        ids = torch.tensor([list(row)], dtype=torch.long, device=device)  # [1, T]
        out.append(model(input_ids=ids, use_cache=False).logits[0].float().cpu())  # [T, V]
    return out


def compare_logits(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor]) -> dict[str, float]:
    """How far ``candidate`` logits are from ``reference`` over every position of every row.

    ``mean_kl`` is the mean over positions of KL(p_ref || p_cand) = sum_v p_ref(v) (log p_ref(v) -
    log p_cand(v)), in nats; ``top1_agreement`` the fraction of positions with the same argmax.
    """
    ref = torch.cat([r.float() for r in reference])  # [N, V]
    cand = torch.cat([c.float() for c in candidate])  # [N, V]
    if ref.shape != cand.shape:
        raise ModelError(f"logits shapes differ: {tuple(ref.shape)} vs {tuple(cand.shape)} (vocabulary size?)")
    diff = (ref - cand).abs()
    log_p, log_q = torch.log_softmax(ref, -1), torch.log_softmax(cand, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [N]
    return {
        "positions": int(ref.shape[0]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "mean_kl": float(kl.mean().clamp_min(0)),
        "top1_agreement": float((ref.argmax(-1) == cand.argmax(-1)).float().mean()),
        "logit_scale": float(ref.abs().max()),
    }


# ----------------------------------------------------------------------------------------------
# Loading and merging
# ----------------------------------------------------------------------------------------------


def _load_adapter(base_model: Any, adapter_dir: Path) -> Any:
    from peft import PeftConfig, PeftModel

    try:
        peft_config = PeftConfig.from_pretrained(str(adapter_dir))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the adapter in {adapter_dir}: {exc}") from exc
    if peft_config.is_prompt_learning:
        raise ModelError(
            f"the adapter in {adapter_dir} is {peft_config.peft_type} (soft prompts), which cannot be "
            "merged into the weights: serve it with peft (PeftModel.from_pretrained), or train with "
            "adapter.method=lora to get an exportable model"
        )
    try:
        return PeftModel.from_pretrained(base_model, str(adapter_dir))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(
            f"cannot apply the adapter in {adapter_dir} to its base model: {exc}. "
            "If the base is wrong, give the right one with --base MODEL"
        ) from exc


def _adapter_summary(peft_model: Any) -> dict[str, Any]:
    cfg = peft_model.peft_config[peft_model.active_adapter]
    targets = cfg.target_modules
    return {
        "peft_type": str(getattr(cfg.peft_type, "value", cfg.peft_type)),
        "r": getattr(cfg, "r", None),
        "alpha": getattr(cfg, "lora_alpha", None),
        "dora": bool(getattr(cfg, "use_dora", False)),
        "target_modules": sorted(targets) if isinstance(targets, set | list) else targets,
    }


def _load_reference(src: ExportSource, options: ExportOptions) -> tuple[Any, Any, dict[str, Any]]:
    """(reference model, tokenizer, adapter summary): the model whose logits the export must match.

    Everything is loaded in fp32: merging and comparing in the storage dtype would mix the merge's
    rounding with the storage's.
    """
    from affinage.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(src.tokenizer, chat_template=options.chat_template)
    if src.adapter is None:
        return load_model(src.weights, dtype=torch.float32), tokenizer, {}
    try:
        base = load_model(src.weights, dtype=torch.float32)
    except ModelError as exc:
        if not src.weights_are_merged:
            raise
        # final/ already holds the merged model: export it as is, and say why no adapter parity.
        src.notes.append(
            f"the base model '{src.weights}' of the adapter could not be loaded ({exc}); exported the "
            f"merged weights of {src.merged_dir} as they are, compared with themselves only. Pass "
            "--base MODEL to check them against base + adapter."
        )
        src.adapter, src.weights_are_merged = None, False
        return load_model(str(src.merged_dir), dtype=torch.float32), tokenizer, {}
    peft_model = _load_adapter(base, src.adapter)
    peft_model.eval()
    return peft_model, tokenizer, _adapter_summary(peft_model)


def merge_adapter(model: Any) -> Any:
    """The plain transformers model with any LoRA/DoRA merged in (``W + (alpha / r) B A``; Hu et al.
    2021, eq. 3). The peft model is consumed."""
    from affinage.models.adapters import _peft_model
    from affinage.models.loading import plain_copy

    peft_model = _peft_model(model)
    if peft_model is None:
        return model
    merged = peft_model.merge_and_unload()
    return plain_copy(merged)


def _cast_copy(model: Any, dtype: torch.dtype) -> Any:
    """A plain copy of ``model`` holding its weights cast to ``dtype`` (tied weights stay tied)."""
    from affinage.models.loading import plain_copy

    if next(model.parameters()).dtype == dtype:
        return model
    state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    cast = plain_copy(model, state)
    cast.config.dtype = dtype
    return cast


# ----------------------------------------------------------------------------------------------
# int8 dynamic quantisation
# ----------------------------------------------------------------------------------------------


def quantize_int8(model: Any, skip: Sequence[str] = INT8_SKIP) -> Any:
    """A copy of ``model`` whose ``nn.Linear`` layers run in int8 (dynamic quantisation, CPU only).

    Weights are stored as int8 with one fp32 scale per output row (symmetric); each input
    activation tensor is quantised on the fly to uint8 with the scale and zero point of its own
    range, the product accumulates in int32 and is scaled back (Jacob et al. 2018, "Quantization and
    Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", eq. 7). One scale
    per activation tensor is the weak point for language models: a few channels carry values far
    larger than the rest (Dettmers et al. 2022, LLM.int8()), and they set the step for all. Layers
    whose name matches a ``skip`` regular expression, embeddings and norms stay fp32.
    """
    import re
    import warnings

    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:  # pragma: no cover - depends on the torch build
        raise ModelError(f"int8 dynamic quantisation is not available in this torch build: {exc}") from exc
    try:
        patterns = [re.compile(p) for p in skip]
    except re.error as exc:
        raise ConfigError(f"int8 skip pattern: invalid regular expression ({exc})") from exc
    fp32 = model if next(model.parameters()).dtype == torch.float32 else copy.deepcopy(model).float()
    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in fp32.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(p.search(name) for p in patterns)
    }
    if not spec:
        raise ConfigError(f"int8: every linear layer matches the skip patterns {list(skip)}; nothing to quantise")
    with warnings.catch_warnings():
        # torch marks torch.ao.quantization as moving to torchao; the API still works as documented.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        quantized = quantize_dynamic(fp32.cpu(), spec, dtype=torch.qint8, inplace=False)
    quantized.eval()
    return quantized


def read_eval_text(path: str | Path, tokenizer: Any) -> list[str]:
    """Held-out passages from ``path``: a .txt file (blank-line separated paragraphs) or data rows
    with ``text``, or ``messages`` (rendered with the chat template), or ``prompt`` and ``completion``."""
    from affinage.data.io import read_rows

    path = Path(path)
    if path.suffix.lower() in (".txt", ".md"):
        if not path.is_file():
            raise DataError(f"--eval-text {path}: no such file")
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
        texts = [p for p in paragraphs if p]
    else:
        texts = []
        for number, row in read_rows(path):
            where = f"{path}, row {number}"
            if isinstance(row.get("text"), str):
                texts.append(row["text"])
            elif isinstance(row.get("messages"), list):
                from affinage.data.tokenize import render_chat

                texts.append(render_chat(tokenizer, row["messages"], where=where))
            elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
                texts.append(row["prompt"] + row["completion"])
            else:
                raise DataError(
                    f'{where}: needs "text", "messages" or "prompt" and "completion" for the held-out text'
                )
    if not texts:
        raise DataError(f"--eval-text {path} holds no text")
    return texts


@torch.inference_mode()
def _nll(model: Any, rows: Sequence[Sequence[int]]) -> tuple[float, int, list[torch.Tensor]]:
    """(summed next-token negative log-likelihood, predicted tokens, logits per row)."""
    logits = sequence_logits(model, rows)
    total, count = 0.0, 0
    for row, lg in zip(rows, logits, strict=True):
        if len(row) < 2:
            continue
        targets = torch.tensor(list(row[1:]), dtype=torch.long)  # [T-1]
        total += float(torch.nn.functional.cross_entropy(lg[:-1], targets, reduction="sum"))
        count += len(row) - 1
    return total, count, logits


@torch.inference_mode()
def _speed(model: Any, rows: Sequence[Sequence[int]], decode_prompt: Sequence[int], new_tokens: int) -> dict:
    """Prefill tokens/s (forward over ``rows``) and greedy decode tokens/s at batch size 1."""
    sequence_logits(model, rows[:1])  # warm-up: first calls allocate and pick kernels
    start = time.perf_counter()
    sequence_logits(model, rows)
    prefill_s = time.perf_counter() - start
    ids = torch.tensor([list(decode_prompt)], dtype=torch.long)
    kwargs = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kwargs)
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
    decode_s = time.perf_counter() - start
    produced = out.shape[1] - ids.shape[1]
    return {
        "prefill_tokens_per_s": sum(len(r) for r in rows) / max(prefill_s, 1e-9),
        "decode_tokens_per_s": produced / max(decode_s, 1e-9),
    }


def measure_int8(
    model: Any, tokenizer: Any, texts: Sequence[str], *, decode_tokens: int = 32, skip: Sequence[str] = INT8_SKIP
) -> dict[str, Any]:
    """Quality and speed of int8 dynamic quantisation against the fp32 ``model`` on ``texts``.

    Perplexity is exp(summed NLL / predicted tokens) over all texts; ``kl_fp32_int8`` the mean
    per-token KL(p_fp32 || p_int8); both models run on the CPU with the same threads.
    """
    fp32 = model if next(model.parameters()).dtype == torch.float32 else copy.deepcopy(model).float()
    fp32 = fp32.cpu().eval()
    rows = [r for r in (list(tokenizer(t)["input_ids"]) for t in texts) if len(r) >= 2]
    if not rows:
        raise DataError("the held-out text is too short to measure perplexity (needs 2 tokens a passage)")
    start = time.perf_counter()
    int8 = quantize_int8(fp32, skip)
    quantize_s = time.perf_counter() - start
    nll32, count, logits32 = _nll(fp32, rows)
    nll8, _, logits8 = _nll(int8, rows)
    agreement = compare_logits(logits32, logits8)
    decode_prompt = rows[0][: max(1, min(len(rows[0]), 32))]
    speed32 = _speed(fp32, rows, decode_prompt, decode_tokens)
    speed8 = _speed(int8, rows, decode_prompt, decode_tokens)
    ppl32, ppl8 = math.exp(nll32 / count), math.exp(nll8 / count)
    n_quantized = sum(1 for m in int8.modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__)
    quantized_bytes = sum(
        m.weight.numel() * m.weight.element_size()
        for name, m in fp32.named_modules()
        if isinstance(m, torch.nn.Linear) and type(int8.get_submodule(name)) is not torch.nn.Linear
    )
    return {
        "method": "torch.ao.quantization.quantize_dynamic(per-channel int8 weights, dynamic uint8 activations)",
        "skip": list(skip),
        "quantized_linear_layers": n_quantized,
        "quantized_weight_bytes_fp32": quantized_bytes,
        "quantized_weight_bytes_int8": quantized_bytes // 4,
        "quantize_s": round(quantize_s, 3),
        "held_out_passages": len(rows),
        "held_out_tokens": count,
        "perplexity_fp32": ppl32,
        "perplexity_int8": ppl8,
        "perplexity_delta": ppl8 - ppl32,
        "perplexity_delta_relative": (ppl8 - ppl32) / ppl32,
        "kl_fp32_int8": agreement["mean_kl"],
        "top1_agreement": agreement["top1_agreement"],
        "prefill_tokens_per_s_fp32": speed32["prefill_tokens_per_s"],
        "prefill_tokens_per_s_int8": speed8["prefill_tokens_per_s"],
        "decode_tokens_per_s_fp32": speed32["decode_tokens_per_s"],
        "decode_tokens_per_s_int8": speed8["decode_tokens_per_s"],
        "decode_tokens": decode_tokens,
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------
# GGUF
# ----------------------------------------------------------------------------------------------


def hf_to_gguf_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection from the rotary layout of transformers to llama.cpp's.

    transformers' Llama rotates dimension ``i`` of a head with dimension ``i + d/2`` (``rotate_half``);
    llama.cpp's rope rotates the adjacent pair ``(2i, 2i + 1)``. Both compute the same attention when
    the projection's output rows are permuted per head so that new row ``2i`` is old row ``i`` and new
    row ``2i + 1`` is old row ``i + d/2``. ``weight``: ``[n_heads * d, in]``.
    """
    rows, *rest = weight.shape
    d = rows // n_heads
    if d * n_heads != rows or d % 2:
        raise ModelError(f"a q/k projection of {rows} rows does not split into {n_heads} heads of even size")
    # [heads, 2 halves, d/2, in] -> [heads, d/2, 2 halves, in]: (half j, index i) lands at 2i + j.
    return weight.reshape(n_heads, 2, d // 2, *rest).transpose(1, 2).reshape(weight.shape)


def _pre_tokenizer_name(backend: dict[str, Any]) -> tuple[str, str | None]:
    """llama.cpp's name for the tokenizer's pre-tokenisation (how text is cut before the merges).

    Returns (name, warning). Recognised: GPT-2's byte-level regex (``gpt2``), digits split one by one
    before it (``smollm``), and the split regexes transformers' GGUF reader knows (``llama-bpe``,
    ``qwen2``...), so that the file reads back with the same tokenisation.
    """
    pre = backend.get("pre_tokenizer") or {}

    def is_byte_level(p: dict[str, Any], use_regex: bool) -> bool:
        return p.get("type") == "ByteLevel" and bool(p.get("use_regex", True)) == use_regex

    if is_byte_level(pre, True):
        return "gpt2", None
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if parts and len(parts) == 2:
        first, second = parts
        if first.get("type") == "Digits" and first.get("individual_digits") and is_byte_level(second, True):
            return "smollm", None
        if first.get("type") == "Split" and is_byte_level(second, False):
            regex = (first.get("pattern") or {}).get("Regex")
            try:
                from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
            except ImportError:
                GGUF_PRE_TOKENIZER_SPLITS = {}
            for name, split in GGUF_PRE_TOKENIZER_SPLITS.items():
                if split == regex:
                    return name, None
    return "default", (
        f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:160]}) has no llama.cpp name here; wrote "
        "'default'. Check the tokenisation in llama.cpp, or pass --gguf-pre NAME"
    )


def gguf_vocab(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """The tokenizer as llama.cpp's ``gpt2`` (byte-level BPE) vocabulary: tokens, types, merges, ids."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model") or {}
    text = json.dumps({k: backend.get(k) for k in ("pre_tokenizer", "decoder")})
    if model.get("type") != "BPE" or "ByteLevel" not in text:
        raise ModelError(
            "the GGUF writer handles byte-level BPE tokenizers (GPT-2 style: SmolLM, Llama 3, Qwen); "
            f"this tokenizer is {model.get('type')} with pre-tokenizer/decoder {text[:160]}"
        )
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size:
        raise ModelError(f"the tokenizer has {len(vocab)} tokens but the model's vocab_size is {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows past the tokenizer (vocab padded to a multiple)
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a")["input_ids"]
    return {
        "tokens": tokens,
        "token_types": types,
        "merges": merges,
        "backend": backend,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "unk_token_id": tokenizer.unk_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "add_bos_token": len(special) > len(plain) and special[0] == tokenizer.bos_token_id,
        "add_eos_token": len(special) > len(plain) and special[-1] == tokenizer.eos_token_id,
    }


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: str | Path,
    *,
    ftype: str = "f16",
    pre: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Write a llama-architecture ``model`` and its ``tokenizer`` as one GGUF file (atomically).

    Tensors take llama.cpp's names (``gguf``'s own name map: ``token_embd``, ``blk.N.attn_q``...);
    q and k rows are reordered for llama.cpp's rotary layout (:func:`hf_to_gguf_rope_rows`); with
    ``ftype="f16"`` matrices are stored in fp16 and vectors (norms) in fp32, as llama.cpp expects.
    The output head is omitted when tied to the embeddings (llama.cpp then reuses ``token_embd``).
    Returns a summary (tensor count, metadata written, warnings).
    """
    import gguf
    import numpy as np

    if ftype not in GGUF_TYPES:
        raise ConfigError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}; got {ftype!r}")
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise ModelError(
            f"the GGUF writer supports the llama architecture (Llama, SmolLM, TinyLlama...); this model "
            f"is '{getattr(config, 'model_type', None)}'. Export the Hugging Face directory and convert "
            "it with llama.cpp's convert_hf_to_gguf.py"
        )
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        raise ModelError(f"the GGUF writer supports plain rotary embeddings; this model uses rope_type '{rope_type}'")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ModelError("the GGUF writer supports llama models without attention or MLP biases")
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if rope_theta is None:
        raise ModelError("the model's config has no rope_theta")
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    n_layers = config.num_hidden_layers
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    warnings_: list[str] = []
    if pre is None:
        pre, warning = _pre_tokenizer_name(vocab["backend"])
        if warning:
            warnings_.append(warning)
    chat_template = getattr(tokenizer, "chat_template", None)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(name or str(getattr(config, "_name_or_path", "") or "model"))
        writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if ftype == "f16" else gguf.LlamaFileType.ALL_F32))
        writer.add_context_length(int(config.max_position_embeddings))
        writer.add_embedding_length(int(config.hidden_size))
        writer.add_block_count(int(n_layers))
        writer.add_feed_forward_length(int(config.intermediate_size))
        writer.add_head_count(int(n_heads))
        writer.add_head_count_kv(int(n_kv))
        writer.add_rope_dimension_count(int(head_dim))
        writer.add_rope_freq_base(float(rope_theta))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(int(config.vocab_size))
        if head_dim * n_heads != config.hidden_size:
            writer.add_key_length(int(head_dim))
            writer.add_value_length(int(head_dim))

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types(vocab["token_types"])
        if vocab["merges"]:
            writer.add_token_merges(vocab["merges"])
        else:
            # A vocabulary with no merges (one token per byte): GGUF drops empty arrays, and readers
            # then rebuild merges from scores, which give none for single-symbol tokens.
            writer.add_token_scores([0.0] * len(vocab["tokens"]))
        for key, add in (
            ("bos_token_id", writer.add_bos_token_id),
            ("eos_token_id", writer.add_eos_token_id),
            ("unk_token_id", writer.add_unk_token_id),
            ("pad_token_id", writer.add_pad_token_id),
        ):
            if vocab[key] is not None:
                add(int(vocab[key]))
        writer.add_add_bos_token(bool(vocab["add_bos_token"]))
        writer.add_add_eos_token(bool(vocab["add_eos_token"]))
        if isinstance(chat_template, str) and chat_template:
            writer.add_chat_template(chat_template)

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
        tied = bool(getattr(config, "tie_word_embeddings", False))
        count = 0
        for hf_name, tensor in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ModelError(f"the GGUF writer has no llama.cpp name for the tensor '{hf_name}'")
            data = tensor.detach().to("cpu", torch.float32)
            if gguf_name.endswith("attn_q.weight"):
                data = hf_to_gguf_rope_rows(data, n_heads)
            elif gguf_name.endswith("attn_k.weight"):
                data = hf_to_gguf_rope_rows(data, n_kv)
            array = data.numpy()
            if ftype == "f16" and array.ndim >= 2:
                array = array.astype(np.float16)
            writer.add_tensor(gguf_name, np.ascontiguousarray(array))
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return {
        "file": path.name,
        "type": ftype,
        "bytes": path.stat().st_size,
        "tensors": count,
        "architecture": "llama",
        "context_length": int(config.max_position_embeddings),
        "tokenizer_pre": pre,
        "vocab_size": int(config.vocab_size),
        "merges": len(vocab["merges"]),
        "chat_template": bool(chat_template),
        "warnings": warnings_,
    }


@contextlib.contextmanager
def _alone(path: Path) -> Iterator[Path]:
    """``path`` linked into an empty directory, so transformers reads only the GGUF (not a
    tokenizer.json lying beside it)."""
    with tempfile.TemporaryDirectory(prefix="affinage-gguf-") as folder:
        link = Path(folder) / path.name
        os.symlink(path.absolute(), link)
        yield link


TOKENIZER_PROBES = [
    "Hello world! Ça va ? Über naïve café — 2024: 12.5 GB, 3×4=12.",
    "  leading spaces and\ttabs\nand new lines\n\n",
    "def f(x):\n    return x ** 2  # émoji 🙂",
]


def check_gguf(path: str | Path, reference: Any, tokenizer: Any, *, texts: Sequence[str] | None = None) -> dict:
    """Load the GGUF file with transformers and compare it with ``reference`` (fp32 logits on the
    same token ids) and ``tokenizer`` (ids of each text, special token ids, chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from affinage.models.loading import _quiet_transformers

    path = Path(path)
    texts = list(texts) if texts is not None else check_texts(tokenizer)
    with _alone(path) as link, _quiet_transformers():
        try:
            loaded_tok = AutoTokenizer.from_pretrained(str(link.parent), gguf_file=link.name)
            loaded = AutoModelForCausalLM.from_pretrained(str(link.parent), gguf_file=link.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"transformers cannot load the GGUF file {path} back: {exc!r}") from exc
    loaded.eval()
    rows = encode_texts(tokenizer, texts)
    logits = compare_logits(sequence_logits(reference, rows), sequence_logits(loaded, rows))

    probes = [*texts, *TOKENIZER_PROBES]
    add_special = not getattr(tokenizer, "chat_template", None)
    mismatched = [
        t for t in probes
        if tokenizer(t, add_special_tokens=add_special)["input_ids"]
        != loaded_tok(t, add_special_tokens=add_special)["input_ids"]
    ]
    special = {
        key: [getattr(tokenizer, key), getattr(loaded_tok, key)]
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    }
    return {
        "logits": logits,
        "tokenizer": {
            "texts": len(probes),
            "identical_ids": len(probes) - len(mismatched),
            "mismatched_texts": mismatched[:5],
            "chat_template_equal": (tokenizer.chat_template or None) == (loaded_tok.chat_template or None),
            "special_ids": special,
            "special_ids_equal": all(a == b for a, b in special.values()),
            "vocab_size_equal": len(tokenizer) == len(loaded_tok),
        },
        "config": {
            key: getattr(loaded.config, key, None)
            for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                        "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")
        },
    }


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def _file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        files[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    return files


def _print_summary(manifest: dict[str, Any]) -> None:
    from rich.table import Table

    from affinage.engine.progress import console

    table = Table(title=f"export {manifest['output']}", show_header=True, header_style="bold")
    table.add_column("check")
    table.add_column("result", overflow="fold")
    p = manifest["parity"]
    table.add_row(
        "parity (exported vs " + p["reference"] + ")",
        f"max |Δlogit| {p['max_abs_diff']:.2e} (tolerance {p['tolerance']:g}), "
        f"top-1 agreement {p['top1_agreement']:.3f}, KL {p['mean_kl']:.2e} — "
        + ("[green]passed[/]" if p["passed"] else "[red]failed[/]"),
    )
    if q := manifest.get("int8"):
        table.add_row(
            "int8 quality",
            f"perplexity {q['perplexity_fp32']:.3f} → {q['perplexity_int8']:.3f} "
            f"({100 * q['perplexity_delta_relative']:+.2f}%), KL {q['kl_fp32_int8']:.2e}, "
            f"top-1 agreement {q['top1_agreement']:.3f} on {q['held_out_tokens']} tokens",
        )
        table.add_row(
            "int8 speed",
            f"decode {q['decode_tokens_per_s_fp32']:.1f} → {q['decode_tokens_per_s_int8']:.1f} tokens/s, "
            f"prefill {q['prefill_tokens_per_s_fp32']:.0f} → {q['prefill_tokens_per_s_int8']:.0f} tokens/s",
        )
    if g := manifest.get("gguf"):
        c = g["check"]
        t = c["tokenizer"]
        table.add_row(
            f"GGUF {g['path']}",
            f"{g['bytes'] / 2**20:.1f} MiB, {g['tensors']} tensors, pre-tokenizer {g['tokenizer_pre']}; "
            f"transformers reload: max |Δlogit| {c['logits']['max_abs_diff']:.2e} "
            f"(tolerance {g['tolerance']:g}), top-1 {c['logits']['top1_agreement']:.3f}; tokenizer "
            f"{t['identical_ids']}/{t['texts']} texts identical — "
            + ("[green]passed[/]" if g["passed"] else "[red]failed[/]"),
        )
    for note in manifest.get("notes", []):
        table.add_row("note", note)
    console.print(table)


def export(source: str, output: str | Path, options: ExportOptions | None = None) -> dict[str, Any]:
    """Export ``source`` to the Hugging Face directory ``output``; return the manifest (also written).

    Raises :class:`~affinage.errors.ModelError` (and writes nothing) when the parity check fails.
    """
    from affinage import __version__
    from affinage.models.adapters import _complete_generation_config
    from affinage.models.loading import DTYPES, load_model
    from affinage.utils.fs import atomic_directory, atomic_write_text

    options = options or ExportOptions()
    options.validate()
    output = Path(output).expanduser()
    src = find_source(source, options.base)
    if output.absolute() in {Path(p).expanduser().absolute() for p in (src.weights, src.tokenizer, source)}:
        raise ConfigError(f"--output {output} is the model being exported; choose another directory")
    eval_texts = None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    reference, tokenizer, adapter = _load_reference(src, options)
    source_dtype = getattr(reference.config, "dtype", None)
    stored = options.dtype
    if stored == "auto":
        stored_dtype = _stored_dtype(src)
        stored = {v: k for k, v in DTYPES.items()}.get(stored_dtype, "float32")
    if options.int8:  # read before the long work: a bad file fails fast
        eval_texts = read_eval_text(options.eval_text, tokenizer) if options.eval_text else HELD_OUT_TEXT
    texts = check_texts(tokenizer)
    rows = encode_texts(tokenizer, texts)
    reference_logits = sequence_logits(reference, rows)
    timings["load_s"] = time.perf_counter() - t0

    stored_merged = None
    if src.weights_are_merged and src.merged_dir is not None:
        # Compare the merged weights training stored with base + adapter, as a consistency note.
        stored_merged = compare_logits(
            reference_logits, sequence_logits(load_model(str(src.merged_dir), dtype=torch.float32), rows)
        )
    merged = merge_adapter(reference)  # fp32, plain transformers model
    del reference
    tolerance = options.tolerance or PARITY_TOLERANCE[stored]

    manifest: dict[str, Any] = {
        "affinage_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": {
            "name": source,
            "kind": src.kind,
            "weights": src.weights,
            "adapter": str(src.adapter) if src.adapter else None,
            "weights_were_merged": src.weights_are_merged,
            "dtype": str(source_dtype).replace("torch.", "") if source_dtype is not None else None,
        },
        "output": str(output),
        "dtype": stored,
        "adapter": adapter or None,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "options": asdict(options),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "threads": torch.get_num_threads()},
        "notes": list(src.notes),
    }
    if stored_merged is not None:
        manifest["stored_merged_vs_adapter"] = stored_merged
    if not manifest["chat_template"]:
        manifest["notes"].append(
            "the tokenizer has no chat template: chat clients and `affinage serve` need one "
            "(re-export with --chat-template chatml, or a template of your own)"
        )

    with atomic_directory(output) as tmp:
        t = time.perf_counter()
        saved = _cast_copy(merged, DTYPES[stored])
        saved.save_pretrained(tmp)
        del saved
        tokenizer.save_pretrained(tmp)
        _complete_generation_config(tmp, tokenizer)
        timings["save_s"] = time.perf_counter() - t

        t = time.perf_counter()
        reloaded = load_model(str(tmp), dtype=torch.float32)
        parity = compare_logits(reference_logits, sequence_logits(reloaded, rows))
        del reloaded
        parity.update(
            reference="base + adapter (peft)" if adapter else "source model",
            candidate=f"exported directory ({stored}) loaded in float32",
            prompts=len(texts),
            tolerance=tolerance,
            passed=parity["max_abs_diff"] <= tolerance,
        )
        manifest["parity"] = parity
        timings["parity_s"] = time.perf_counter() - t
        if not parity["passed"]:
            _print_summary(manifest)
            raise ModelError(
                f"export parity failed: the exported model's logits differ from the {parity['reference']}'s "
                f"by up to {parity['max_abs_diff']:.3g} (tolerance {tolerance:g}; top-1 agreement "
                f"{parity['top1_agreement']:.3f}). Nothing was written to {output}. Try --dtype float32, or "
                "raise --tolerance if this rounding is acceptable"
            )

        if options.int8:
            t = time.perf_counter()
            q = measure_int8(merged, tokenizer, eval_texts, decode_tokens=options.decode_tokens,
                             skip=options.int8_skip)
            q["held_out_source"] = options.eval_text or "built-in passages (affinage.export.HELD_OUT_TEXT)"
            skips = "".join(f" --int8-skip '{p}'" for p in options.int8_skip if p not in INT8_SKIP)
            q["load_with"] = f"affinage serve {output} --int8{skips}"
            manifest["int8"] = q
            if q["perplexity_delta_relative"] > 0.10:
                manifest["notes"].append(
                    f"int8 raises perplexity by {100 * q['perplexity_delta_relative']:.0f}% on the held-out "
                    "text: serve in fp32, or keep more layers in fp32 (e.g. --int8-skip down_proj) and measure again"
                )
            timings["int8_s"] = time.perf_counter() - t

        if options.gguf:
            t = time.perf_counter()
            gguf_path = tmp / "gguf" / f"model-{options.gguf}.gguf"
            info = write_gguf(merged, tokenizer, gguf_path, ftype=options.gguf, pre=options.gguf_pre,
                              name=Path(source).name or source)
            info["path"] = str(gguf_path.relative_to(tmp))
            info["check"] = check_gguf(gguf_path, merged, tokenizer, texts=texts)
            gguf_tol = GGUF_TOLERANCE[options.gguf]
            info["tolerance"] = gguf_tol
            tok_check = info["check"]["tokenizer"]
            info["passed"] = bool(
                info["check"]["logits"]["max_abs_diff"] <= gguf_tol
                and tok_check["special_ids_equal"]
                and tok_check["chat_template_equal"]
            )
            if tok_check["identical_ids"] < tok_check["texts"]:
                info["warnings"].append(
                    f"transformers' tokenizer rebuilt from the GGUF encodes {tok_check['texts'] - tok_check['identical_ids']} "
                    f"of {tok_check['texts']} probe texts differently (pre-tokenizer '{info['tokenizer_pre']}')"
                )
            manifest["gguf"] = info
            manifest["notes"].extend(info["warnings"])
            timings["gguf_s"] = time.perf_counter() - t
            if not info["passed"]:
                _print_summary(manifest)
                raise ModelError(
                    f"GGUF check failed: transformers' reload of {gguf_path.name} differs from the exported "
                    f"model (max |Δlogit| {info['check']['logits']['max_abs_diff']:.3g}, tolerance {gguf_tol:g}; "
                    f"special ids equal: {tok_check['special_ids_equal']}, chat template equal: "
                    f"{tok_check['chat_template_equal']}). Nothing was written to {output}"
                )

        timings["total_s"] = time.perf_counter() - t0
        manifest["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        manifest["files"] = _file_digests(tmp)
        atomic_write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2, ensure_ascii=False, default=str))
        _readable(tmp)
    _print_summary(manifest)
    return manifest


def _readable(folder: Path) -> None:
    """Give every file the permissions of a normal file (some writers create theirs 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _stored_dtype(src: ExportSource) -> torch.dtype | None:
    """The dtype the source's weights are stored in (its config.json), for ``--dtype auto``."""
    from affinage.models.loading import DTYPES, resolve_model

    for candidate in (src.merged_dir, src.weights):
        if candidate is None:
            continue
        with contextlib.suppress(Exception):
            resolved = resolve_model(str(candidate))
            if resolved.kind in ("local", "alias"):
                config = _read_json(Path(resolved.path) / "config.json")
                name = config.get("dtype") or config.get("torch_dtype")
                if name in DTYPES:
                    return DTYPES[name]
    return torch.float32


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The export manifest of ``folder``, or None when it has none."""
    path = Path(folder) / MANIFEST_NAME
    return _read_json(path) if path.is_file() else None
