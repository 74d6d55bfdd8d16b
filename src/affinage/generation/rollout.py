"""Batched sampling with a preallocated KV cache: the decode loop behind rollouts, ``generate`` and chat.

Why our own loop rather than ``model.generate``: at batch 1 on a CPU a small model spends most of
``generate``'s time outside the weights (logits processors, stopping criteria, a causal mask rebuilt
at every step, a key/value cache grown by concatenation). Decoding is bound by memory bandwidth:
each new token reads every weight once, so the best possible speed is bandwidth / weight bytes
(``benchmarks/decode_throughput.py`` measures how close we get). The loop below

* keeps one preallocated key/value buffer per layer (``[B, H_kv, L, D]``, L = longest prompt +
  max_new_tokens) and hands attention a *view* of the filled part: no concatenation, no
  allocation per step, and attention reads only the positions written so far;
* keeps one boolean matrix of the keys each row may see (``[B, L]``) and passes a view of it as
  the ready-made 4-D mask, so transformers builds no mask;
* prefills each distinct prompt once and repeats its cache ``n`` times for ``n`` samples per prompt;
* samples with its own ``torch.Generator`` (a seed reproduces the samples without touching the
  caller's random state) and checks stop tokens with tensor operations, stop strings on a short
  window of decoded text;
* runs the decode steps of Llama-style models (LoRA included) with a lean step and, on CPU in
  fp32, oneDNN's matrix-vector kernel, which streams the weights faster than MKL's and on every
  thread (:mod:`affinage.generation.fast_decode`; ``AFFINAGE_FAST_DECODE=0`` turns it off).

Prompts are padded on the left so that every row's next token sits in the same column; padding is
masked out and the positions count from each row's first real token, so a prompt gives the same
tokens alone or in a batch (up to float rounding of differently shaped matrix products).

Models the loop cannot run exactly (sliding-window or non-attention layers that a full-length
buffer would misrepresent, attention kernels that take no 4-D mask, soft prompts) are answered by
``model.generate`` with the same options: see :func:`fast_decode_supported`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from affinage.errors import ConfigError, DataError
from affinage.generation import fast_decode

# Attention implementations that accept the boolean / additive 4-D mask built here.
_MASKED_ATTENTION = ("sdpa", "eager")


# ----------------------------------------------------------------------------------------------
# The key/value buffer
# ----------------------------------------------------------------------------------------------


def _cache_classes():
    """The cache layer and cache classes, built on first use (transformers imports lazily)."""
    global _SLOT_CLASSES
    if _SLOT_CLASSES is not None:
        return _SLOT_CLASSES
    from transformers.cache_utils import Cache, CacheLayerMixin

    class SlotLayer(CacheLayerMixin):
        """One layer's keys and values in a buffer ``[B, H_kv, L, D]`` allocated at the first update.

        ``update`` writes the new states at the current length and returns views of the filled
        part ``[B, H_kv, length, D]``. The first update (the prefill) may come with ``B / repeats``
        rows: each is stored ``repeats`` times (n samples of one prompt share its prefill) and the
        states themselves are returned, since attention then runs at the prefill batch size.
        """

        is_compileable = False
        is_sliding = False

        def __init__(self, batch_size: int, max_length: int, repeats: int) -> None:
            super().__init__()
            self.batch_size, self.max_length, self.repeats = batch_size, max_length, repeats
            self.length = 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            _, heads, _, k_dim = key_states.shape
            shape = (self.batch_size, heads, self.max_length)
            self.keys = key_states.new_zeros((*shape, k_dim))
            self.values = value_states.new_zeros((*shape, value_states.shape[-1]))
            self.device = key_states.device
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, end = self.length, self.length + key_states.shape[2]
            if end > self.max_length:
                raise RuntimeError(f"key/value buffer of {self.max_length} positions overflowed")  # a bug
            if key_states.shape[0] != self.batch_size:  # the shared prefill of n samples per prompt
                self.keys[:, :, start:end] = key_states.repeat_interleave(self.repeats, dim=0)
                self.values[:, :, start:end] = value_states.repeat_interleave(self.repeats, dim=0)
                self.length = end
                return key_states, value_states
            self.keys[:, :, start:end] = key_states
            self.values[:, :, start:end] = value_states
            self.length = end
            return self.keys[:, :, :end], self.values[:, :, :end]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

        def get_seq_length(self) -> int:
            return self.length

        def get_max_length(self) -> int:
            return self.max_length

        def keep_rows(self, rows: torch.Tensor) -> None:
            self.batch_size = len(rows)
            if self.is_initialized:
                self.keys = self.keys[rows]
                self.values = self.values[rows]

    class SlotCache(Cache):
        def __init__(self, num_layers: int, batch_size: int, max_length: int, repeats: int) -> None:
            super().__init__(layers=[SlotLayer(batch_size, max_length, repeats) for _ in range(num_layers)])

        def keep_rows(self, rows: torch.Tensor) -> None:
            """Drop finished rows: attention then reads only the rows still decoding."""
            for layer in self.layers:
                layer.keep_rows(rows)

    _SLOT_CLASSES = (SlotLayer, SlotCache)
    return _SLOT_CLASSES


_SLOT_CLASSES: tuple[type, type] | None = None


# ----------------------------------------------------------------------------------------------
# Which models the loop runs
# ----------------------------------------------------------------------------------------------


def _base_model(model: Any) -> Any:
    """The transformers model under DDP / compile / peft wrappers (LoRA layers stay active)."""
    from affinage.models.adapters import unwrap_to_base

    return unwrap_to_base(model)


def fast_decode_supported(model: Any) -> str | None:
    """``None`` when :func:`decode_ids` can run ``model`` with its own loop, else the reason it cannot.

    The loop needs a causal LM whose every layer is full attention, an attention kernel that takes a
    ready-made 4-D mask (``sdpa`` or ``eager``), and no soft prompt (peft prompt tuning prepends
    virtual tokens inside its own forward).
    """
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and any(getattr(c, "is_prompt_learning", False) for c in peft_config.values()):
        return "prompt tuning prepends soft tokens inside peft's forward"
    base = _base_model(model)
    config = getattr(base, "config", None)
    if config is None or not hasattr(base, "get_decoder"):
        return "not a transformers causal LM"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in _MASKED_ATTENTION:
        return f"attention implementation {implementation!r} takes no 4-D mask"
    text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        return "the model has sliding-window or non-attention layers"
    if layer_types is None and (
        getattr(text_config, "sliding_window", None) is not None
        and getattr(text_config, "use_sliding_window", True)
    ):
        return "the model uses sliding-window attention"
    return None


def _cache_argument(base: Any) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40)."""
    import inspect

    with contextlib.suppress(TypeError, ValueError):
        if "cache" in inspect.signature(base.forward).parameters:
            return "cache"
    return "past_key_values"


