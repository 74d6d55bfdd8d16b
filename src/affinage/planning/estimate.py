"""Cost of a training run before it starts: ``affinage estimate CONFIG.yaml``.

For the configured stage (sft, dpo, rm, grpo, ppo) and the methods it could use instead (full
fine-tuning, LoRA, prompt tuning; DPO with a frozen reference copy, with the adapter disabled as the
reference, or with precomputed reference log-probabilities), it reports:

* **FLOPs** per optimizer step and in total, from the model's shapes and the real token layout of
  the configured data (the recipe's own batching, packing and padding, simulated step by step);
* **tokens**: the data tokenised with the model's tokenizer (a stride sample for large files),
  the tokens training processes, and their ratio to the compute-optimal ~20 tokens per parameter
  (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", Table 3);
* **time** on the detected hardware: FLOPs / (measured matmul rate x a calibrated efficiency), plus the
  memory-bound optimizer update and, for RL, the memory-bound decoding;
* **peak memory** by component: weights, gradients, AdamW states, activations, logits, the
  reference copy, the runtime itself;
* **energy and CO2**: time x power per device x PUE, x the grid's carbon intensity.

FLOPs of one pass over a micro-batch (matrix products only; N_body = parameters of the decoder
layers, N_head = d x V of the output head, L layers of width d, ``tokens`` = positions through the
layers, ``head_tokens`` = positions where the head runs, ``attention`` = query-key pairs, i.e. the sum
over rows of (row length)^2):

* forward: ``2 N_body tokens + 2 N_head head_tokens + 4 L d attention`` (Kaplan et al. 2020, "Scaling
  Laws for Neural Language Models", Table 1: 2N per token, and 2 n_ctx d per layer for QK^T and as
  much for the weighted sum of V);
* full fine-tuning: 3x the forward (the backward pass costs twice the forward: one product for the
  gradient of the activations, one for the gradient of the weights): ``6 N`` per token and
  ``12 L d seq`` per token for attention (Chowdhery et al. 2022, "PaLM", Appendix B);
* frozen backbone (LoRA, DoRA, prompt tuning, freeze): the weights need no gradient, the activations
  still do: ``4 N`` per token, plus ``6 N_adapter`` for LoRA's own products (DoRA adds the weight norm
  of W + BA: ``4 r sum(in x out)`` per pass); prompt tuning runs every row ``num_virtual_tokens``
  longer; LoRA skips layer 0's query/key/value input gradients (their input is the frozen
  embeddings'); freeze runs the backward only down to its lowest trained layer and adds
  ``2 N_trainable`` per token for the weight gradients it keeps (an upper bound within that layer);
* gradient checkpointing runs the forward of the layers a second time;
* references (DPO, RL) and evaluation are forward passes; a precomputed DPO reference is one forward
  pass over the data before training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affinage.errors import ConfigError
from affinage.utils.fs import atomic_write_text

GiB = 1024**3

# ---------------------------------------------------------------------------------------------- constants
# Calibrated on measured runs of examples/quickstart.yaml on SmolLM2-135M (see docs/planning.md,
# "Calibration"); change them with the --efficiency option or here when your hardware disagrees.
EFFICIENCY = {
    ("cpu", "fp32", "full"): 0.78, ("cpu", "fp32", "adapter"): 0.72,
    ("cpu", "bf16", "full"): 0.42, ("cpu", "bf16", "adapter"): 0.28,
    ("cuda", "fp32", "full"): 0.40, ("cuda", "fp32", "adapter"): 0.30,
    ("cuda", "bf16", "full"): 0.40, ("cuda", "bf16", "adapter"): 0.30,
    ("cpu", "bf16", "prompt_tuning"): 0.34,
}
"""Share of the measured 2048^3 matmul rate (in the run's compute dtype) a training step achieves: the
rest goes to elementwise work (norms, softmax, casts), skinny matrices (LoRA) and framework overhead.
``adapter`` covers LoRA, DoRA, prompt tuning and freeze; prompt tuning has its own bf16 CPU value
(no skinny LoRA products: it runs nearer the dense rate). The CPU values are calibrated on this
project's 2-core AMD EPYC (docs/planning.md); the CUDA values are assumptions (typical model FLOP
utilisation of single-GPU training), not measurements."""
DECODE_EFFICIENCY = 0.10
"""Share of the matmul rate of small-batch decoding when it is compute-bound (rare: usually memory-bound)."""
PEAK_ACTIVATION_FACTOR = {"full": 1.1, "adapter": 1.7}
"""Memory held at the peak of the backward pass / the bytes autograd saves for it (the latter from
:func:`activation_bytes_per_token_layer`, checked against ``saved_tensors_hooks``): gradients of the
activations in flight, temporaries and allocator fragmentation. Calibrated on the peak resident memory
of SmolLM2 runs (docs/planning.md): peft's extra casts and small tensors make it higher for adapters."""
LOGIT_BYTES_EXTRA = 8
"""Bytes per kept logit beyond the model's output: the fp32 log-softmax the loss saves and its gradient."""
OPTIMIZER_BYTES_PER_PARAM = 64
"""Memory traffic of one AdamW update per trainable fp32 parameter (weight, gradient and two moments
read and written, the foreach temporaries and the gradient-norm pass)."""
RUNTIME_BYTES = {"cpu": 0.45 * GiB, "cuda": 0.5 * GiB}
"""The process before any model: Python, torch, transformers, peft, accelerate and the tokenizer
(CPU resident memory, measured: 0.46 GiB), or the CUDA context (an assumption)."""
DATA_BYTES_PER_TOKEN = 72
"""Tokenised examples live in RAM as Python lists (input ids and labels): about 2 x 36 bytes a token."""
CHINCHILLA_TOKENS_PER_PARAM = 20.0
DEFAULT_GRID_INTENSITY = 475.0
"""gCO2 per kWh: the world's average electricity (IEA, 2019); use your grid's (France ~60, Poland ~700)."""
CPU_WATTS_PER_CORE = 10.0
"""CPU power when none is given: server CPUs draw about 4-12 W of TDP per core under load."""
GPU_WATTS = {"H200": 700.0, "H100": 700.0, "A100": 400.0, "A10": 150.0, "L40": 300.0, "L4": 72.0, "T4": 70.0,
             "V100": 300.0, "4090": 450.0, "3090": 350.0}
"""Board power (TDP) of common GPUs by name fragment; others: 300 W."""
SIMULATED_STEPS = 256
"""Optimizer steps whose batches are laid out exactly; the rest are taken to look like them."""


@dataclass
class EstimateOptions:
    power_w: float | None = None
    """Power per device in W; None: GPU TDP by name, or CPU_WATTS_PER_CORE x threads."""
    grid_intensity: float = DEFAULT_GRID_INTENSITY
    pue: float = 1.0
    processes: int = 1
    efficiency: float | None = None
    """Overrides EFFICIENCY for training passes."""
    matmul_flops: float | None = None
    """Skip the measurement: the matmul rate in FLOP/s."""
    bandwidth: float | None = None
    """Skip the measurement: memory bandwidth in bytes/s."""
    sample_rows: int = 20000


# ---------------------------------------------------------------------------------------------- hardware


