"""Faster decode steps for the KV-cache loop of :mod:`affinage.generation.rollout`.

At batch 1 a decode step reads every weight once to make one token, so it is bound by memory
bandwidth, and on a CPU two things stood between the loop and that bound (measured on the 2-core
AMD EPYC of this project, ``docs/rl.md``):

1. **The matrix-vector kernel.** torch's fp32 ``F.linear`` on CPU goes to MKL's sgemm, which on
   this AMD CPU streams the weights at about 17 GB/s on one core and does not use a second thread
   for one row; oneDNN's inner-product kernel (``torch.ops.mkldnn._linear_pointwise``, the one
   inductor emits for CPU linears) reads the same plain ``[out, in]`` matrix at 25-29 GB/s, uses
   every OpenMP thread, and is 1.3-2.3x faster at 1 to 256 rows too. :class:`LinearKernels` routes
   the model's ``nn.Linear`` layers to it while the loop calls the model (fp32 on CPU only; bf16
   linears already go to oneDNN in torch, and other devices keep ``F.linear``).
2. **Per-step overhead and small products.** transformers' forward for one token runs a few hundred
   small operations around the 211 products of a 30-layer model (module calls, mask and cache
   bookkeeping); and q/k/v (576x576, 192x576, 192x576) are too small to stream at full speed.
   :class:`LeanStep` runs one decode step of a Llama-style model directly: q, k and v as one
   product with the three matrices concatenated (and gate with up), keys and values written into
   the loop's preallocated buffers, no mask at all when no row has padding, grouped-query
   attention without repeating keys, and the output head applied to one position.

Neither changes the maths: the same modules (norms, rotary embedding, activation) compute the same
formulas in the same order, the products only change kernel, so greedy answers equal
``model.generate``'s (tested on a tiny model and on smollm2-135m-instruct); rounding can differ in
the last bits. ``AFFINAGE_FAST_DECODE=0`` turns both off (the loop then calls the model's forward
with torch's own kernels).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

Linear = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

# transformers model types whose decoder layer is Llama's: pre-norm attention and SwiGLU MLP with
# q/k/v/o and gate/up/down projections, RMSNorm, rotary positions (Qwen2 adds q/k/v biases).
_LLAMA_STYLE = frozenset({"llama", "mistral", "qwen2"})
# Stacked copies of q/k/v and gate/up are kept on CPU up to this many bytes (see _FUSED_BUFFERS);
# larger models run the separate products.
_FUSE_LIMIT_BYTES = 1 << 29


def enabled() -> bool:
    """False when ``AFFINAGE_FAST_DECODE=0``: the loop then runs the model's own forward and kernels."""
    return os.environ.get("AFFINAGE_FAST_DECODE", "1").strip().lower() not in ("0", "false", "no", "off")