# ----------------------------------------------------------------------------------------------
# Sampling one step
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """What each decoding step does with the logits. ``temperature == 0`` is greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, options: Any) -> SamplingParams:
        """From a :class:`~affinage.generation.GenerationOptions` (validated there)."""
        return cls(
            max_new_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_k=options.top_k,
            top_p=options.top_p,
            repetition_penalty=options.repetition_penalty,
            seed=options.seed,
            stop=tuple(options.stop),
        )


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive logits of tokens already present by ``penalty``, multiply negative ones (CTRL,
    Keskar et al. 2019, Sec. 4.1).  logits [B, V], seen [B, V] bool -> [B, V]"""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to ``-inf`` every logit outside the k most likely tokens and outside the nucleus.

    The nucleus (Holtzman et al. 2020, Sec. 3.1) is the smallest set of most likely tokens whose
    probability reaches ``top_p``: a token is dropped when the probability of the tokens ranked
    before it already reaches ``top_p`` (the most likely token always stays).  [B, V] -> [B, V]
    """
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """Pick one token per row: argmax at temperature 0, else a sample from the filtered softmax.

    logits [B, V] (float32) -> [B]
    """
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


@dataclass
class Completions:
    """New tokens of every sample, in the order of the prompts (``n`` samples of prompt i at
    ``i * n ... i * n + n - 1``)."""

    token_ids: list[list[int]] = field(default_factory=list)
    """Each ends with the stop token (eos / end of turn) that closed it, when one did."""
    finished: list[bool] = field(default_factory=list)
    """True when the sample ended by itself (stop token or stop string), False when it was cut at
    ``max_new_tokens``: RL penalises answers that never end."""
    stopped_by_string: list[bool] = field(default_factory=list)
    decode_seconds: float = 0.0
    new_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / max(self.decode_seconds, 1e-9)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device):
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, P]
    mask = torch.zeros((len(rows), width), dtype=torch.bool)  # [B, P]
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = True
    return input_ids.to(device), mask.to(device)


def _stop_string_checker(tokenizer: Any, stop: Sequence[str]) -> Callable[[list[int]], bool]:
    """A test whether a sample's text so far contains a stop string, decoding only its tail.

    A stop string of c characters spans at most 4c byte-level tokens (4 bytes per UTF-8
    character); a window a little wider than that holds any stop string completed by the last token.
    """
    window = 4 * max(len(s) for s in stop) + 4

    def hit(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens[-window:], skip_special_tokens=False)
        return any(s in text for s in stop)

    return hit


def _decode_steps(model: Any, *args: Any, **kwargs: Any) -> Iterator[tuple[list[int], list[int]]]:
    """:func:`_decode_batch_steps` with the faster linear kernels of :mod:`affinage.generation.fast_decode`
    routed in while it runs, and removed when it ends or the caller closes it."""
    base = _base_model(model)
    kernels = fast_decode.LinearKernels(base) if fast_decode.enabled() else None
    try:
        return (yield from _decode_batch_steps(base, *args, kernels=kernels, **kwargs))
    finally:
        if kernels is not None:
            kernels.close()


@torch.inference_mode()
def _decode_batch_steps(
    base: Any,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    n: int,
    stop_ids: torch.Tensor,
    pad_id: int,
    generator: torch.Generator | None,
    stop_hit: Callable[[list[int]], bool] | None,
    compact: bool,
    kernels: fast_decode.LinearKernels | None = None,
) -> Iterator[tuple[list[int], list[int]]]:
    """Decode ``n`` samples of each prompt of one batch, as a generator.

    Yields ``(rows, tokens)`` after each step: the rows computed at this step (indices into the
    batch; a row that ended stays listed until it is dropped, its tokens then meaningless) and the
    token each chose. Returns (through ``StopIteration.value``) the tokens of every row, whether
    each finished, and whether a stop string finished it.
    """
    device = next(base.parameters()).device
    config = base.config
    text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    eager = config._attn_implementation == "eager"
    dtype = next(base.parameters()).dtype
    min_value = torch.finfo(dtype).min if dtype.is_floating_point else -1e9
    cache_arg = _cache_argument(base)

    input_ids, prompt_mask = _left_pad(prompts, pad_id, device)  # [B0, P]
    b0, width = input_ids.shape
    batch, new = b0 * n, params.max_new_tokens
    length = width + new
    _, SlotCache = _cache_classes()
    cache = SlotCache(text_config.num_hidden_layers, batch, length, n)

    def as_mask(allowed: torch.Tensor) -> torch.Tensor:
        # sdpa takes booleans (True = attend); eager adds the mask to the scores.
        if not eager:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, min_value)

    # ---- prefill: every distinct prompt once.  Keys a row may see: its real tokens, causally. A
    # padding query sees itself only, so no softmax row is empty (an empty one gives NaN states).
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril_()  # [P, P]
    allowed = causal[None, None] & prompt_mask[:, None, None, :]  # [B0, 1, P, P]
    allowed |= torch.eye(width, dtype=torch.bool, device=device)[None, None]
    positions = (prompt_mask.long().cumsum(-1) - 1).clamp_(min=0)  # [B0, P]
    with kernels.active() if kernels else contextlib.nullcontext():
        out = base(
            input_ids=input_ids, attention_mask=as_mask(allowed), position_ids=positions,
            use_cache=True, logits_to_keep=1, **{cache_arg: cache},
        )
    logits = out.logits[:, -1, :].float().repeat_interleave(n, dim=0)  # [B, V]
    del out
    # Llama-style models decode with the lean step; others with their forward (and the kernels).
    lean = None
    if kernels is not None and fast_decode.lean_step_unsupported(base) is None:
        lean = fast_decode.LeanStep(base)
    padded = not bool(prompt_mask.all())  # without padding every row sees every key: no mask

    # ---- per-row state, preallocated
    visible = torch.zeros(batch, length, dtype=torch.bool, device=device)  # [B, L] keys a row sees
    visible[:, :width] = prompt_mask.repeat_interleave(n, dim=0)
    next_position = (prompt_mask.sum(-1)).repeat_interleave(n, dim=0)  # [B]
    tokens = torch.full((batch, new), pad_id, dtype=torch.long, device=device)  # [B, new]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(batch, logits.shape[-1], dtype=torch.bool, device=device)  # [B, V]
        seen.scatter_(1, input_ids.repeat_interleave(n, dim=0), prompt_mask.repeat_interleave(n, dim=0))
    lengths = [new] * batch
    finished, by_string = [False] * batch, [False] * batch
    rows = torch.arange(batch, device=device)  # original index of each row still in the batch
    row_list = list(range(batch))

    for step in range(new):
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
        chosen = next_tokens(logits, params, generator)  # [b]
        tokens[rows, step] = chosen
        yield row_list, chosen.tolist()
        if seen is not None:
            seen.scatter_(1, chosen[:, None], True)
        ended = torch.isin(chosen, stop_ids) & ~done  # [b] rows that end at this step
        ended_list = ended.tolist()
        done_list = done.tolist()
        if stop_hit is not None:
            for k, i in enumerate(row_list):
                if not (ended_list[k] or done_list[k]) and stop_hit(tokens[i, : step + 1].tolist()):
                    ended_list[k] = True
                    by_string[i] = True
        for k, i in enumerate(row_list):
            if ended_list[k]:
                finished[i] = True
                lengths[i] = step + 1
        if step == new - 1:
            break
        keep = [k for k in range(len(row_list)) if not (ended_list[k] or done_list[k])]
        if not keep:
            break
        if len(keep) < len(row_list):
            if compact and len(keep) <= 3 * len(row_list) // 4:
                # Many rows ended: drop them so each step reads only the live rows' keys and values.
                kept = torch.tensor(keep, device=device)
                cache.keep_rows(kept)
                visible, next_position = visible[kept], next_position[kept]
                if seen is not None:
                    seen = seen[kept]
                rows, chosen = rows[kept], chosen[kept]
                row_list = [row_list[k] for k in keep]
                done = torch.zeros(len(keep), dtype=torch.bool, device=device)
            else:
                done = done | torch.tensor(
                    [e or d for e, d in zip(ended_list, done_list, strict=True)], device=device
                )
        column = width + step
        visible[:, column] = True
        step_ids = chosen.masked_fill(done, pad_id)  # [b]
        if lean is not None:
            logits = lean(step_ids, next_position, cache, visible[:, : column + 1] if padded else None)  # [b, V]
        else:
            with kernels.active() if kernels else contextlib.nullcontext():
                out = base(
                    input_ids=step_ids[:, None],
                    attention_mask=as_mask(visible[:, None, None, : column + 1]),
                    position_ids=next_position[:, None],
                    use_cache=True, logits_to_keep=1, **{cache_arg: cache},
                )
            logits = out.logits[:, -1, :].float()  # [b, V]
        next_position += 1

    all_tokens = tokens.tolist()
    return [all_tokens[i][: lengths[i]] for i in range(batch)], finished, by_string


def _decode_batch(*args: Any, **kwargs: Any) -> tuple[list[list[int]], list[bool], list[bool]]:
    """:func:`_decode_steps` run to the end: (tokens, finished, stopped_by_string) of every row."""
    steps = _decode_steps(*args, **kwargs)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def decode_ids(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    n: int = 1,
    batch_size: int = 16,
    tokenizer: Any = None,
    compact: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> Completions:
    """Sample ``n`` completions of every tokenised prompt with the preallocated-cache loop.

    Prompts are sorted by length (longest first, so similar lengths share a batch and an
    out-of-memory error shows at once) and decoded ``batch_size`` sequences at a time (that is
    ``batch_size // n`` prompts, at least one). The answers come back in the order of the prompts.
    With ``params.seed`` the call gives the same samples for the same prompts, ``n`` and
    ``batch_size``, and leaves the global random state alone. ``tokenizer`` is needed for stop
    strings. ``on_batch(done_sequences, new_tokens)`` is called after each batch (progress bars).
    """
    if n < 1:
        raise ConfigError(f"n (samples per prompt) must be at least 1, got {n}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if params.stop and tokenizer is None:
        raise ConfigError("stop strings need the tokenizer: pass tokenizer= to decode_ids")
    if params.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise DataError(f"prompt {i} is empty once tokenised; give it some text")
    result = Completions(
        token_ids=[[] for _ in range(len(prompt_ids) * n)],
        finished=[False] * (len(prompt_ids) * n),
        stopped_by_string=[False] * (len(prompt_ids) * n),
    )
    if not prompt_ids:
        return result
    if (reason := fast_decode_supported(model)) is not None:
        raise ConfigError(f"decode_ids cannot run this model ({reason}); use affinage.generation.generate_ids")

    device = next(_base_model(model).parameters()).device
    generator = None
    if params.seed is not None and params.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    stop_ids = torch.tensor(sorted(set(stop_token_ids)) or [-1], dtype=torch.long, device=device)
    stop_hit = _stop_string_checker(tokenizer, params.stop) if params.stop else None
    per_batch = max(1, batch_size // n)
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    start = time.perf_counter()
    with _eval_mode(model):
        for b in range(0, len(order), per_batch):
            idx = order[b : b + per_batch]
            tokens, finished, by_string = _decode_batch(
                model, [prompt_ids[i] for i in idx], params, n=n, stop_ids=stop_ids, pad_id=pad_token_id,
                generator=generator, stop_hit=stop_hit, compact=compact,
            )
            for k, i in enumerate(idx):
                for j in range(n):
                    src, dst = k * n + j, i * n + j
                    result.token_ids[dst] = tokens[src]
                    result.finished[dst] = finished[src]
                    result.stopped_by_string[dst] = by_string[src]
                    result.new_tokens += len(tokens[src])
            if on_batch is not None:
                on_batch(len(idx) * n, sum(len(t) for t in tokens))
    result.decode_seconds = time.perf_counter() - start
    return result


def stream_decode(
    model: Any,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    tokenizer: Any = None,
) -> Iterator[int]:
    """Yield the new tokens of one prompt as they are decoded (the last one is the stop token when
    one ended the answer). Closing the iterator stops decoding; the model's train/eval mode is
    restored either way. The same tokens as :func:`decode_ids` for the same prompt and seed."""
    if params.stop and tokenizer is None:
        raise ConfigError("stop strings need the tokenizer: pass tokenizer= to stream_decode")
    if not prompt_ids:
        raise DataError("the prompt is empty once tokenised; give it some text")
    if (reason := fast_decode_supported(model)) is not None:
        raise ConfigError(f"stream_decode cannot run this model ({reason})")
    device = next(_base_model(model).parameters()).device
    generator = None
    if params.seed is not None and params.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    stop_ids = torch.tensor(sorted(set(stop_token_ids)) or [-1], dtype=torch.long, device=device)
    stop_hit = _stop_string_checker(tokenizer, params.stop) if params.stop else None
    with _eval_mode(model):
        for _rows, chosen in _decode_steps(
            model, [list(prompt_ids)], params, n=1, stop_ids=stop_ids, pad_id=pad_token_id, generator=generator,
            stop_hit=stop_hit, compact=False,
        ):
            yield chosen[0]
