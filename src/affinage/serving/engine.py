"""The generation engine behind the HTTP server: one worker thread, a bounded queue, batched decoding.

Requests (:class:`Job`) wait in a FIFO queue of at most ``max_queue`` jobs (the server answers 429
beyond it). One worker thread owns the model: it takes as many queued jobs as fit in
``max_batch_size`` rows (a job asking for ``n`` choices takes ``n`` rows), decodes them together,
and hands every new piece of text to the job's ``emit`` callback as it is produced. Jobs arriving
while a batch runs form the next batch (static batching).

The decoding loop is written out here rather than delegated to ``model.generate`` because each row
of a batch carries its own sampling settings (temperature, top-p, seed, penalties, logit bias, stop
strings, token budget), streams on its own, and can be cancelled on its own (client gone, timeout).
Rows are padded on the left; each row's positions count from its first real token; the KV cache of
finished rows is dropped so the batch shrinks as answers end. Greedy decoding gives the same tokens
as ``model.generate`` (tested).
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from affinage.generation.rollout import filter_top_k_top_p
from affinage.generation.sampling import _partial_stop_length, cut_at_stop, model_device, stop_token_ids

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already; the server answers 429."""


class EngineStopped(Exception):
    """The engine was stopped (server shutting down)."""


@dataclass
class SamplingParams:
    """How one request's answers are decoded (the OpenAI chat-completions fields, validated)."""

    max_tokens: int
    temperature: float = 1.0
    """0 is greedy decoding."""
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    """Choice ``j`` samples with a generator seeded ``seed + j``: the same request gives the same
    answers whatever else shares its batch."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass
class Event:
    """What the engine tells a job: ``delta`` (new text of a choice), ``finish`` (a choice ended, with
    its reason and token count), ``error`` (the batch failed) or ``done`` (every choice ended)."""

    kind: str
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: BaseException | None = None


@dataclass
class Job:
    """One request: a tokenised prompt, ``n`` choices to decode with ``params``, and a callback."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    n: int = 1
    stream_text: bool = True
    """Send ``delta`` events as text is produced (otherwise only the final text, in one delta)."""
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None

    def cancel(self) -> None:
        self.cancelled.set()


class _Choice:
    """The decoding state of one row: one choice of one job."""

    def __init__(self, job: Job, index: int, vocab_size: int):
        self.job, self.index, self.params = job, index, job.params
        self.tokens: list[int] = []
        self.sent = 0  # characters of the answer already emitted
        self.finish_reason: str | None = None
        self.generator: torch.Generator | None = None
        if self.params.temperature > 0:
            self.generator = torch.Generator()
            seed = self.params.seed + index if self.params.seed is not None else secrets.randbits(63)
            self.generator.manual_seed(seed)
        self.counts: torch.Tensor | None = None  # [V] occurrences, for the penalties
        if self.params.presence_penalty or self.params.frequency_penalty:
            self.counts = torch.zeros(vocab_size)
        self.bias: torch.Tensor | None = None  # [V]
        if self.params.logit_bias:
            self.bias = torch.zeros(vocab_size)
            for token, value in self.params.logit_bias.items():
                self.bias[token] = value


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def sample_next(logits: torch.Tensor, choice: _Choice) -> int:
    """The next token of one row from its fp32 logits ``[V]``, with the row's own settings.

    Penalties follow OpenAI's definition: ``logit[t] -= frequency_penalty * count[t] +
    presence_penalty * (count[t] > 0)``; the logit bias is added before them. Then greedy (temperature
    0) or sampling from softmax(logits / temperature) restricted to the nucleus: the most likely tokens
    whose probabilities, in decreasing order, sum to ``top_p`` (the token that crosses it included;
    Holtzman et al. 2020).
    """
    p = choice.params
    if choice.bias is not None:
        logits = logits + choice.bias
    if choice.counts is not None:
        logits = logits - p.frequency_penalty * choice.counts - p.presence_penalty * (choice.counts > 0).float()
    if p.temperature == 0:
        return int(logits.argmax())
    scaled = filter_top_k_top_p((logits / p.temperature)[None], 0, p.top_p)[0]  # [V]
    return int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=choice.generator))