@dataclass
class Hardware:
    device: str
    name: str
    dtype: str
    matmul_flops: float
    """Measured (or given) rate of a 2048^3 matrix product in ``dtype``, FLOP/s."""
    bandwidth: float
    """Measured copy bandwidth, bytes/s (read + write)."""
    threads: int
    memory_bytes: int
    power_w: float
    power_note: str
    measured: bool
    load_average: float | None = None
    """One-minute load average when measured (CPU): other work makes a run slower than estimated."""


def measure_matmul_flops(dtype: Any, device: Any, size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of ``size^3`` matrix products in ``dtype`` on ``device``: best of ``repeats`` after a warm-up."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = math.inf
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        if i:  # the first product warms up the kernels
            best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def measure_bandwidth(device: Any, mib: int = 256, repeats: int = 3) -> float:
    """Bytes/s of a large tensor copy (each byte read once and written once)."""
    import torch

    src = torch.ones(mib * 2**18, device=device)  # fp32
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def _sync(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def detect_hardware(dtype: Any, options: EstimateOptions) -> Hardware:
    import platform

    import psutil
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    threads = torch.get_num_threads()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        name, memory = props.name, props.total_memory
        watts = next((w for key, w in GPU_WATTS.items() if key in name), 300.0)
        note = f"{watts:.0f} W board power of {name}" if any(k in name for k in GPU_WATTS) else "300 W (unknown GPU)"
    else:
        name = _cpu_name() or platform.processor() or "CPU"
        memory = psutil.virtual_memory().total
        watts = CPU_WATTS_PER_CORE * threads
        note = f"{CPU_WATTS_PER_CORE:.0f} W x {threads} core(s) (TDP share)"
    if options.power_w is not None:
        watts, note = options.power_w, "given"
    measured = options.matmul_flops is None or options.bandwidth is None
    flops = options.matmul_flops or measure_matmul_flops(dtype, device)
    bandwidth = options.bandwidth or measure_bandwidth(device)
    try:
        load = None if cuda else round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return Hardware(str(device), name, str(dtype).removeprefix("torch."), flops, bandwidth, threads, memory, watts,
                    note, measured, load)


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------- model


@dataclass
class Architecture:
    """What the formulas need from a model: its shapes and parameter counts."""

    layers: int
    d_model: int
    d_ff: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    params: int
    """All parameters (tied ones once)."""
    embedding: int
    """Input embedding parameters (a lookup: no FLOPs)."""
    head: int
    """Parameters of the output head's matrix product (d x V for a LM head, d for a reward head)."""
    tied: bool
    body: int
    """Weights of the matrix products inside the decoder layers: what every token multiplies (norm
    scales and biases are left out: elementwise, negligible FLOPs)."""

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass
class Trainable:
    """What one method trains, from the model actually wrapped (on the meta device)."""

    method: str
    trainable: int
    """Trainable parameters."""
    adapter: int = 0
    """LoRA/DoRA parameters (their own matrix products: 2 r (in + out) per token)."""
    dora_weights: int = 0
    """DoRA: sum of r x in x out over adapted layers: the product B A it forms for the weight norm,
    each pass (4 FLOPs per term with its backward; measured within 1% by torch's FlopCounterMode)."""
    lora_inputs: int = 0
    """Sum of in_features over adapted layers of one decoder layer (peft keeps an fp32 copy of each input)."""
    trainable_body: int = 0
    """freeze: trainable parameters inside the layers (weight gradients)."""
    no_input_grad: int = 0
    """LoRA/DoRA: weights (base and LoRA A) of layer 0's query/key/value projections, whose input
    gradient is never computed: their input depends on the frozen embeddings only."""
    head_trainable: bool = False
    virtual_tokens: int = 0
    first_trained_layer: int = 0
    """freeze: the lowest decoder layer holding a trainable parameter (layers below it need no
    backward pass at all); the number of layers when only the head trains."""


ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv")


def meta_model(model_cfg: Any, *, reward: bool = False) -> Any:
    """The model of ``model_cfg`` built on the meta device: shapes and names, no memory, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from affinage.errors import ModelError
    from affinage.models.loading import resolve_model

    source = resolve_model(model_cfg.name)
    kwargs: dict[str, Any] = {"trust_remote_code": model_cfg.trust_remote_code}
    try:
        if source.kind == "gguf":
            config = AutoConfig.from_pretrained(str(Path(source.path).parent), gguf_file=Path(source.path).name)
        else:
            config = AutoConfig.from_pretrained(source.path, revision=model_cfg.revision, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config of model '{model_cfg.name}': {exc}") from exc
    with torch.device("meta"):
        if reward:
            config.num_labels = 1  # a scalar score head, as the reward recipe loads it
            return AutoModelForSequenceClassification.from_config(config, **kwargs)
        return AutoModelForCausalLM.from_config(config, **kwargs)


def architecture(model: Any) -> Architecture:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    embed = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    if out is None:  # a reward model: the score head
        out = getattr(model, "score", None)
    head_weight = out.weight
    params = sum(p.numel() for p in model.parameters())  # parameters() lists tied tensors once
    body = sum(p.numel() for p in model.parameters() if p.dim() >= 2 and p is not embed and p is not head_weight)
    return Architecture(
        layers=config.num_hidden_layers, d_model=d, d_ff=getattr(config, "intermediate_size", None) or 4 * d,
        heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
        vocab=config.vocab_size, params=params, embedding=embed.numel(), head=head_weight.numel(),
        tied=head_weight is embed, body=body,
    )


def trainable_of(model: Any, adapter_cfg: Any, *, reward: bool = False) -> Trainable:
    """Apply the method of ``adapter_cfg`` to a meta model and count what trains."""
    from affinage.models.adapters import apply_adapter, count_parameters

    method = adapter_cfg.method
    base_head = model.get_output_embeddings() if not reward else model.score
    if reward:
        from affinage.recipes.reward import apply_reward_adapter

        wrapped = apply_reward_adapter(model, adapter_cfg)
    else:
        wrapped = apply_adapter(model, adapter_cfg)
    trainable, _ = count_parameters(wrapped)
    result = Trainable(method, trainable, head_trainable=bool(base_head.weight.requires_grad))
    if method in ("lora", "dora"):
        for name, module in wrapped.named_modules():
            if hasattr(module, "lora_A") and hasattr(module, "base_layer") and "default" in module.lora_A:
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight  # [r, in], [out, r]
                result.adapter += a.numel() + b.numel()
                if method == "dora":
                    result.dora_weights += a.shape[0] * module.base_layer.weight.numel()  # r x in x out
                if ".layers.0." in name or ".h.0." in name:  # the per-layer inputs, counted on the first layer
                    result.lora_inputs += a.shape[1]
        for name, module in wrapped.named_modules():
            if (".layers.0." in name or ".h.0." in name) and name.rsplit(".", 1)[-1] in ATTENTION_INPUTS:
                weight = module.base_layer.weight if hasattr(module, "base_layer") else getattr(module, "weight", None)
                if weight is not None:
                    result.no_input_grad += weight.numel()
                    if hasattr(module, "lora_A") and "default" in module.lora_A:
                        result.no_input_grad += module.lora_A["default"].weight.numel()
    elif method == "prompt_tuning":
        result.virtual_tokens = adapter_cfg.num_virtual_tokens
    elif method == "freeze":
        head = model.get_output_embeddings() if not reward else model.score
        embed = model.get_input_embeddings()
        skip = {id(head.weight), id(embed.weight)}
        result.trainable_body = sum(p.numel() for p in wrapped.parameters()
                                    if p.requires_grad and id(p) not in skip and p.dim() >= 2)
        layers = [int(m.group(1)) for name, p in wrapped.named_parameters() if p.requires_grad
                  and (m := re.search(r"\.(?:layers|h)\.(\d+)\.", name))]
        n_layers = architecture(model).layers
        result.first_trained_layer = 0 if embed.weight.requires_grad else min(layers, default=n_layers)
    return result


# ---------------------------------------------------------------------------------------------- FLOPs


@dataclass
class Pass:
    """One forward pass over one micro-batch: what the FLOP and memory formulas read."""

    rows: int
    tokens: int
    """Positions through the layers, padding included (soft prompts included)."""
    head_tokens: int
    """Positions where the output head runs (only trained ones: ``logits_to_keep``)."""
    attention: int
    """Query-key pairs: sum over attention blocks of length^2 (padded rows: rows x width^2)."""
    count: int = 1
    """Forward passes (micro-batches) summed into this one."""

    def __add__(self, other: Pass) -> Pass:
        return Pass(self.rows + other.rows, self.tokens + other.tokens, self.head_tokens + other.head_tokens,
                    self.attention + other.attention, self.count + other.count)

    def scaled(self, factor: float) -> Pass:
        return Pass(*(x * factor for x in dataclasses.astuple(self)))  # type: ignore[arg-type]


ZERO = Pass(0, 0, 0, 0, 0)


def forward_flops(arch: Architecture, p: Pass, adapter: int = 0) -> float:
    """``2 N_body tokens + 2 N_head head_tokens + 4 L d attention (+ 2 N_adapter tokens)``."""
    return 2 * arch.body * p.tokens + 2 * arch.head * p.head_tokens + 4 * arch.layers * arch.d_model * p.attention \
        + 2 * adapter * p.tokens


def train_flops(arch: Architecture, p: Pass, t: Trainable, *, checkpointing: bool = False) -> float:
    """Forward and backward of one micro-batch for the method of ``t`` (see the module docstring)."""
    body, head, attn = arch.body * p.tokens, arch.head * p.head_tokens, arch.layers * arch.d_model * p.attention
    if t.method == "full":
        flops = 6 * body + 6 * head + 12 * attn
    else:
        flops = 2 * body + 2 * head + 4 * attn  # forward
        # input gradients, from the head down to the lowest layer that trains (all of them but for freeze)
        above = (arch.layers - t.first_trained_layer) / arch.layers
        flops += above * (2 * body + 8 * attn) + (2 * head if above else 0)
        # LoRA's own products; layer 0's query/key/value never need their input gradient
        flops += 6 * t.adapter * p.tokens + 4 * t.dora_weights * p.count - 2 * t.no_input_grad * p.tokens
        # weight gradients of the parameters freeze keeps trainable
        flops += 2 * t.trainable_body * p.tokens + (2 * head if t.head_trainable else 0)
    if checkpointing:
        flops += 2 * body + 4 * attn + 2 * t.adapter * p.tokens
    return flops


# ---------------------------------------------------------------------------------------------- memory


def layer_activation_elements(arch: Architecture) -> int:
    """Elements a decoder layer keeps for the backward pass, per token (Llama-style block).

    Attention block: its input and normed input (2d), q and k after RoPE and v (d + 2 d_kv), the
    attention output and its reshaped copy (2d). MLP block: input and normed input (2d), gate and up
    projections (2 d_ff), the activation and the product fed to the down projection (2 d_ff).
    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    Section 4.1) count the same tensors for GPT: 34 s b h bytes per layer without the attention
    scores that fused attention never stores.
    """
    return 7 * arch.d_model + 2 * arch.kv_dim + 4 * arch.d_ff


def activation_bytes_per_token_layer(arch: Architecture, t: Trainable, *, weights_bytes: int, compute_bytes: int) -> float:
    """Bytes one token keeps in one layer for the backward pass.

    ``layer_activation_elements x compute_bytes``, plus two effects measured with
    ``torch.autograd.graph.saved_tensors_hooks`` on SmolLM2 (docs/planning.md, "Calibration"):

    * adapters over weights stored below fp32: peft runs LoRA in fp32 and keeps an fp32 copy of each
      adapted layer's input (``4 x sum(in_features)``);
    * fp32 weights under autocast (mixed precision): the residual stream, the norms and RoPE stay in
      fp32 and their low-precision casts are kept too (``16 d + 4 d_kv``).

    Measured / formula on SmolLM2-135M: 0.91 (LoRA, bf16), 1.01 (LoRA, fp32), 1.02 (full, bf16
    autocast), 1.12 (full, fp32).
    """
    value = layer_activation_elements(arch) * compute_bytes
    if t.method in ("lora", "dora") and compute_bytes < 4:
        value += 4 * t.lora_inputs
    if weights_bytes > compute_bytes:
        value += 16 * arch.d_model + 4 * arch.kv_dim
    return value


@dataclass
class Memory:
    components: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.components.values())


def _method_class(method: str) -> str:
    return "full" if method == "full" else "adapter"


def dtype_bytes(dtype: Any) -> int:
    import torch

    return torch.tensor([], dtype=dtype).element_size()


def training_memory(arch: Architecture, t: Trainable, *, weights_bytes: int, compute_bytes: int, peak: Pass,
                    reference: str, frozen_head_chunked: bool = False, checkpointing: bool = False,
                    device: str = "cpu", data_tokens: float = 0, extra: dict[str, float] | None = None) -> Memory:
    """Peak memory of one training process by component, in bytes (the formulas of docs/planning.md).

    ``peak`` is the largest micro-batch; ``reference`` is ``frozen copy`` (a second set of weights),
    or anything else (none, adapter disabled, precomputed: no weights).
    """
    c: dict[str, float] = {}
    c["weights"] = arch.params * weights_bytes
    if weights_bytes > compute_bytes and t.method in ("full", "freeze"):
        # autocast keeps a low-precision copy of every weight that requires grad during the forward
        c["autocast copies"] = (arch.body + arch.head if t.method == "full" else t.trainable_body) * compute_bytes
    adapter_params = t.trainable if t.method in ("lora", "dora", "prompt_tuning") else 0
    c["adapter weights"] = adapter_params * 4
    c["gradients"] = t.trainable * 4
    c["optimizer (AdamW)"] = 2 * t.trainable * 4
    if reference == "frozen copy":
        c["reference copy"] = arch.params * weights_bytes
    per_token_layer = activation_bytes_per_token_layer(arch, t, weights_bytes=weights_bytes, compute_bytes=compute_bytes)
    factor = PEAK_ACTIVATION_FACTOR[_method_class(t.method)]
    if checkpointing:
        # only each layer's input is kept, plus one layer's activations while it is recomputed
        c["activations"] = factor * peak.tokens * (arch.layers * arch.d_model * compute_bytes + per_token_layer)
    else:
        c["activations"] = factor * peak.tokens * arch.layers * per_token_layer
    head_is_lm = arch.head == arch.d_model * arch.vocab
    if head_is_lm and not frozen_head_chunked:
        c["logits"] = peak.head_tokens * arch.vocab * (compute_bytes + LOGIT_BYTES_EXTRA)
    if extra:
        c.update(extra)
    c["runtime"] = RUNTIME_BYTES["cuda" if device.startswith("cuda") else "cpu"]
    if not device.startswith("cuda"):
        c["data"] = data_tokens * DATA_BYTES_PER_TOKEN
    return Memory({k: float(v) for k, v in c.items() if v})


# ---------------------------------------------------------------------------------------------- data


@contextmanager
def sampled_files(data_cfg: Any, sample_rows: int) -> Iterator[tuple[Any, float, int]]:
    """``data_cfg`` itself when its files hold at most ``sample_rows`` rows (or ``max_examples`` caps them),
    else a copy pointing at a uniform random sample (seeded, without replacement) of ``sample_rows``
    rows of all files: yields (config, scale, rows in the files). A stride sample would be biased on
    files whose rows repeat a pattern."""
    from affinage.data.io import read_rows, write_jsonl

    files = list(data_cfg.train) + list(getattr(data_cfg, "validation", []))
    cap = getattr(data_cfg, "max_examples", None)
    counts = {path: sum(1 for _ in read_rows(path, split="validation" if path in getattr(data_cfg, "validation", []) else "train"))
              for path in dict.fromkeys(files)}
    total = sum(counts.values())
    if total <= sample_rows or (cap is not None and cap <= sample_rows):
        yield data_cfg, 1.0, total
        return
    chosen = set(random.Random(0).sample(range(total), sample_rows))
    with tempfile.TemporaryDirectory(prefix="affinage-estimate-") as tmp:
        mapping, kept, offset = {}, 0, 0
        for i, path in enumerate(counts):
            split = "validation" if path in getattr(data_cfg, "validation", []) else "train"
            rows = [row for n, (_, row) in enumerate(read_rows(path, split=split)) if offset + n in chosen]
            offset += counts[path]
            target = Path(tmp) / f"{i}.jsonl"
            write_jsonl(target, rows)
            mapping[path] = str(target)
            kept += len(rows)
        changes = {"train": [mapping[p] for p in data_cfg.train]}
        if hasattr(data_cfg, "validation"):
            changes["validation"] = [mapping[p] for p in data_cfg.validation]
        yield dataclasses.replace(data_cfg, **changes), total / kept, total


def count_trained(labels: list[int]) -> int:
    """Positions whose next token is trained (the shifted loss): ``labels[1:] != -100``."""
    return sum(1 for label in labels[1:] if label != -100)


def sft_pass(examples: list[Any], *, packed: bool, virtual_tokens: int = 0) -> Pass:
    """The layout :mod:`affinage.recipes.sft` gives one micro-batch (collate_packed or collate_padded)."""
    if packed:
        lengths = [len(ex.input_ids) for ex in examples]
        return Pass(1, sum(lengths), sum(count_trained(ex.labels) for ex in examples), sum(n * n for n in lengths))
    width = max(len(ex.input_ids) for ex in examples)
    positions = {j for ex in examples for j, label in enumerate(ex.labels[1:]) if label != -100}
    rows, w = len(examples), width + virtual_tokens
    return Pass(rows, rows * w, rows * len(positions), rows * w * w)


def _steps(total_steps: int) -> range:
    return range(min(total_steps, SIMULATED_STEPS))


def _mean_step(plan: Any, total_steps: int, make_pass: Any) -> tuple[Pass, Pass, int]:
    """(mean work of one step summed over its micro-batches, largest micro-batch, micro-batches per step)."""
    total, peak, n = ZERO, ZERO, 0
    steps = _steps(total_steps)
    for step in steps:
        for micro in plan.micro_batches(step, 0):
            p = make_pass(micro)
            total = total + p
            peak = max(peak, p, key=lambda x: (x.tokens, x.head_tokens))
            n += 1
    return total.scaled(1 / len(steps)), peak, n // len(steps)


# ---------------------------------------------------------------------------------------------- results


@dataclass
class MethodEstimate:
    label: str
    method: str
    configured: bool
    reference: str
    trainable_params: int
    flops: dict[str, float]
    """Totals by phase: train, reference, generation, evaluation, precompute; and per_step."""
    time_s: dict[str, float]
    """per_step, total, and by phase."""
    memory: dict[str, float]
    peak_memory_bytes: float
    energy_kwh: float
    co2_kg: float
    notes: list[str] = field(default_factory=list)


@dataclass
class EstimateReport:
    config: str
    stage: str
    model: dict[str, Any]
    hardware: dict[str, Any]
    data: dict[str, Any]
    steps: int
    constants: dict[str, Any]
    methods: list[MethodEstimate]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- stages


@dataclass
class _Context:
    cfg: Any
    hardware: Hardware
    arch: Architecture
    options: EstimateOptions
    compute_dtype: Any
    meta_factory: Any
    reward: bool = False


def estimate_config(cfg: Any, options: EstimateOptions | None = None, *, hardware: Hardware | None = None) -> EstimateReport:
    """Estimate the run ``cfg`` describes and its alternative methods (see the module docstring)."""
    import torch

    from affinage.models.loading import resolve_dtype

    options = options or EstimateOptions()
    stage = getattr(cfg, "stage", None)
    if stage not in STAGES:
        raise ConfigError(f"affinage estimate supports the training stages {', '.join(STAGES)}; this config is for '{stage}'")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    compute_dtype = resolve_dtype(cfg.model.dtype, device)
    hardware = hardware or detect_hardware(compute_dtype, options)
    if options.power_w is not None:
        hardware = dataclasses.replace(hardware, power_w=options.power_w, power_note="given")
    reward = stage == "rm"

    def factory() -> Any:
        return meta_model(cfg.model, reward=reward)

    model = factory()
    arch = architecture(model)
    ctx = _Context(cfg, hardware, arch, options, compute_dtype, factory, reward)
    report = STAGES[stage](ctx)
    report.model = {
        "name": cfg.model.name, "params": arch.params, "body_params": arch.body, "head_params": arch.head,
        "embedding_params": arch.embedding, "tied_embeddings": arch.tied, "layers": arch.layers,
        "d_model": arch.d_model, "d_ff": arch.d_ff, "heads": arch.heads, "kv_heads": arch.kv_heads, "vocab": arch.vocab,
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
    }
    report.hardware = dataclasses.asdict(hardware)
    report.constants = {
        "efficiency": {"full": _efficiency(ctx, "full"), "adapter": _efficiency(ctx, "lora")},
        "peak_activation_factor": PEAK_ACTIVATION_FACTOR, "logit_bytes_extra": LOGIT_BYTES_EXTRA,
        "optimizer_bytes_per_param": OPTIMIZER_BYTES_PER_PARAM, "runtime_bytes": RUNTIME_BYTES,
        "chinchilla_tokens_per_param": CHINCHILLA_TOKENS_PER_PARAM, "grid_intensity_g_per_kwh": options.grid_intensity,
        "pue": options.pue, "power_w_per_device": hardware.power_w, "processes": options.processes,
    }
    return report


def _weights_bytes(method: str, compute_dtype: Any) -> tuple[int, int]:
    """(bytes per weight, bytes per activation): the recipes keep fp32 master weights for full/freeze
    (computing under autocast) and frozen weights in the compute dtype under adapters."""
    c = dtype_bytes(compute_dtype)
    return (4 if method in ("full", "freeze") else c), c


def efficiency(device: str, compute_dtype: Any, method: str) -> float:
    """The calibrated share of the matmul rate (:data:`EFFICIENCY`) for a device, dtype and method."""
    precision = "fp32" if dtype_bytes(compute_dtype) == 4 else "bf16"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return EFFICIENCY.get((kind, precision, method), EFFICIENCY[(kind, precision, _method_class(method))])


def _efficiency(ctx: _Context, method: str) -> float:
    if ctx.options.efficiency is not None:
        return ctx.options.efficiency
    return efficiency(ctx.hardware.device, ctx.compute_dtype, method)


def _finish(ctx: _Context, label: str, t: Trainable, configured: bool, reference: str, flops: dict[str, float],
            steps: int, memory: Memory, *, updates: int = 1, decode_s: float = 0.0,
            notes: list[str] | None = None) -> MethodEstimate:
    """Turn FLOPs into time (compute-bound passes, the memory-bound AdamW ``updates`` per step, the
    decoding time ``decode_s`` per step), then energy."""
    hw = ctx.hardware
    rate = hw.matmul_flops * _efficiency(ctx, t.method)
    optimizer_s = t.trainable * OPTIMIZER_BYTES_PER_PARAM / hw.bandwidth
    per_step_flops = (flops["train"] + flops.get("reference", 0.0) + flops.get("generation", 0.0)) / steps
    step_s = (flops["train"] + flops.get("reference", 0.0)) / steps / rate + optimizer_s * updates + decode_s
    time_s = {
        "per_step": step_s,
        "train": step_s * steps,
        "evaluation": flops.get("evaluation", 0.0) / rate,
        "precompute": flops.get("precompute", 0.0) / rate,
    }
    time_s["total"] = time_s["train"] + time_s["evaluation"] + time_s["precompute"]
    devices = ctx.options.processes
    notes = list(notes or [])
    if memory.total > hw.memory_bytes:
        notes.append(f"does not fit: {memory.total / GiB:.1f} GiB > {hw.memory_bytes / GiB:.1f} GiB on {hw.device}")
    energy_kwh = time_s["total"] / 3600 * hw.power_w * devices * ctx.options.pue / 1000
    all_flops = dict(flops)
    all_flops["per_step"] = per_step_flops
    all_flops["total"] = sum(flops.values())
    return MethodEstimate(label, t.method, configured, reference, t.trainable, all_flops, time_s, memory.components,
                          memory.total, energy_kwh, energy_kwh * ctx.options.grid_intensity / 1000, notes)


def _adapter_variants(cfg: Any, methods: Iterable[str]) -> list[tuple[str, Any, bool]]:
    """(label, adapter config, configured?) for the configured method first, then the others."""
    configured = cfg.adapter.method
    out = [(configured, cfg.adapter, True)]
    for m in methods:
        if m != configured:
            out.append((m, dataclasses.replace(cfg.adapter, method=m), False))
    return out


def _sft(ctx: _Context) -> EstimateReport:
    from affinage.data.sft import load_sft_data
    from affinage.engine.batching import BatchPlan
    from affinage.models.loading import load_tokenizer, model_supports_packing
    from affinage.recipes.sft import _decide_packing

    cfg, world = ctx.cfg, ctx.options.processes
    tokenizer = load_tokenizer(cfg.model.name, chat_template=cfg.model.chat_template, revision=cfg.model.revision,
                               trust_remote_code=cfg.model.trust_remote_code)
    with sampled_files(cfg.data, ctx.options.sample_rows) as (data_cfg, scale, rows):
        data = load_sft_data(data_cfg, tokenizer)
    train, val = data.train, data.validation
    num_train = round(len(train) * scale)
    plan = BatchPlan(len(train), cfg.train.batch_size, cfg.train.grad_accum, world, cfg.train.seed)
    steps = BatchPlan(num_train, cfg.train.batch_size, cfg.train.grad_accum, world, cfg.train.seed).total_steps(
        cfg.train.epochs, cfg.train.max_steps)
    tokens = sum(len(ex.input_ids) for ex in train)
    trained = sum(count_trained(ex.labels) for ex in train)
    supports = model_supports_packing(ctx.meta_factory())
    evals = _num_evals(cfg, steps, bool(val))
    methods = []
    for label, adapter_cfg, configured in _adapter_variants(cfg, ("full", "lora", "prompt_tuning")):
        variant = dataclasses.replace(cfg, adapter=adapter_cfg)
        t = trainable_of(ctx.meta_factory(), adapter_cfg)
        packed = _decide_packing(dataclasses.replace(variant, data=dataclasses.replace(cfg.data, packing="auto")
                                                     if adapter_cfg.method == "prompt_tuning" else cfg.data), supports)
        v = t.virtual_tokens

        def make(micro: list[int], _packed: bool = packed, _v: int = v) -> Pass:
            return sft_pass([train[i] for i in micro], packed=_packed, virtual_tokens=_v)

        mean, peak, _ = _mean_step(plan, steps, make)
        if configured:
            configured_mean = mean
        flops = {"train": train_flops(ctx.arch, mean, t, checkpointing=cfg.model.gradient_checkpointing) * steps}
        if evals:
            eval_pass = ZERO
            for start in range(0, len(val), cfg.train.batch_size):
                eval_pass = eval_pass + sft_pass(val[start:start + cfg.train.batch_size], packed=packed, virtual_tokens=v)
            flops["evaluation"] = evals * forward_flops(ctx.arch, eval_pass, t.adapter) * scale / world
        wb, cb = _weights_bytes(t.method, ctx.compute_dtype)
        memory = training_memory(ctx.arch, t, weights_bytes=wb, compute_bytes=cb, peak=peak, reference="none",
                                 checkpointing=cfg.model.gradient_checkpointing, device=ctx.hardware.device,
                                 data_tokens=(tokens + sum(len(e.input_ids) for e in val)) * scale)
        notes = [f"packing {'on' if packed else 'off'}"] + ([f"{v} soft-prompt tokens per row"] if v else [])
        methods.append(_finish(ctx, _label(label, adapter_cfg), t, configured, "-", flops, steps, memory, notes=notes))
    return EstimateReport(
        config="", stage="sft", model={}, hardware={}, steps=steps, constants={}, methods=methods,
        data=_data_summary(rows, scale, len(train), len(val), tokens, trained, steps,
                           mean_tokens_per_step=configured_mean.tokens, world=world, arch=ctx.arch,
                           processed_key="tokens processed (with padding)"),
        notes=_sample_note(scale),
    )


def _label(method: str, adapter_cfg: Any) -> str:
    if method in ("lora", "dora"):
        return f"{method} r={adapter_cfg.r}"
    if method == "prompt_tuning":
        return f"prompt tuning ({adapter_cfg.num_virtual_tokens})"
    return method


def _num_evals(cfg: Any, steps: int, has_validation: bool) -> int:
    if not has_validation:
        return 0
    every = cfg.run.eval_every
    return (len(range(every, steps, every)) if every else 0) + 1  # periodic ones, and the one at the end


def _sample_note(scale: float) -> list[str]:
    if scale == 1.0:
        return []
    return [f"the data is large: token counts come from a random sample of 1 row in {scale:.1f}, scaled up"]


def _data_summary(rows: int, scale: float, n_train: int, n_val: int, tokens: int, trained: int, steps: int, *,
                  mean_tokens_per_step: float, world: int, arch: Architecture, processed_key: str) -> dict[str, Any]:
    processed = mean_tokens_per_step * steps * world
    return {
        "rows": rows, "sampled": scale != 1.0, "scale": scale,
        "train_examples": round(n_train * scale), "validation_examples": round(n_val * scale),
        "train_tokens": round(tokens * scale), "trained_tokens": round(trained * scale),
        processed_key: round(processed),
        "epochs_over_data": processed / max(1.0, tokens * scale),
        "compute_optimal_tokens": CHINCHILLA_TOKENS_PER_PARAM * arch.params,
        "fraction_of_compute_optimal": processed / (CHINCHILLA_TOKENS_PER_PARAM * arch.params),
    }


def _dpo(ctx: _Context) -> EstimateReport:
    from functools import partial

    from affinage.data.preference import (
        collate_pairs,
        collate_pairs_shared_prompt,
        collate_unpaired,
        load_preference_data,
    )
    from affinage.engine.batching import BatchPlan
    from affinage.losses.preference import PreferenceLossName
    from affinage.models.loading import load_tokenizer, model_supports_packing

    cfg, world = ctx.cfg, ctx.options.processes
    unpaired = cfg.loss_name == PreferenceLossName.KTO
    tokenizer = load_tokenizer(cfg.model.name, chat_template=cfg.model.chat_template, revision=cfg.model.revision,
                               trust_remote_code=cfg.model.trust_remote_code)
    with sampled_files(cfg.data, ctx.options.sample_rows) as (data_cfg, scale, rows):
        data = load_preference_data(data_cfg, tokenizer, unpaired=unpaired, seed=cfg.train.seed)
    train, val = data.train, data.validation
    plan = BatchPlan(len(train), cfg.train.batch_size, cfg.train.grad_accum, world, cfg.train.seed)
    steps = BatchPlan(round(len(train) * scale), cfg.train.batch_size, cfg.train.grad_accum, world,
                      cfg.train.seed).total_steps(cfg.train.epochs, cfg.train.max_steps)
    sides = [(x.completion, x.kl) if unpaired else (x.chosen, x.rejected) for x in train]
    tokens = sum(len(a.input_ids) + len(b.input_ids) for a, b in sides)
    trained = sum(count_trained(a.labels) + count_trained(b.labels) for a, b in sides)
    supports = model_supports_packing(ctx.meta_factory())
    supports_shared = not unpaired and cfg.model.attn_implementation in ("sdpa", "eager") and supports
    pad = tokenizer.pad_token_id
    evals = _num_evals(cfg, steps, bool(val))

    variants: list[tuple[str, Any, str, bool]] = []  # label, adapter, reference, configured
    configured_ref = _dpo_reference(cfg, cfg.adapter.method, cfg.precompute_reference)
    variants.append((_label(cfg.adapter.method, cfg.adapter), cfg.adapter, configured_ref, True))
    for method in ("full", "lora", "prompt_tuning"):
        adapter_cfg = cfg.adapter if method == cfg.adapter.method else dataclasses.replace(cfg.adapter, method=method)
        for precompute in ((False, True) if cfg.uses_reference else (False,)):
            ref = _dpo_reference(cfg, method, precompute)
            if (method, ref) != (cfg.adapter.method, configured_ref):
                variants.append((_label(method, adapter_cfg), adapter_cfg, ref, False))
    methods = []
    for label, adapter_cfg, reference, configured in variants:
        t = trainable_of(ctx.meta_factory(), adapter_cfg)
        v = t.virtual_tokens
        shared = supports_shared and v == 0
        frozen_head = not t.head_trainable
        collate = (partial(collate_unpaired, pad_token_id=pad) if unpaired else
                   partial(collate_pairs_shared_prompt if shared else collate_pairs, pad_token_id=pad))

        def make(micro: list[int], _collate: Any = collate, _shared: bool = shared, _v: int = v,
                 _frozen: bool = frozen_head, _items: list[Any] = train) -> Pass:
            return preference_pass(_collate([_items[i] for i in micro]), shared=_shared, virtual_tokens=_v,
                                   frozen_head=_frozen)

        mean, peak, _ = _mean_step(plan, steps, make)
        if configured:
            configured_mean = mean
        ck = cfg.model.gradient_checkpointing
        flops = {"train": train_flops(ctx.arch, mean, t, checkpointing=ck) * steps}
        if reference in ("frozen copy", "adapter disabled"):
            # the reference: no soft prompts, its frozen head applied at answer tokens only
            ref_collate = partial(collate_unpaired if unpaired else collate_pairs_shared_prompt if supports_shared
                                  else collate_pairs, pad_token_id=pad)

            def make_ref(micro: list[int], _collate: Any = ref_collate, _shared: bool = supports_shared) -> Pass:
                return preference_pass(_collate([train[i] for i in micro]), shared=_shared, virtual_tokens=0,
                                       frozen_head=True)

            ref_mean, _, _ = _mean_step(plan, steps, make_ref)
            flops["reference"] = forward_flops(ctx.arch, ref_mean) * steps
        if reference == "precomputed":
            ref_collate_all = partial(collate_unpaired if unpaired else collate_pairs_shared_prompt if supports_shared
                                      else collate_pairs, pad_token_id=pad)
            everything = ZERO
            for items in (train, val):
                for start in range(0, len(items), cfg.train.batch_size):
                    everything = everything + preference_pass(
                        ref_collate_all(items[start:start + cfg.train.batch_size]), shared=supports_shared,
                        virtual_tokens=0, frozen_head=True)
            flops["precompute"] = forward_flops(ctx.arch, everything) * scale / world
        if evals:
            eval_pass = ZERO
            for start in range(0, len(val), cfg.train.batch_size):
                eval_pass = eval_pass + preference_pass(collate(val[start:start + cfg.train.batch_size]), shared=shared,
                                                        virtual_tokens=v, frozen_head=frozen_head)
            factor = 2 if reference in ("frozen copy", "adapter disabled") else 1
            flops["evaluation"] = evals * factor * forward_flops(ctx.arch, eval_pass, t.adapter) * scale / world
        wb, cb = _weights_bytes(t.method, ctx.compute_dtype)
        memory = training_memory(ctx.arch, t, weights_bytes=wb, compute_bytes=cb, peak=peak, reference=reference,
                                 frozen_head_chunked=frozen_head, checkpointing=ck, device=ctx.hardware.device,
                                 data_tokens=tokens * scale)
        notes = ["shared-prompt rows" if shared else "padded chosen/rejected rows"]
        methods.append(_finish(ctx, f"{label}, ref: {reference}", t, configured, reference, flops, steps, memory,
                               notes=notes))
    return EstimateReport(
        config="", stage="dpo", model={}, hardware={}, steps=steps, constants={}, methods=methods,
        data=_data_summary(rows, scale, len(train), len(val), tokens, trained, steps,
                           mean_tokens_per_step=configured_mean.tokens,
                           world=world, arch=ctx.arch, processed_key="tokens processed (with padding)"),
        notes=_sample_note(scale),
    )


def _dpo_reference(cfg: Any, method: str, precompute: bool) -> str:
    if not cfg.uses_reference:
        return "none"
    if precompute:
        return "precomputed"
    return "adapter disabled" if method in ("lora", "dora", "prompt_tuning") else "frozen copy"


def preference_pass(batch: dict[str, Any], *, shared: bool, virtual_tokens: int, frozen_head: bool) -> Pass:
    """The layout of a DPO/KTO micro-batch from the recipe's own collate output."""
    import torch

    rows, width = batch["input_ids"].shape
    width += virtual_tokens
    if shared:
        # one row per pair; the head runs at the distinct predictor columns of every row (or, for a
        # frozen head applied chunk by chunk, at the answer tokens only)
        targets = int(batch["target_ids"].numel())
        head = targets if frozen_head else rows * int(torch.unique(batch["predictor_col"]).numel())
    else:
        labels = batch["labels"]
        trained = labels[:, 1:] != -100
        head = int(trained.sum()) if frozen_head else rows * int(trained.any(dim=0).sum())
    return Pass(rows, rows * width, head, rows * width * width)


def _rm(ctx: _Context) -> EstimateReport:
    from functools import partial

    from affinage.data.preference import collate_pairs, load_preference_data
    from affinage.engine.batching import BatchPlan
    from affinage.models.loading import load_tokenizer
    from affinage.recipes.reward import use_distinct_pad_token

    cfg, world = ctx.cfg, ctx.options.processes
    tokenizer = load_tokenizer(cfg.model.name, chat_template=cfg.model.chat_template, revision=cfg.model.revision,
                               trust_remote_code=cfg.model.trust_remote_code)
    use_distinct_pad_token(tokenizer)
    with sampled_files(cfg.data, ctx.options.sample_rows) as (data_cfg, scale, rows):
        data = load_preference_data(data_cfg, tokenizer)
    train, val = data.train, data.validation
    plan = BatchPlan(len(train), cfg.train.batch_size, cfg.train.grad_accum, world, cfg.train.seed)
    steps = BatchPlan(round(len(train) * scale), cfg.train.batch_size, cfg.train.grad_accum, world,
                      cfg.train.seed).total_steps(cfg.train.epochs, cfg.train.max_steps)
    tokens = sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in train)
    collate = partial(collate_pairs, pad_token_id=tokenizer.pad_token_id)
    evals = _num_evals(cfg, steps, bool(val))

    def make(micro: list[int]) -> Pass:
        return score_pass(collate([train[i] for i in micro]))

    mean, peak, _ = _mean_step(plan, steps, make)
    methods = []
    for label, adapter_cfg, configured in _adapter_variants(cfg, ("full", "lora")):
        t = trainable_of(ctx.meta_factory(), adapter_cfg, reward=True)
        ck = cfg.model.gradient_checkpointing
        flops = {"train": train_flops(ctx.arch, mean, t, checkpointing=ck) * steps}
        if evals:
            eval_pass = ZERO
            for start in range(0, len(val), cfg.train.batch_size):
                eval_pass = eval_pass + score_pass(collate(val[start:start + cfg.train.batch_size]))
            flops["evaluation"] = evals * forward_flops(ctx.arch, eval_pass, t.adapter) * scale / world
        wb, cb = _weights_bytes(t.method, ctx.compute_dtype)
        memory = training_memory(ctx.arch, t, weights_bytes=wb, compute_bytes=cb, peak=peak, reference="none",
                                 checkpointing=ck, device=ctx.hardware.device, data_tokens=tokens * scale)
        methods.append(_finish(ctx, _label(label, adapter_cfg), t, configured, "-", flops, steps, memory))
    return EstimateReport(
        config="", stage="rm", model={}, hardware={}, steps=steps, constants={}, methods=methods,
        data=_data_summary(rows, scale, len(train), len(val), tokens, 0, steps, mean_tokens_per_step=mean.tokens,
                           world=world, arch=ctx.arch, processed_key="tokens processed (with padding)"),
        notes=_sample_note(scale),
    )


