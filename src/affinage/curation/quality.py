"""Quality heuristics and token-length filters.

Repetition measures follow Gopher (Rae et al. 2021, "Scaling Language Models: Methods, Analysis &
Insights from Training Gopher", appendix A, Table A1), computed on each answer rather than on a web
page: the share of duplicated lines, the share of characters in the most frequent word 2-gram, and
the share of characters covered by word 5-grams that occur more than once. Short answers repeat
words naturally, so the n-gram measures apply only from ``min_words_for_repetition`` words on.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from affinage.curation.base import Step
from affinage.curation.record import Record, prose


@dataclass
class QualityOptions:
    min_answer_words: int = 2
    """Answers with fewer words are removed ("very short or empty answer")."""
    max_duplicate_line_share: float | None = 0.3
    """Gopher: share of an answer's non-empty lines that repeat an earlier line."""
    max_top_ngram_share: float | None = 0.2
    """Gopher: share of characters taken by the most frequent repeated word 2-gram."""
    max_duplicate_ngram_share: float | None = 0.15
    """Gopher: share of characters covered by word 5-grams seen more than once."""
    min_words_for_repetition: int = 30
    max_symbol_share: float | None = 0.3
    """Share of characters that are neither letters, digits, spaces nor common punctuation (outside code)."""
    max_prompt_overlap: float | None = 0.9
    """An answer whose distinct words are at least this share of words from its prompt only restates it."""


_COMMON_PUNCTUATION = ".,;:!?'\"()\\-–—«»“”‘’…/%"
_SYMBOL = re.compile(f"[^\\w\\s{_COMMON_PUNCTUATION}]|_")
_SPACE = re.compile(r"\s")


class QualityStep(Step):
    name = "quality"

    def __call__(self, record: Record) -> str | None:
        o = self.options
        for i, answer in enumerate(record.answers()):
            words = answer.split()
            if len(words) < o.min_answer_words:
                return "empty answer" if not words else f"answer shorter than {o.min_answer_words} words"
            reason = repetition(answer, o)
            if reason:
                return reason
            if o.max_prompt_overlap is not None and record.messages is not None:
                prompt = record.prompt_before(i)
                if prompt and restates(answer, prompt, o.max_prompt_overlap):
                    return "answer restates the prompt"
        if o.max_symbol_share is not None:
            for content in record.contents():
                if symbol_share(prose(content)) > o.max_symbol_share:
                    return "too many symbols"
        return None


def repetition(answer: str, o: QualityOptions | None = None) -> str | None:
    """Why ``answer`` is degenerate by the Gopher repetition measures of ``o``, or ``None``."""
    o = o or QualityOptions()
    words = answer.split()
    if o.max_duplicate_line_share is not None and duplicate_line_share(prose(answer)) > o.max_duplicate_line_share:
        return "repeated lines"
    if len(words) >= o.min_words_for_repetition:
        if o.max_top_ngram_share is not None and top_ngram_share(words, 2) > o.max_top_ngram_share:
            return "repeated 2-gram"
        if o.max_duplicate_ngram_share is not None and duplicate_ngram_share(words, 5) > o.max_duplicate_ngram_share:
            return "repeated 5-grams"
    return None


def duplicate_line_share(text: str) -> float:
    """Non-empty lines equal to an earlier line / non-empty lines: ``a\\nb\\na\\na`` -> 2/4."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        return 0.0
    seen: set[str] = set()
    duplicates = 0
    for line in lines:
        if line in seen:
            duplicates += 1
        seen.add(line)
    return duplicates / len(lines)


def top_ngram_share(words: list[str], n: int) -> float:
    """Characters of every occurrence of the most frequent n-gram / characters of all words.

    Only an n-gram seen at least twice counts: any text's most frequent n-gram is otherwise just its first.
    """
    total = sum(len(w) for w in words)
    if total == 0 or len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(set(grams)) == len(grams):
        return 0.0  # nothing repeats (the common case): skip counting
    gram, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return 0.0
    return sum(len(w) for w in gram) * count / total


def duplicate_ngram_share(words: list[str], n: int) -> float:
    """Characters of words covered by any n-gram occurring more than once / characters of all words."""
    total = sum(len(w) for w in words)
    if total == 0 or len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(set(grams)) == len(grams):
        return 0.0
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            for j in range(i, i + n):
                covered[j] = True
    return sum(len(w) for w, c in zip(words, covered, strict=True) if c) / total


def symbol_share(text: str) -> float:
    """Characters that are not letters, digits, whitespace or common punctuation / non-space characters."""
    visible = len(text) - len(_SPACE.findall(text))
    if visible == 0:
        return 0.0
    return len(_SYMBOL.findall(text)) / visible


def restates(answer: str, prompt: str, threshold: float) -> bool:
    """Whether the answer's distinct words come from the prompt for at least ``threshold`` of them."""
    from affinage.curation.record import normalize_for_dedup

    answer_words = set(normalize_for_dedup(answer).split())
    if not answer_words:
        return False
    prompt_words = set(normalize_for_dedup(prompt).split())
    return len(answer_words & prompt_words) / len(answer_words) >= threshold


# ----------------------------------------------------------------------------------------------
# Length in tokens of the target tokenizer
# ----------------------------------------------------------------------------------------------


@dataclass
class LengthOptions:
    min_tokens: int = 0
    max_tokens: int | None = None
    """Rows longer than this (the whole conversation as the chat template renders it) are removed."""
    min_answer_tokens: int = 0
    """Rows whose shortest assistant answer has fewer tokens are removed."""


class LengthStep(Step):
    name = "length"
    needs_tokenizer = True

    def __call__(self, record: Record) -> str | None:
        o = self.options
        length = self.context.lengths.measure(record)
        if length < o.min_tokens:
            return f"shorter than {o.min_tokens} tokens"
        if o.max_tokens is not None and length > o.max_tokens:
            return f"longer than {o.max_tokens} tokens"
        if o.min_answer_tokens and min(self.context.lengths.count(a) for a in record.answers()) < o.min_answer_tokens:
            return f"answer shorter than {o.min_answer_tokens} tokens"
        return None