class BatchEngine:
    """Owns the model; decodes queued jobs in batches on one worker thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 8,
        max_queue: int = 32,
        context_length: int | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        config = getattr(model, "config", None)
        self.context_length = context_length or getattr(config, "max_position_embeddings", None) or 2048
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.eos_ids = set(stop_token_ids(model, tokenizer))
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos_ids), 0)
        self.device = model_device(model)
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns, then goes).
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        # Held by the worker for a whole batch, and by anything else that runs the model (a guard
        # that classifies with it): one user of the model at a time.
        self.model_lock = threading.Lock()
        # A fast tokenizer's encode may reconfigure its Rust backend (truncation, padding), and
        # concurrent use then fails with "Already borrowed": every use goes through this lock.
        self.tokenizer_lock = threading.Lock()
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.running_rows = 0
        self.completed_jobs = 0
        self.batches = 0

    # ---------------------------------------------------------------- queue
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="affinage-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            job.emit(Event("error", error=EngineStopped("the server is shutting down")))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFull` when ``max_queue`` jobs already wait."""
        if job.n > self.max_batch_size:
            raise ValueError(f"n={job.n} is more than max_batch_size={self.max_batch_size}")
        with self._cond:
            if self._stopping:
                raise EngineStopped("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are already waiting (max_queue={self.max_queue})")
            self._queue.append(job)
            self._cond.notify()

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            batch: list[Job] = []
            rows = 0
            while self._queue and rows + self._queue[0].n <= self.max_batch_size:
                job = self._queue.popleft()
                if job.cancelled.is_set():
                    continue  # gone while waiting (timeout, client closed)
                batch.append(job)
                rows += job.n
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            now = time.monotonic()
            for job in batch:
                job.started = now
            choices = [_Choice(job, j, self.vocab_size) for job in batch for j in range(job.n)]
            self.running_rows = len(choices)
            try:
                with self.model_lock, torch.inference_mode():
                    self.decode(choices)
            except Exception as exc:  # a failed batch fails its jobs, never the server
                logger.exception("generation failed for a batch of %d jobs", len(batch))
                for job in batch:
                    job.emit(Event("error", error=exc))
                continue
            finally:
                self.running_rows = 0
                self.batches += 1
            for job in batch:
                self.completed_jobs += 1
                job.emit(Event("done"))

    # ---------------------------------------------------------------- decoding
    def decode(self, choices: Sequence[_Choice]) -> None:
        """Decode every choice to its end: eos, a stop string, its token budget, or cancellation."""
        model = self.model
        prompts = [c.job.prompt_ids for c in choices]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, T]
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention_mask[i, width - len(p) :] = 1
        # Positions count from each row's first real token, so left padding changes nothing.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)  # [B, T]
        input_ids, attention_mask, position_ids = (
            t.to(self.device) for t in (input_ids, attention_mask, position_ids)
        )
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=True, logits_to_keep=1,
        )
        cache = _output_cache(out)
        logits = out.logits[:, -1].float().cpu()  # [B, V]
        last_position = position_ids[:, -1:]  # [B, 1]
        active = list(range(len(choices)))  # rows of the current batch -> index into choices

        while True:
            tokens: list[int] = []
            keep: list[int] = []  # positions in `active` that go on
            for k, i in enumerate(active):
                choice = choices[i]
                token = sample_next(logits[k], choice)
                tokens.append(token)
                if self._advance(choice, token):
                    keep.append(k)
            if not keep:
                return
            if len(keep) < len(active):
                # Drop finished rows from the batch and their KV cache.
                index = torch.tensor(keep, dtype=torch.long, device=self.device)
                cache.batch_select_indices(index)
                attention_mask = attention_mask.index_select(0, index)
                last_position = last_position.index_select(0, index)
                active = [active[k] for k in keep]
                tokens = [tokens[k] for k in keep]
            next_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]  # [B, 1]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
            last_position = last_position + 1
            out = model(
                input_ids=next_ids, attention_mask=attention_mask, position_ids=last_position,
                use_cache=True, **{self._cache_arg: cache},
            )
            cache = _output_cache(out)
            logits = out.logits[:, -1].float().cpu()

    def _advance(self, choice: _Choice, token: int) -> bool:
        """Take ``token`` into ``choice``; emit text; return whether the choice goes on."""
        job, p = choice.job, choice.params
        if job.cancelled.is_set():
            return self._finish(choice, "cancelled")
        if token in self.eos_ids:
            return self._finish(choice, "stop")
        choice.tokens.append(token)
        if choice.counts is not None:
            choice.counts[token] += 1
        if p.stop or job.stream_text:
            with self.tokenizer_lock:
                text = self.tokenizer.decode(choice.tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                if p.stop:
                    cut = cut_at_stop(text, p.stop)
                    if len(cut) < len(text):
                        return self._finish(choice, "stop", cut)
                    ready = len(text) - _partial_stop_length(text, p.stop)
                else:
                    ready = len(text)
                if job.stream_text and ready > choice.sent:
                    job.emit(Event("delta", choice.index, text[choice.sent : ready]))
                    choice.sent = ready
        if len(choice.tokens) >= p.max_tokens or len(job.prompt_ids) + len(choice.tokens) >= self.context_length:
            return self._finish(choice, "length")
        return True

    def _finish(self, choice: _Choice, reason: str, text: str | None = None) -> bool:
        if text is None:
            with self.tokenizer_lock:
                text = self.tokenizer.decode(choice.tokens, skip_special_tokens=True)
        if len(text) > choice.sent:
            choice.job.emit(Event("delta", choice.index, text[choice.sent :]))
            choice.sent = len(text)
        choice.finish_reason = reason
        choice.job.emit(Event("finish", choice.index, finish_reason=reason, completion_tokens=len(choice.tokens)))
        return False

    @contextlib.contextmanager
    def exclusive(self):
        """Hold the model (between batches) and the tokenizer, for a guard that runs them."""
        with self.model_lock, self.tokenizer_lock, torch.inference_mode():
            yield self.model