# ----------------------------------------------------------------------------------------------
# The matrix-product kernel
# ----------------------------------------------------------------------------------------------


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` by oneDNN's inner product.  x [..., in], weight [out, in] -> [..., out]"""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@functools.cache
def _onednn_works() -> bool:
    """Whether this torch build has the oneDNN linear and it agrees with ``F.linear`` (checked once)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):  # measured on x86 only (ARM: ACL)
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((3, 2, 40), (24, 40), (24,)))
        with torch.inference_mode():
            return bool(torch.allclose(_onednn_linear(x, w, b), F.linear(x, w, b), rtol=1e-4, atol=1e-5))
    except Exception:  # a build without the kernel for this CPU: keep torch's
        return False


def linear_for(weight: torch.Tensor) -> Linear:
    """The fastest exact kernel for products with ``weight``: oneDNN for fp32 on CPU, else ``F.linear``."""
    if enabled() and weight.device.type == "cpu" and weight.dtype == torch.float32 and _onednn_works():
        return _onednn_linear
    return F.linear


class LinearKernels:
    """Routes a model's ``nn.Linear`` layers to :func:`linear_for`'s kernel inside :meth:`active`.

    Each plain ``nn.Linear`` of the model (the base layers inside LoRA wrappers included) gets an
    instance-level ``forward`` that uses the kernel when this thread is inside :meth:`active`
    without autograd, and ``F.linear`` otherwise; :meth:`close` removes them. Layers that already
    carry an instance ``forward`` (accelerate's offloading hooks) are left alone. So between two
    decode steps (a streaming caller holding the loop) the model computes exactly as before.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._state = threading.local()
        self._patched: list[torch.nn.Module] = []
        for module in model.modules():
            plain = type(module) is torch.nn.Linear and "forward" not in module.__dict__
            if plain and linear_for(module.weight) is not F.linear:
                module.forward = types.MethodType(self._forward, module)
                self._patched.append(module)

    def _forward(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if getattr(self._state, "on", False) and not torch.is_grad_enabled():
            return _onednn_linear(x, module.weight, module.bias)
        return F.linear(x, module.weight, module.bias)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        previous = getattr(self._state, "on", False)
        self._state.on = True
        try:
            yield
        finally:
            self._state.on = previous

    def close(self) -> None:
        for module in self._patched:
            module.__dict__.pop("forward", None)
        self._patched = []


# ----------------------------------------------------------------------------------------------
# The lean decode step of Llama-style models
# ----------------------------------------------------------------------------------------------


def _children(module: torch.nn.Module) -> set[str]:
    return {name for name, _ in module.named_children()}


def _lora_layer_class() -> type | None:
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft is a dependency, but a broken install should not stop decoding
        return None
    return LoraLinear


def _projection(module: Any) -> tuple[torch.nn.Linear, list[tuple[torch.nn.Linear, torch.nn.Linear, float]]] | None:
    """The plain ``nn.Linear`` that ``module`` applies and its active LoRA pairs ``(A, B, scaling)``
    (Hu et al. 2021, Eq. 3: h = W x + scaling * B A x), or ``None`` when it is something else."""
    if type(module) is torch.nn.Linear:
        return module, []
    lora = _lora_layer_class()
    if lora is None or type(module) is not lora or type(module.base_layer) is not torch.nn.Linear:
        return None
    if module.disable_adapters or module.merged:  # the base layer alone computes the output
        return module.base_layer, []
    pairs = []
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        a, b, dropout = module.lora_A[name], module.lora_B[name], module.lora_dropout[name]
        if (
            name in module.lora_variant  # DoRA and other variants compute more
            or type(a) is not torch.nn.Linear or type(b) is not torch.nn.Linear
            or type(dropout) not in (torch.nn.Identity, torch.nn.Dropout)  # dropout: identity in eval mode
            or a.weight.dtype != module.base_layer.weight.dtype
        ):
            return None
        pairs.append((a, b, module.scaling[name]))
    return module.base_layer, pairs


def lean_step_unsupported(base: Any) -> str | None:
    """``None`` when :class:`LeanStep` computes what ``base``'s forward computes, else why not.

    It covers the model types in ``_LLAMA_STYLE`` with SDPA attention whose modules are exactly
    transformers', each projection a plain ``nn.Linear`` or a peft LoRA layer over one (plain LoRA:
    not DoRA). Anything else (an extra norm, a logit scale, another adapter type) runs the model's
    own forward, with :class:`LinearKernels`.
    """
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in _LLAMA_STYLE:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {sorted(_LLAMA_STYLE)}"
    if config._attn_implementation != "sdpa":
        return f"attention implementation {config._attn_implementation!r} (the lean step runs SDPA)"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp splits the products"
    if base.training:
        return "the model is in training mode (dropout)"
    decoder = getattr(base, "model", None)
    if _children(base) != {"model", "lm_head"} or type(base.lm_head) is not torch.nn.Linear:
        return "the causal LM has other modules than model and lm_head"
    if decoder is None or _children(decoder) != {"embed_tokens", "layers", "norm", "rotary_emb"}:
        return "the decoder has other modules than embed_tokens, layers, norm, rotary_emb"
    if type(decoder.embed_tokens) is not torch.nn.Embedding:
        return "the token embedding is wrapped"
    for layer in decoder.layers:
        if _children(layer) != {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}:
            return "a decoder layer has other modules than Llama's"
        attn, mlp = layer.self_attn, layer.mlp
        if _children(attn) != {"q_proj", "k_proj", "v_proj", "o_proj"}:
            return "the attention has other modules than q/k/v/o projections"
        if _children(mlp) != {"gate_proj", "up_proj", "down_proj", "act_fn"}:
            return "the MLP has other modules than gate/up/down projections and the activation"
        for module in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            if _projection(module) is None:
                return f"a projection is a {type(module).__name__} (only nn.Linear and plain LoRA are covered)"
        if getattr(attn, "sliding_window", None) is not None:
            return "sliding-window attention"
    return None


# Concatenated q/k/v and gate/up weights of each model, kept between calls (allocating them anew
# costs far more than copying: the fresh pages fault in one by one) and refilled at every call, so
# they always hold the current weights. The entry goes with the model.
_FUSED_BUFFERS: weakref.WeakKeyDictionary[Any, list[torch.Tensor]] = weakref.WeakKeyDictionary()


class _Products:
    """The products of one input with one or more projections (q, k, v; or gate, up), output
    concatenated along the last dimension, as one product when ``fused`` holds their stacked weights.
    LoRA pairs add ``scaling * B(A(x))`` to their projection's slice of the output."""

    def __init__(self, projections: list[Any], linear: Linear, fused: torch.Tensor | None) -> None:
        self.linear = linear
        parts = [_projection(p) for p in projections]
        self.bases = [base for base, _ in parts]  # type: ignore[misc]
        self.fused = fused
        self.bias = None
        if fused is not None and any(b.bias is not None for b in self.bases):
            self.bias = torch.cat([
                b.bias if b.bias is not None else b.weight.new_zeros(b.out_features) for b in self.bases
            ])
        self.loras = []  # (start, end, A, B, scaling) over the output's last dimension
        start = 0
        for base, pairs in parts:  # type: ignore[misc]
            for a, b, scaling in pairs:
                self.loras.append((start, start + base.out_features, a, b, scaling))
            start += base.out_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        linear = self.linear
        if self.fused is not None:
            out = linear(x, self.fused, self.bias)
        elif len(self.bases) == 1:
            out = linear(x, self.bases[0].weight, self.bases[0].bias)
        else:
            out = torch.cat([linear(x, b.weight, b.bias) for b in self.bases], dim=-1)
        for start, end, a, b, scaling in self.loras:
            out[..., start:end] += linear(linear(x, a.weight, a.bias), b.weight, b.bias) * scaling
        return out


class LeanStep:
    """One decode step of a Llama-style model on the loop's key/value buffers.

    ``step(input_ids, positions, cache, mask)`` takes the token of each row ``[b]``, its position
    ``[b]``, the loop's cache (one ``SlotLayer`` per layer: keys/values ``[b, H_kv, L, D]`` and
    ``length``, the next column to write) and the keys each row may see ``[b, length + 1]`` bool,
    or ``None`` when every row sees every key; it writes this step's keys and values at column
    ``length`` and returns the logits ``[b, V]`` in float32.

    The maths follows ``LlamaDecoderLayer``: h = x + o(attn(rope(q), rope(k), v)), with q, k, v
    from RMSNorm(x); out = h + down(act(gate(RMSNorm(h))) * up(RMSNorm(h))). The norms, the rotary
    embedding and the activation are the model's own modules. ``fuse`` (default: on CPU, when the
    stacked copies take at most ``_FUSE_LIMIT_BYTES``) computes q/k/v and gate/up as one product each.
    """

    def __init__(self, base: Any, *, fuse: bool | None = None) -> None:
        decoder = base.model
        self.embed, self.norm, self.rotary = decoder.embed_tokens, decoder.norm, decoder.rotary_emb
        self.head = base.lm_head
        self.linear = linear = linear_for(self.head.weight)
        layers = list(decoder.layers[: base.config.num_hidden_layers])
        groups = [
            [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj] for layer in layers
        ] + [[layer.mlp.gate_proj, layer.mlp.up_proj] for layer in layers]
        weights = [[_projection(p)[0].weight for p in group] for group in groups]  # type: ignore[index]
        if fuse is None:
            first = weights[0][0]
            fused_bytes = first.element_size() * sum(w.numel() for ws in weights for w in ws)
            fuse = first.device.type == "cpu" and fused_bytes <= _FUSE_LIMIT_BYTES
        fused: list[torch.Tensor | None] = [None] * len(groups)
        if fuse:
            fused = _fused_weights(base, weights)
        self.layers = []
        for i, layer in enumerate(layers):
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(types.SimpleNamespace(
                norm_1=layer.input_layernorm, norm_2=layer.post_attention_layernorm, act=mlp.act_fn,
                qkv=_Products(groups[i], linear, fused[i]), o=_Products([attn.o_proj], linear, None),
                gate_up=_Products(groups[len(layers) + i], linear, fused[len(layers) + i]),
                down=_Products([mlp.down_proj], linear, None),
                heads=attn.config.num_attention_heads, kv_heads=attn.config.num_key_value_heads,
                head_dim=attn.head_dim, scaling=attn.scaling,
            ))
        self.fused = fuse

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, cache: Any, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b = input_ids.shape[0]
        x = self.embed(input_ids[:, None])  # [b, 1, H]
        cos, sin = self.rotary(x, positions[:, None])  # [b, 1, D] each
        attn_mask = None if mask is None else mask[:, None, None, :]  # [b, 1, 1, T]: all heads alike
        for layer, slot in zip(self.layers, cache.layers, strict=True):
            heads, kv_heads, d = layer.heads, layer.kv_heads, layer.head_dim
            qkv = layer.qkv(layer.norm_1(x)).view(b, heads + 2 * kv_heads, d)  # [b, Hq + 2 H_kv, D]
            qk, v = qkv[:, : heads + kv_heads], qkv[:, heads + kv_heads :]
            # RoPE on q and k at once: x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1]
            x1, x2 = qk[..., : d // 2], qk[..., d // 2 :]
            qk = qk * cos + torch.cat((-x2, x1), dim=-1) * sin  # [b, Hq + H_kv, D]
            column = slot.length
            slot.keys[:, :, column] = qk[:, heads:]
            slot.values[:, :, column] = v
            slot.length = column + 1
            # Grouped-query attention on the kv heads: the queries of a group are its rows.
            q = qk[:, :heads].reshape(b, kv_heads, heads // kv_heads, d)  # [b, H_kv, G, D]
            attn = F.scaled_dot_product_attention(
                q, slot.keys[:, :, : column + 1], slot.values[:, :, : column + 1], attn_mask=attn_mask,
                scale=layer.scaling,
            )  # [b, H_kv, G, D], heads in q_proj's order
            x = x + layer.o(attn.reshape(b, 1, heads * d))
            gate_up = layer.gate_up(layer.norm_2(x))  # [b, 1, 2 I]
            inner = gate_up.shape[-1] // 2
            x = x + layer.down(layer.act(gate_up[..., :inner]) * gate_up[..., inner:])
        x = self.norm(x)
        return self.linear(x, self.head.weight, self.head.bias)[:, -1].float()  # [b, V]


def _fused_weights(base: Any, groups: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Each group's weights stacked along the output dimension, in buffers kept per model."""
    shapes = [(sum(w.shape[0] for w in ws), ws[0].shape[1]) for ws in groups]
    first = groups[0][0]
    buffers = _FUSED_BUFFERS.get(base)
    if buffers is None or [tuple(t.shape) for t in buffers] != shapes or any(
        t.dtype != first.dtype or t.device != first.device for t in buffers
    ):
        with torch.inference_mode(False):  # normal tensors: they outlive this inference-mode call
            buffers = [torch.empty(shape, dtype=first.dtype, device=first.device) for shape in shapes]
        _FUSED_BUFFERS[base] = buffers
    with torch.no_grad():
        for buffer, ws in zip(buffers, groups, strict=True):
            torch.cat(ws, out=buffer)
    return buffers