def score_pass(batch: dict[str, Any]) -> Pass:
    """A reward-model micro-batch ``[2B, T]``: the score head (d x 1) runs at every position."""
    rows, width = batch["input_ids"].shape
    return Pass(rows, rows * width, rows * width, rows * width * width)


def _rl(ctx: _Context) -> EstimateReport:
    """PPO and GRPO: a rollout (prefill + decoding) then forward/backward passes over it, per step."""
    from affinage.engine.batching import BatchPlan
    from affinage.models.loading import load_tokenizer
    from affinage.recipes.rl_common import load_prompts

    cfg, world, arch = ctx.cfg, ctx.options.processes, ctx.arch
    g = cfg.rollout
    tokenizer = load_tokenizer(cfg.model.name, chat_template=cfg.model.chat_template, revision=cfg.model.revision,
                               trust_remote_code=cfg.model.trust_remote_code)
    with sampled_files(cfg.data, ctx.options.sample_rows) as (data_cfg, scale, rows):
        prompts = load_prompts(data_cfg, tokenizer)
    lengths = [len(item.ids) for item in prompts.items]
    per_process = max(1, g.prompts_per_step // world)
    plan = BatchPlan(len(lengths), per_process, 1, world, cfg.train.seed)
    steps = BatchPlan(round(len(lengths) * scale), per_process, 1, world, cfg.train.seed).total_steps(
        cfg.train.epochs, cfg.train.max_steps)
    n, new = g.samples_per_prompt, g.max_new_tokens
    is_ppo = cfg.stage == "ppo"
    kl = cfg.kl_coef if is_ppo else cfg.beta
    off_policy = cfg.epochs_per_rollout > 1 or cfg.minibatches > 1
    sim = list(_steps(steps))
    # Completions are taken at max_new_tokens (an upper bound: answers that stop early cost less).
    seq, prefill, decode_attn, width_max = ZERO, 0, 0, 0
    for step in sim:
        p_lens = [lengths[i] for i in plan.micro_batches(step, 0)[0]]
        s = len(p_lens) * n
        width = max(p_lens) + new  # prompts padded on the left, completions on the right
        width_max = max(width_max, width)
        micro = math.ceil(s / cfg.train.batch_size)
        seq = seq + Pass(s, s * width, s * (new + 1), s * width * width, micro)
        prefill += sum(p_lens) * n
        decode_attn += n * sum(new * p + new * (new + 1) // 2 for p in p_lens)  # keys each new token reads
    k = len(sim)
    seq = seq.scaled(1 / k)
    prefill, decode_attn = prefill / k, decode_attn / k
    s_per_step = per_process * n
    peak_rows = min(cfg.train.batch_size, s_per_step)
    peak = Pass(peak_rows, peak_rows * width_max, peak_rows * (new + 1), peak_rows * width_max**2)
    critic = None
    if is_ppo and cfg.value.model is not None:
        from types import SimpleNamespace

        critic = architecture(meta_model(SimpleNamespace(name=cfg.value.model, trust_remote_code=False, revision=None),
                                         reward=False))
    methods = []
    for label, adapter_cfg, configured in _adapter_variants(cfg, ("full", "lora")):
        t = trainable_of(ctx.meta_factory(), adapter_cfg)
        ck = cfg.model.gradient_checkpointing
        train = train_flops(arch, seq, t, checkpointing=ck) * cfg.epochs_per_rollout
        forward_once = forward_flops(arch, seq, t.adapter)
        reference = ("frozen copy" if t.method in ("full", "freeze") else "adapter disabled") if kl > 0 else "none"
        ref_flops = (forward_flops(arch, seq) if kl > 0 else 0.0) + (forward_once if off_policy or is_ppo else 0.0)
        generation = 2 * (arch.body + t.adapter) * (prefill + s_per_step * new) + 2 * arch.head * s_per_step * new \
            + 4 * arch.layers * arch.d_model * (decode_attn + prefill * prefill / max(1, s_per_step))
        extra_mem: dict[str, float] = {}
        if critic is not None:
            train += 6 * critic.body * seq.tokens * cfg.epochs_per_rollout + 2 * critic.body * seq.tokens
            extra_mem["critic (weights, grads, AdamW)"] = critic.params * 16
        flops = {"train": train * steps, "reference": ref_flops * steps, "generation": generation * steps}
        wb, cb = _weights_bytes(t.method, ctx.compute_dtype)
        # decoding reads every weight once per new token of each batch of sequences: memory-bound on CPUs
        batches = math.ceil(s_per_step / g.batch_size)
        decode_compute = generation / (ctx.hardware.matmul_flops * DECODE_EFFICIENCY)
        decode_memory = batches * new * arch.params * wb / ctx.hardware.bandwidth
        decode_s = max(decode_compute, decode_memory)
        kv = g.batch_size * width_max * 2 * arch.layers * arch.kv_dim * cb
        extra_mem["KV cache (rollout)"] = kv
        memory = training_memory(arch, t, weights_bytes=wb, compute_bytes=cb, peak=peak,
                                 reference="frozen copy" if reference == "frozen copy" else "none", checkpointing=ck,
                                 device=ctx.hardware.device, data_tokens=sum(lengths) * scale, extra=extra_mem)
        est = _finish(ctx, _label(label, adapter_cfg), t, configured, reference, flops, steps, memory,
                      updates=cfg.epochs_per_rollout * cfg.minibatches, decode_s=decode_s, notes=[f"completions taken at max_new_tokens={new}",
                             f"decoding {'memory' if decode_memory > decode_compute else 'compute'}-bound"])
        methods.append(est)
    return EstimateReport(
        config="", stage=cfg.stage, model={}, hardware={}, steps=steps, constants={}, methods=methods,
        data=_data_summary(rows, scale, len(lengths), 0, sum(lengths), 0, steps, mean_tokens_per_step=seq.tokens,
                           world=world, arch=arch, processed_key="tokens processed per pass (prompts + completions)"),
        notes=_sample_note(scale),
    )


STAGES = {"sft": _sft, "dpo": _dpo, "rm": _rm, "ppo": _rl, "grpo": _rl}


# ---------------------------------------------------------------------------------------------- output


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} days"


def _gib(value: float) -> str:
    return f"{value / GiB:.2f} GiB"


def print_estimate(report: EstimateReport, console: Any = None) -> None:
    from rich.table import Table

    if console is None:
        from affinage.engine.progress import console
    hw, m, d = report.hardware, report.model, report.data
    console.print(
        f"[bold]estimate[/] {report.config or report.stage}: {m['name']} ({m['params']:,} parameters, {m['layers']} "
        f"layers, d={m['d_model']}, {m['compute_dtype']}) on {hw['name']} ({hw['device']}, {hw['threads']} threads): "
        f"matmul {_si(hw['matmul_flops'], 'FLOP/s')}{' measured' if hw['measured'] else ''}, "
        f"memory {_si(hw['bandwidth'], 'B/s')}", highlight=False)
    console.print(
        f"data: {d['train_examples']:,} training examples, {d['train_tokens']:,} tokens"
        + (f" ({d['trained_tokens']:,} trained)" if d.get("trained_tokens") else "")
        + f"; {report.steps:,} optimizer steps process {next(v for k, v in d.items() if k.startswith('tokens processed')):,} "
        f"tokens = {d['fraction_of_compute_optimal']:.3g}x the compute-optimal {d['compute_optimal_tokens']:,.0f} "
        f"(20 per parameter)", highlight=False)
    table = Table(title="Estimated cost per method (* = configured)", title_justify="left", show_lines=False)
    table.add_column("", style="bold")
    for est in report.methods:
        table.add_column(("* " if est.configured else "") + est.label, justify="right")
    rows: list[tuple[str, Any]] = [
        ("trainable parameters", lambda e: f"{e.trainable_params:,}"),
        ("FLOPs per step", lambda e: _si(e.flops["per_step"], "FLOP")),
        ("FLOPs in total", lambda e: _si(e.flops["total"], "FLOP")),
        ("time per step", lambda e: _duration(e.time_s["per_step"])),
        ("time in total", lambda e: _duration(e.time_s["total"])),
        ("peak memory", lambda e: _gib(e.peak_memory_bytes)),
    ]
    components = list(dict.fromkeys(k for e in report.methods for k in e.memory))
    rows += [(f"  {k}", (lambda e, _k=k: _gib(e.memory[_k]) if _k in e.memory else "-")) for k in components]
    rows += [
        ("energy", lambda e: f"{e.energy_kwh * 1000:.3g} Wh"),
        ("CO2", lambda e: f"{e.co2_kg * 1000:.3g} g"),
        ("notes", lambda e: "; ".join(e.notes)),
    ]
    for name, fn in rows:
        table.add_row(name, *(fn(e) for e in report.methods))
    console.print(table)
    c = report.constants
    console.print(
        f"time = FLOPs / (matmul rate x efficiency {c['efficiency']['full']:.2f} full, {c['efficiency']['adapter']:.2f} "
        f"others) + AdamW update ({c['optimizer_bytes_per_param']} B/param at the memory bandwidth); energy at "
        f"{hw['power_w']:.0f} W per device ({hw['power_note']}), PUE {c['pue']}, {c['grid_intensity_g_per_kwh']:.0f} "
        "gCO2/kWh", highlight=False)
    load, cores = hw.get("load_average"), os.cpu_count() or 1
    if load is not None and load > 0.5 * cores:
        console.print(f"note: this machine is busy (load average {load} on {cores} cores): a run now takes longer "
                      "than estimated, and more so with several threads per process (each parallel operation "
                      "waits for a core another process holds)", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)


def write_json(report: EstimateReport, path: str | Path) -> Path:
    return atomic_write_text(path, json.dumps(report.to_dict(), indent=2, default=str) + "\n")

