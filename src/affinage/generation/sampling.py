"""Batched generation for chat, evaluation and RL rollouts, and token-by-token streaming for chat.

``generate`` renders each prompt with the tokenizer's chat template, sorts the prompts by length so
that each batch holds prompts of similar size (little padding), pads them on the left (a causal model
continues from the last position, so every row must end at the same column), calls
``model.generate`` and hands the answers back in the order of the input. Only the new tokens are
decoded. Generation stops at the end-of-sequence token and at the template's end-of-turn tokens
(``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``...), and the answer is cut at the first stop string.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from affinage.errors import ConfigError, DataError, ModelError

Message = dict[str, str]
Prompt = str | list[Message]

# End-of-turn markers of common chat templates, used when probing the template finds none.
_KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>", "</s>")
_PROBE = "\x00affinage-probe\x00"


@dataclass
class GenerationOptions:
    """How answers are decoded: greedy (temperature 0), sampling, or beam search."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 is greedy decoding; above 0, tokens are sampled from the softened distribution."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0 = no limit)."""
    top_p: float = 1.0
    """Nucleus sampling: sample among the smallest set of tokens whose probability reaches p."""
    num_beams: int = 1
    """Beam search with this many beams (greedy only: it cannot be combined with sampling)."""
    repetition_penalty: float = 1.0
    """Divide the logits of tokens already present by this factor (1.0 = off; CTRL, Keskar et al. 2019)."""
    seed: int | None = None
    """Seed for sampling: the same seed, prompts and batch size give the same answers."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: the answer ends before the first one produced."""

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the option when a value or a combination is impossible."""

        def check(condition: bool, name: str, message: str) -> None:
            if not condition:
                raise ConfigError(f"generation option '{name}' {message}")

        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be at least 1, got {self.max_new_tokens}")
        check(self.temperature >= 0, "temperature", f"must be >= 0 (0 = greedy), got {self.temperature}")
        check(self.top_k >= 0, "top_k", f"must be >= 0 (0 = no limit), got {self.top_k}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.num_beams >= 1, "num_beams", f"must be at least 1, got {self.num_beams}")
        check(
            self.repetition_penalty > 0,
            "repetition_penalty",
            f"must be positive, got {self.repetition_penalty}",
        )
        check(
            not (self.num_beams > 1 and self.do_sample),
            "num_beams",
            f"= {self.num_beams} (beam search) cannot be combined with sampling (temperature "
            f"{self.temperature}); set temperature=0 for beam search or num_beams=1 for sampling",
        )
        check(
            self.do_sample or (self.top_k == 0 and self.top_p == 1.0),
            "top_k" if self.top_k else "top_p",
            "only applies to sampling, but temperature is 0 (greedy); set temperature > 0, e.g. 0.7",
        )
        check(
            all(isinstance(s, str) and s for s in self.stop),
            "stop",
            f"must be a list of non-empty strings, got {self.stop!r}",
        )


# ----------------------------------------------------------------------------------------------
# Prompts: rendering and end-of-turn tokens
# ----------------------------------------------------------------------------------------------


def _check_messages(messages: Any, where: str) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: a message list must be a non-empty list of {{'role', 'content'}} dicts")
    for j, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(
                f"{where}: message {j} must be a dict with string 'role' and 'content', got {m!r:.120}"
            )
    return messages


def _with_system(messages: list[Message], system_prompt: str | None) -> list[Message]:
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _merge_system(messages: list[Message]) -> list[Message]:
    """Fold a system message into the first user turn, for templates that reject the system role."""
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def render_prompt(
    tokenizer: Any, prompt: Prompt, system_prompt: str | None = None, *, where: str = "prompt"
) -> str:
    """Return the text the model continues: the chat template with the assistant's generation prompt.

    A raw string becomes a single user message when the tokenizer has a chat template, and is used as
    it is otherwise (the system prompt, if any, then precedes it on its own paragraph).
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt, str):
        if not has_template:
            return f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = _check_messages(prompt, where)
        if not has_template:
            raise ModelError(
                f"{where} is a message list but the tokenizer has no chat template; pass a chat template "
                "(e.g. --chat-template chatml) or give the prompt as plain text"
            )
    messages = _with_system(messages, system_prompt)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:
        # Some templates (Gemma, early Mistral) raise on a system turn: fold it into the user turn.
        if messages[0]["role"] != "system":
            raise
        return tokenizer.apply_chat_template(
            _merge_system(messages), tokenize=False, add_generation_prompt=True
        )


