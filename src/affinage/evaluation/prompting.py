"""Prompt-engineering baselines: zero-shot, few-shot and retrieval-augmented prompting of a model.

Fine-tuning is worth its cost only if it beats what the base model does with a good prompt. Each
model of an ``eval`` config may carry a ``prompting:`` section, so the same checkpoint can be listed
several times (one row per way of prompting it) beside the fine-tuned models, on the same sets and
metrics:

``zero_shot``  the question as it is, after an optional system prompt;
``few_shot``   ``shots`` example conversations from a file put before the question as earlier turns
               (in-context learning, Brown et al. 2020, "Language Models are Few-Shot Learners"):
               the same seeded draw for every question (``selection: fixed``), or the examples whose
               user turns are most similar to the question, most similar last (``selection: similar``;
               Liu et al. 2022, "What Makes Good In-Context Examples for GPT-3?");
``rag``        the ``top_k`` passages of the user's documents most similar to the question, with an
               instruction to answer from them, in the system message or before the question in the
               user message (retrieval-augmented generation, Lewis et al. 2020).

The prompt is built once per example (:meth:`Prompter.build_all`) and used for generation, for the
perplexity of the reference and for multiple-choice log-likelihoods alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from affinage.errors import ConfigError, DataError

Message = dict[str, str]
PromptingMode = Literal["zero_shot", "few_shot", "rag"]

DEFAULT_RAG_INSTRUCTION = (
    "Answer the user's question with the help of the documentation passages below. Use the facts, "
    "commands and names they give; if they do not answer the question, say so instead of guessing."
)


@dataclass
class PromptingConfig:
    """How a model is prompted: the prompt-engineering baselines that fine-tuning is measured against."""

    mode: PromptingMode = "zero_shot"
    """``zero_shot`` (the question as is), ``few_shot`` (example conversations first) or ``rag``
    (retrieved passages of ``documents``)."""
    system_prompt: str | None = None
    """A system message put first (replaces the set's ``system_prompt`` for this model; a conversation
    that has its own system message keeps it)."""
    examples: str | None = None
    """few_shot: a file of example conversations (any SFT format), e.g. the training set."""
    shots: int = 3
    """few_shot: how many example conversations go before the question."""
    selection: Literal["fixed", "similar"] = "fixed"
    """few_shot: ``fixed`` = the same seeded draw for every question; ``similar`` = the examples whose
    user turns are closest to the question's (embeddings, extra ``rag``), the closest last."""
    seed: int = 0
    """few_shot with ``selection: fixed``: the seed of the draw."""
    documents: list[str] = field(default_factory=list)
    """rag: files (Markdown, text, JSONL/JSON/CSV/Parquet rows), folders or glob patterns."""
    top_k: int = 3
    """rag: passages retrieved per question."""
    chunk_chars: int = 800
    """rag: longest passage in characters (Markdown is cut at headings first, then at paragraphs)."""
    placement: Literal["system", "user"] = "system"
    """rag: the passages go at the end of the system message, or before the question in the user turn."""
    instruction: str = DEFAULT_RAG_INSTRUCTION
    """rag: what the model is told to do with the passages."""
    index_dir: str | None = None
    """rag: where the index is cached (default: ``OUTPUT_DIR/rag_index``); reused while the documents
    and ``chunk_chars`` do not change."""

    def is_default(self) -> bool:
        """True when the model is prompted exactly as without a ``prompting`` section."""
        return self.mode == "zero_shot" and not self.system_prompt

    def validate(self, key: str) -> None:
        def check(condition: Any, sub: str, message: str) -> None:
            if not condition:
                raise ConfigError(f"config key '{key}.{sub}' {message}")

        check(self.mode == "few_shot" or self.examples is None, "examples",
              f"is only read when {key}.mode is few_shot (it is {self.mode})")
        check(self.mode == "rag" or not self.documents, "documents",
              f"are only read when {key}.mode is rag (it is {self.mode})")
        if self.mode == "few_shot":
            check(bool(self.examples), "examples", "is needed by mode few_shot: a file of example conversations")
            check(Path(self.examples or "").is_file(), "examples", f"{self.examples} does not exist")
            check(self.shots >= 1, "shots", "must be at least 1")
        if self.mode == "rag":
            from affinage.evaluation.retrieval import resolve_documents

            check(bool(self.documents), "documents", "is needed by mode rag: files, folders or glob patterns")
            resolve_documents(self.documents, where=f"{key}.documents")
            check(self.top_k >= 1, "top_k", "must be at least 1")
            check(self.chunk_chars >= 50, "chunk_chars", "must be at least 50")
            check(bool(self.instruction.strip()), "instruction", "is empty; tell the model to use the passages")

    def describe(self) -> str | None:
        """One line for tables and reports; None for plain zero-shot prompting."""
        if self.is_default():
            return None
        system = ", system prompt" if self.system_prompt else ""
        if self.mode == "few_shot":
            how = f"seed {self.seed}" if self.selection == "fixed" else "most similar"
            return f"few-shot: {self.shots} examples of {self.examples} ({how}){system}"
        if self.mode == "rag":
            return f"RAG: top {self.top_k} passages of {', '.join(self.documents)} in the {self.placement} message{system}"
        return "zero-shot with a system prompt"


@dataclass
class BuiltPrompt:
    messages: list[Message]
    """The conversation the model answers (it ends with the user's question)."""
    shots: list[int] = field(default_factory=list)
    """few_shot: row indices of the example file, in the order they were put."""
    retrieved: list[str] = field(default_factory=list)
    """rag: ``file (heading) score`` of each passage, best first."""


