"""The unit that flows through the curation steps, and the text helpers every step shares."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from affinage.data.formats import Example, Message

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")


@dataclass
class Record:
    """One row on its way through the steps: a conversation or a text, its source and language."""

    source: str
    where: str
    """``path, row N``: where the row came from, for error messages and the card."""
    messages: list[Message] | None = None
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    language: str | None = None
    """Declared by the row or its source, then replaced by the language step's verdict."""
    declared_language: str | None = None
    version: int = 0
    """Incremented whenever a step changes the content, so cached measurements are recomputed."""
    cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_example(cls, example: Example, source: str, where: str, language: str | None) -> Record:
        declared = example.meta.get("language")
        declared = declared.strip().lower() if isinstance(declared, str) and declared.strip() else language
        messages = [dict(m) for m in example.messages] if example.messages is not None else None
        return cls(source, where, messages, example.text, dict(example.meta), declared, declared)

    # ---------------------------------------------------------------- content access
    def contents(self) -> Iterator[str]:
        if self.messages is not None:
            for m in self.messages:
                yield m["content"]
        elif self.text is not None:
            yield self.text

    def answers(self) -> list[str]:
        """The assistant answers; a text row is its own answer."""
        if self.messages is None:
            return [self.text or ""]
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    def prompt_before(self, answer_index: int) -> str:
        """Text of the user turns before the ``answer_index``-th assistant answer."""
        if self.messages is None:
            return ""
        seen, parts = 0, []
        for m in self.messages:
            if m["role"] == "assistant":
                if seen == answer_index:
                    break
                seen += 1
            elif m["role"] == "user":
                parts.append(m["content"])
        return "\n".join(parts)

    def map_contents(self, fn, roles: frozenset[str] | None = None) -> bool:
        """Replace each content by ``fn(content)``; return whether anything changed."""
        changed = False
        if self.messages is not None:
            for m in self.messages:
                if roles is not None and m["role"] not in roles:
                    continue
                new = fn(m["content"])
                if new != m["content"]:
                    m["content"], changed = new, True
        elif self.text is not None:
            new = fn(self.text)
            if new != self.text:
                self.text, changed = new, True
        if changed:
            self.version += 1
        return changed

    def joined(self) -> str:
        """All contents joined by blank lines (for language identification and n-grams)."""
        return "\n\n".join(self.contents())

    def content(self) -> dict[str, Any]:
        """The content alone: what the split and mixing hashes look at (not the source or metadata)."""
        return {"messages": self.messages} if self.messages is not None else {"text": self.text}

    def to_row(self) -> dict[str, Any]:
        """The output row: ``messages`` (or ``text``), then ``source``, ``language`` and the other columns."""
        row: dict[str, Any] = dict(self.content())
        row["source"] = self.source
        row["language"] = self.language
        for key, value in self.meta.items():
            if key not in row:
                row[key] = value
        return row

    def preview(self, limit: int = 300) -> str:
        if self.messages is not None:
            text = " | ".join(f"{m['role']}: {m['content']}" for m in self.messages)
        else:
            text = self.text or ""
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------------------------
# Text helpers
# ----------------------------------------------------------------------------------------------


def normalize_for_dedup(text: str) -> str:
    """NFKC, case-folded, punctuation and symbols dropped, whitespace collapsed: ``"Hello,  World!"`` -> ``"hello world"``."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())


def record_words(record: Record) -> list[str]:
    """Normalised words of every message, role markers included so ``user: A`` differs from ``assistant: A``."""
    cached = record.cache.get("words")
    if cached is not None and cached[0] == record.version:
        return cached[1]
    words: list[str] = []
    if record.messages is not None:
        for m in record.messages:
            words.append(f"<{m['role']}>")
            words.extend(normalize_for_dedup(m["content"]).split())
    else:
        words.extend(normalize_for_dedup(record.text or "").split())
    record.cache["words"] = (record.version, words)
    return words


def hash64(text: str | bytes) -> int:
    """A signed 64-bit integer from BLAKE2b (fits an SQLite INTEGER); stable across processes and machines."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def hash_fraction(content: dict[str, Any], salt: str) -> float:
    """A number in [0, 1) fixed by ``content`` and ``salt`` (independent of the split hash for another salt)."""
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(f"{salt}\x00{blob}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def prose(text: str) -> str:
    """``text`` without fenced and inline code (code legitimately repeats lines and uses many symbols)."""
    return _INLINE_CODE.sub(" ", _FENCE.sub("\n", text))


def split_code(text: str) -> list[tuple[str, bool]]:
    """Split ``text`` into ``(segment, is_code)`` pieces; fenced blocks and inline code are code."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    pattern = re.compile(rf"{_FENCE.pattern}|{_INLINE_CODE.pattern}", re.DOTALL)
    for match in pattern.finditer(text):
        if match.start() > pos:
            pieces.append((text[pos : match.start()], False))
        pieces.append((match.group(0), True))
        pos = match.end()
    if pos < len(text):
        pieces.append((text[pos:], False))
    return pieces


def map_prose(text: str, fn) -> str:
    """Apply ``fn`` to the parts of ``text`` that are not code."""
    if "`" not in text:
        return fn(text)
    return "".join(seg if is_code else fn(seg) for seg, is_code in split_code(text))