def _encode(tokenizer: Any, text: str) -> list[int]:
    # A rendered chat template already carries its BOS token; plain text gets the tokenizer's own.
    add_special = not bool(getattr(tokenizer, "chat_template", None))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def end_of_turn_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that close an assistant turn in the tokenizer's chat template.

    The template is rendered with a probe answer; the first special token after the probe is the
    end-of-turn marker (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3). Known markers written
    in the template are added too.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template or not isinstance(template, str):
        return []
    special = set(tokenizer.all_special_ids)
    special.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)
    ids: list[int] = []
    with contextlib.suppress(Exception):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}], tokenize=False
        )
        tail = text.split(_PROBE, 1)[1]
        first = next(
            (i for i in tokenizer(tail, add_special_tokens=False)["input_ids"] if i in special), None
        )
        if first is not None:
            ids.append(first)
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in _KNOWN_END_OF_TURN if t in template and t in vocab]
    return list(dict.fromkeys(ids))


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-sequence ids: the tokenizer's, the model's generation config's and the end-of-turn ones."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(model_eos, int):
        ids.append(model_eos)
    elif model_eos:
        ids += list(model_eos)
    ids += end_of_turn_token_ids(tokenizer)
    return list(dict.fromkeys(ids))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Return ``text`` up to (not including) the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


def model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed every generator for the block, then restore the caller's random state."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _generation_config(model: Any, tokenizer: Any, options: GenerationOptions) -> tuple[Any, list[int], int]:
    from transformers import GenerationConfig

    eos = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    # model.generate fills every unset field from the checkpoint's generation_config.json (e.g.
    # top_k=50, temperature=0.6), so sampling sets all three explicitly. Greedy leaves them unset:
    # with do_sample=False given, the inherited values are inert and transformers stays quiet.
    sampling = {}
    if options.do_sample:
        sampling = dict(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p)
    return (
        GenerationConfig(
            max_new_tokens=options.max_new_tokens,
            do_sample=options.do_sample,
            num_beams=options.num_beams,
            repetition_penalty=options.repetition_penalty,
            eos_token_id=eos or None,
            pad_token_id=pad,
            stop_strings=list(options.stop) or None,
            **sampling,
        ),
        eos,
        pad,
    )


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
    for i, r in enumerate(rows):
        if r:
            input_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, width - len(r) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("batches · {task.fields[tokens_per_s]:.1f} tokens/s"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def generate_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    options: GenerationOptions | None = None,
    *,
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: bool = True,
) -> list[list[int]]:
    """Return the new token ids of each answer, in the order of ``prompts``.

    Each answer ends with the end-of-sequence (or end-of-turn) token when the model produced one, and
    holds no padding. Stop strings end generation early but are not cut here (see :func:`generate`).
    """
    options = options or GenerationOptions()
    options.validate()
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(prompts, str):
        raise DataError("prompts must be a list of prompts, got a single string; wrap it in a list")
    encoded: list[list[int]] = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str | list):
            raise DataError(f"prompt {i} must be a string or a list of messages, got {type(p).__name__}")
        encoded.append(_encode(tokenizer, render_prompt(tokenizer, p, system_prompt, where=f"prompt {i}")))
        if not encoded[-1]:
            raise DataError(f"prompt {i} is empty once tokenised; give it some text")
    if not encoded:
        return []

    gen_config, eos, pad = _generation_config(model, tokenizer, options)
    if options.num_beams == 1:
        from affinage.generation.rollout import fast_decode_supported

        if fast_decode_supported(model) is None:
            return _decode_loop_ids(model, tokenizer, encoded, options, eos, pad, batch_size, progress)
    eos_set = set(eos)
    device = model_device(model)
    # Longest first: similar lengths share a batch, and an out-of-memory error shows up at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    answers: list[list[int]] = [[] for _ in encoded]
    extra = {"tokenizer": tokenizer} if options.stop else {}

    n_batches = (len(order) + batch_size - 1) // batch_size
    with _progress(progress) as bar, torch.inference_mode(), _eval_mode(model), _seeded(options.seed, device):
        task = bar.add_task("generate", total=n_batches, tokens_per_s=0.0)
        n_tokens, start = 0, time.perf_counter()
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            input_ids, attention_mask = _left_pad([encoded[i] for i in idx], pad, device)
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config, **extra
            )
            new_tokens = output[:, input_ids.shape[1] :].tolist()  # [B, <= max_new_tokens]
            for i, row in zip(idx, new_tokens, strict=True):
                # Finished rows are padded up to the longest one; everything after the first eos goes.
                end = next((k + 1 for k, t in enumerate(row) if t in eos_set), len(row))
                answers[i] = row[:end]
                n_tokens += end
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=1, tokens_per_s=n_tokens / elapsed)
    return answers