def user_text(messages: list[Message]) -> str:
    """The user turns of a conversation, joined: what retrieval compares (a follow-up question such
    as 'And for datasets?' is found through the turns before it)."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


class Prompter:
    """Builds the prompt of one model for every example, from its :class:`PromptingConfig`.

    The example file (few_shot) and the passage index (rag) are read once, when it is made.
    """

    def __init__(self, cfg: PromptingConfig, *, output_dir: str | Path = ".", console: Any = None):
        self.cfg = cfg
        self.pool: list[list[Message]] = []
        self.pool_embeddings: Any = None
        self.index: Any = None
        if cfg.mode == "few_shot":
            assert cfg.examples is not None
            self.pool = read_example_conversations(cfg.examples)
            if cfg.selection == "similar":
                from affinage.evaluation.retrieval import embed

                self.pool_embeddings = embed([user_text(c) for c in self.pool])  # [E, D]
        elif cfg.mode == "rag":
            from affinage.evaluation.retrieval import build_index

            cache = Path(cfg.index_dir) if cfg.index_dir else Path(output_dir) / "rag_index"
            self.index = build_index(cfg.documents, chunk_chars=cfg.chunk_chars, cache_dir=cache)
            if console is not None:
                state = "read from" if self.index.cached else "built in"
                console.print(f"  retrieval index: {len(self.index.passages)} passages, {state} {self.index.path}")

    def build_all(self, prompts: list[list[Message]], *, default_system: str | None = None) -> list[BuiltPrompt]:
        """The prompt of every example (retrieval embeds all the questions at once)."""
        cfg = self.cfg
        queries = [user_text(p) for p in prompts]
        hits: list[list[Any]] = [[] for _ in prompts]
        similar: list[list[tuple[int, float]]] = [[] for _ in prompts]
        if cfg.mode == "rag":
            hits = self.index.search(queries, cfg.top_k)
        elif cfg.mode == "few_shot" and cfg.selection == "similar":
            from affinage.evaluation.retrieval import cosine_top_k, embed

            # Every example ranked, so that those excluded as copies of the question can be skipped.
            similar = cosine_top_k(embed(queries), self.pool_embeddings, len(self.pool))
        return [
            self._build(prompt, default_system, hits[i], similar[i])
            for i, prompt in enumerate(prompts)
        ]

    def _build(self, prompt: list[Message], default_system: str | None, hits: list[Any],
               ranked: list[tuple[int, float]]) -> BuiltPrompt:
        cfg = self.cfg
        own_system = prompt[0]["content"] if prompt and prompt[0]["role"] == "system" else None
        turns = prompt[1:] if own_system is not None else list(prompt)
        system = own_system if own_system is not None else (cfg.system_prompt or default_system)
        built = BuiltPrompt(messages=[])
        if cfg.mode == "few_shot":
            built.shots = self._choose_shots(turns, ranked)
            turns = [m for i in built.shots for m in self.pool[i]] + turns
        elif cfg.mode == "rag":
            from affinage.evaluation.retrieval import format_passages

            built.retrieved = [
                f"{Path(p.source).name}{f' ({p.title})' if p.title else ''} {score:.3f}" for p, score in hits
            ]
            context = f"{cfg.instruction}\n\n{format_passages(hits)}"
            if cfg.placement == "system":
                system = f"{system}\n\n{context}" if system else context
            else:
                last = max(i for i, m in enumerate(turns) if m["role"] == "user")
                question = turns[last]["content"]
                turns = [*turns[:last], {"role": "user", "content": f"{context}\n\nQuestion: {question}"}, *turns[last + 1:]]
        built.messages = ([{"role": "system", "content": system}] if system else []) + turns
        return built

    def _choose_shots(self, turns: list[Message], ranked: list[tuple[int, float]]) -> list[int]:
        """Indices of the examples to show, never one that asks one of the question's own user turns
        (an example file that holds the test question would hand the model its answer)."""
        from affinage.evaluation.metrics import normalize_text

        asked = {normalize_text(m["content"]) for m in turns if m["role"] == "user"}

        def allowed(i: int) -> bool:
            return not any(normalize_text(m["content"]) in asked for m in self.pool[i] if m["role"] == "user")

        k = self.cfg.shots
        if self.cfg.selection == "similar":
            chosen = [i for i, _ in ranked if allowed(i)][:k]
            return chosen[::-1]  # the most similar example last, next to the question
        order = list(range(len(self.pool)))
        random.Random(self.cfg.seed).shuffle(order)
        return [i for i in order if allowed(i)][:k]


def read_example_conversations(path: str) -> list[list[Message]]:
    """The conversations of an example file (any SFT format), without their system messages, each
    ending with an assistant answer."""
    from affinage.data.formats import to_example
    from affinage.data.io import read_rows

    pool = []
    for number, row in read_rows(path):
        example = to_example(row, "auto", f"{path}, row {number}")
        if example.messages is None:
            raise DataError(f"{path}, row {number}: few-shot examples must be conversations, not plain text")
        turns = [m for m in example.messages if m["role"] != "system"]
        if turns and turns[-1]["role"] == "assistant" and any(m["role"] == "user" for m in turns):
            pool.append(turns)
    if not pool:
        raise DataError(f"{path}: no conversation ending with an assistant answer to use as a few-shot example")
    return pool