def _decode_loop_ids(
    model: Any, tokenizer: Any, encoded: list[list[int]], options: GenerationOptions, eos: list[int], pad: int,
    batch_size: int, progress: bool,
) -> list[list[int]]:
    """Greedy and sampled answers from the preallocated-cache loop of :mod:`affinage.generation.rollout`:
    the answers ``model.generate`` gives (tested token for token); rows that finish leave the batch."""
    from affinage.generation.rollout import SamplingParams, decode_ids

    n_batches = (len(encoded) + batch_size - 1) // batch_size
    with _progress(progress) as bar:
        task = bar.add_task("generate", total=n_batches, tokens_per_s=0.0)
        counted, start = [0], time.perf_counter()

        def on_batch(sequences: int, new_tokens: int) -> None:
            counted[0] += new_tokens
            bar.update(task, advance=1, tokens_per_s=counted[0] / max(time.perf_counter() - start, 1e-9))

        out = decode_ids(
            model, encoded, SamplingParams.from_options(options), stop_token_ids=eos, pad_token_id=pad,
            batch_size=batch_size, tokenizer=tokenizer, on_batch=on_batch,
        )
    return out.token_ids


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    options: GenerationOptions | None = None,
    *,
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Answer every prompt; the answers come back in the order of ``prompts``.

    A prompt is a raw string or a list of ``{"role", "content"}`` messages. Prompts are batched by
    length with left padding; with ``options.seed`` the whole call is reproducible. Only the new
    tokens are decoded, special tokens skipped, and each answer is cut at the first stop string.
    """
    options = options or GenerationOptions()
    ids = generate_ids(
        model,
        tokenizer,
        prompts,
        options,
        batch_size=batch_size,
        system_prompt=system_prompt,
        progress=progress,
    )
    eos = set(stop_token_ids(model, tokenizer))
    texts = []
    for row in ids:
        if row and row[-1] in eos:
            row = row[:-1]
        texts.append(cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), options.stop))
    return texts


class _TokenStreamer:
    """A ``model.generate`` streamer that hands out text after every token, through a queue.

    The answer so far is decoded whole at each token (decoding token by token would break multi-byte
    characters and SentencePiece spaces), and the new end of it is queued unless it ends inside an
    unfinished UTF-8 character. End-of-sequence tokens are dropped as :func:`generate` drops them.
    """

    _END = object()

    def __init__(self, tokenizer: Any, eos: set[int]):
        self.tokenizer, self.eos = tokenizer, eos
        self.queue: queue.Queue[Any] = queue.Queue()
        self.tokens: list[int] = []
        self.sent = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call hands over the prompt
            self.prompt_seen = True
            return
        self.tokens += [t for t in value.reshape(-1).tolist() if t not in self.eos]
        self._send(final=False)

    def end(self) -> None:
        self._send(final=True)
        self.queue.put(self._END)

    def _send(self, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.queue.put(text[self.sent :])
            self.sent = len(text)

    def __iter__(self) -> Iterator[str]:
        while (item := self.queue.get()) is not self._END:
            yield item


def stream_chat(
    model: Any,
    tokenizer: Any,
    messages: list[Message],
    options: GenerationOptions | None = None,
    *,
    system_prompt: str | None = None,
) -> Iterator[str]:
    """Yield the answer to ``messages`` piece by piece, as the model produces each token.

    The KV-cache loop of :mod:`affinage.generation.rollout` decodes in this thread, one token per
    iteration; for models it cannot run, ``model.generate`` runs in a worker thread and feeds a
    queue. Text that might be the start of a stop string is held back until it is known not to be.
    Closing the iterator early (or Ctrl-C in the consumer) stops decoding at the next token. The
    pieces join to what :func:`generate` returns for the same conversation.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList

    options = options or GenerationOptions()
    options.validate()
    if options.num_beams > 1:
        # Beam search only knows its answer at the end: no streaming, one piece.
        yield generate(model, tokenizer, [messages], options, system_prompt=system_prompt, progress=False)[0]
        return
    ids = _encode(tokenizer, render_prompt(tokenizer, messages, system_prompt, where="messages"))
    gen_config, eos, pad = _generation_config(model, tokenizer, options)
    from affinage.generation.rollout import fast_decode_supported

    if fast_decode_supported(model) is None:
        yield from _hold_stop_strings(_loop_pieces(model, tokenizer, ids, options, eos, pad), options.stop)
        return
    device = model_device(model)
    input_ids, attention_mask = _left_pad([ids], pad, device)
    streamer = _TokenStreamer(tokenizer, set(eos))
    cancel = threading.Event()
    errors: list[BaseException] = []

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return torch.full(
                (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    def work() -> None:
        try:
            with torch.inference_mode(), _seeded(options.seed, device):
                model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=gen_config,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                    **({"tokenizer": tokenizer} if options.stop else {}),
                )
        except BaseException as exc:  # handed to the consumer, which would otherwise wait forever
            errors.append(exc)
            streamer.end()

    was_training = model.training
    model.eval()
    thread = threading.Thread(target=work, name="affinage-stream", daemon=True)
    thread.start()
    try:
        yield from _hold_stop_strings(streamer, options.stop)
        if errors:
            raise errors[0]
    finally:
        cancel.set()
        thread.join()
        model.train(was_training)


def _hold_stop_strings(pieces: Iterable[str], stop: Sequence[str]) -> Iterator[str]:
    """Pass text pieces on, holding back any end that may begin a stop string, and end at one."""
    pending = ""
    for piece in pieces:
        pending += piece
        if stop:
            cut = cut_at_stop(pending, stop)
            if len(cut) < len(pending):
                if cut:
                    yield cut
                return
            held = _partial_stop_length(pending, stop)
            ready, pending = pending[: len(pending) - held], pending[len(pending) - held :]
        else:
            ready, pending = pending, ""
        if ready:
            yield ready
    if pending:
        yield pending


def _loop_pieces(
    model: Any, tokenizer: Any, ids: list[int], options: GenerationOptions, eos: list[int], pad: int
) -> Iterator[str]:
    """The answer's new text after each token of :func:`affinage.generation.rollout.stream_decode`.

    As :class:`_TokenStreamer`: the answer so far is decoded whole at each token (token by token
    would break multi-byte characters), nothing is sent while it ends inside a character, and
    end-of-sequence tokens are dropped.
    """
    from affinage.generation.rollout import SamplingParams, stream_decode

    eos_set, tokens, sent = set(eos), [], 0
    for token in stream_decode(
        model, ids, SamplingParams.from_options(options), stop_token_ids=eos, pad_token_id=pad, tokenizer=tokenizer
    ):
        if token in eos_set:
            continue
        tokens.append(token)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > sent:
            yield text[sent:]
            sent = len(text)
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if len(text) > sent:
        yield text[sent:]


def _partial_stop_length(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the beginning of some stop string."""
    best = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
