"""Row formats: detect which one a row uses and convert it into an :class:`Example`.

Five formats are understood (the keys each needs are in :data:`FORMATS`):

``messages``           ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}``
``sharegpt``           ``{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}``
``alpaca``             ``{"instruction": "...", "input": "...", "output": "...", "system": "..."}``
``prompt_completion``  ``{"prompt": "..." or [messages], "completion": "..." or [messages]}``
``text``               ``{"text": "..."}`` (continued pre-training: no chat template, every token trained)

Every format except ``text`` becomes a conversation (``Example.messages``) rendered later by the
model's chat template; ``prompt_completion`` with a plain string prompt is a one-turn conversation.
Columns a format does not use (``id``, ``language``, ``category``...) are kept in ``Example.meta``.
Every problem raises :class:`DataError` naming ``where`` (e.g. ``train.jsonl, row 12``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from affinage.errors import DataError

Message = dict[str, str]

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
}
"""Accepted speaker names (OpenAI ``role`` and ShareGPT ``from``) and the role each maps to."""


@dataclass
class Example:
    """One training example: a conversation (``messages``) or raw ``text``, never both."""

    messages: list[Message] | None = None
    """Normalised conversation: dicts with exactly ``role`` (system/user/assistant) and ``content``."""
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """Columns the format does not use (language, category, id...), passed through untouched."""

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError("an Example holds either messages or text, exactly one of them")

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(frozen=True)
class FormatSpec:
    name: str
    required: tuple[str, ...]
    """Keys whose presence identifies the format (checked in the order of FORMATS)."""
    optional: tuple[str, ...]
    convert: Callable[[dict[str, Any], str, bool], list[Message] | str]
    """``(row, where, require_assistant) -> messages or text``."""

    @property
    def keys(self) -> tuple[str, ...]:
        return self.required + self.optional

    def describe(self) -> str:
        optional = f" (optional: {', '.join(self.optional)})" if self.optional else ""
        return f"{self.name}: {', '.join(self.required)}{optional}"


# ----------------------------------------------------------------------------------------------
# Checks shared by the formats
# ----------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _get(row: dict[str, Any], key: str, where: str) -> Any:
    if key not in row:
        raise DataError(
            f"{where}: missing key '{key}' (the row has: {', '.join(map(str, row)) or 'no keys'})"
        )
    return row[key]


def _text(value: Any, what: str, where: str, *, allow_empty: bool = False) -> str:
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        value = _join_text_parts(value, what, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: {what} must be a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: {what} is empty; remove the row or fill it in")
    return value


def _join_text_parts(parts: list[dict[str, Any]], what: str, where: str) -> str:
    """OpenAI content parts ``[{"type": "text", "text": "..."}]`` -> one string."""
    texts = []
    for part in parts:
        if part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
            raise DataError(
                f"{where}: {what} holds a part of type '{part.get('type')}'; only text parts "
                '({"type": "text", "text": "..."}) are supported'
            )
        texts.append(part["text"])
    return "".join(texts)


def _conversation(value: Any, key: str, where: str) -> list[Message]:
    """Normalise a list of ``{role, content}`` or ``{from, value}`` dicts; roles are mapped by ROLE_ALIASES."""
    if not isinstance(value, list):
        raise DataError(f"{where}: '{key}' must be a list of messages, got {_type_name(value)}")
    if not value:
        raise DataError(f"{where}: '{key}' is an empty list; a conversation needs at least one message")
    messages = []
    for i, message in enumerate(value):
        at = f"'{key}[{i}]'"
        if not isinstance(message, dict):
            raise DataError(
                f"{where}: {at} must be an object with role and content, got {_type_name(message)}"
            )
        role_key, content_key = ("role", "content") if "role" in message else ("from", "value")
        if role_key not in message or content_key not in message:
            raise DataError(
                f"{where}: {at} needs the keys role and content (or from and value); "
                f"it has: {', '.join(map(str, message)) or 'no keys'}"
            )
        raw_role = message[role_key]
        role = ROLE_ALIASES.get(raw_role.strip().lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise DataError(
                f"{where}: {at} has unknown {role_key} {raw_role!r}; use one of: {', '.join(ROLE_ALIASES)}"
            )
        content = _text(message[content_key], f"the content of {at}", where)
        messages.append({"role": role, "content": content})
    return messages


def _check_conversation(messages: list[Message], key: str, where: str, require_assistant: bool) -> None:
    if messages[0]["role"] == "assistant":
        raise DataError(
            f"{where}: the conversation starts with an assistant message; "
            "start it with a user message (after an optional system message)"
        )
    for i, message in enumerate(messages):
        if message["role"] == "system" and i > 0:
            raise DataError(
                f"{where}: '{key}[{i}]' is a system message after the start; "
                "a system message may only come first"
            )
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(
            f"{where}: the conversation has no assistant turn, so there is nothing to learn; "
            "every conversation needs at least one assistant answer"
        )


def _with_system(messages: list[Message], row: dict[str, Any], where: str) -> list[Message]:
    """Prepend a row-level ``system`` column (ShareGPT and Alpaca variants carry one)."""
    system = row.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return messages
    system = _text(system, "'system'", where)
    if messages and messages[0]["role"] == "system":
        raise DataError(f"{where}: both a 'system' column and a system message; keep only one")
    return [{"role": "system", "content": system}, *messages]


# ----------------------------------------------------------------------------------------------
# Format handlers
# ----------------------------------------------------------------------------------------------


def _from_messages(row: dict[str, Any], where: str, require_assistant: bool) -> list[Message]:
    messages = _conversation(_get(row, "messages", where), "messages", where)
    _check_conversation(messages, "messages", where, require_assistant)
    return messages


def _from_sharegpt(row: dict[str, Any], where: str, require_assistant: bool) -> list[Message]:
    messages = _conversation(_get(row, "conversations", where), "conversations", where)
    messages = _with_system(messages, row, where)
    _check_conversation(messages, "conversations", where, require_assistant)
    return messages


def _from_alpaca(row: dict[str, Any], where: str, require_assistant: bool) -> list[Message]:
    instruction = _text(_get(row, "instruction", where), "'instruction'", where)
    extra = row.get("input")
    extra = "" if extra is None else _text(extra, "'input'", where, allow_empty=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "user", "content": user}]
    if require_assistant or row.get("output") is not None:
        messages.append(
            {"role": "assistant", "content": _text(_get(row, "output", where), "'output'", where)}
        )
    return _with_system(messages, row, where)


def _from_prompt_completion(row: dict[str, Any], where: str, require_assistant: bool) -> list[Message]:
    prompt = _get(row, "prompt", where)
    if isinstance(prompt, list):
        messages = _conversation(prompt, "prompt", where)
    else:
        messages = [{"role": "user", "content": _text(prompt, "'prompt'", where)}]
    completion = _get(row, "completion", where) if require_assistant else row.get("completion")
    if isinstance(completion, list):
        answer = _conversation(completion, "completion", where)
        if any(m["role"] != "assistant" for m in answer):
            raise DataError(f"{where}: every message of 'completion' must have the role assistant")
        messages.extend(answer)
    elif completion is not None or require_assistant:
        messages.append({"role": "assistant", "content": _text(completion, "'completion'", where)})
    _check_conversation(messages, "prompt", where, require_assistant)
    return messages


def _from_text(row: dict[str, Any], where: str, require_assistant: bool) -> str:
    return _text(_get(row, "text", where), "'text'", where)


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec("messages", ("messages",), (), _from_messages),
        FormatSpec("sharegpt", ("conversations",), ("system",), _from_sharegpt),
        FormatSpec("alpaca", ("instruction", "output"), ("input", "system"), _from_alpaca),
        FormatSpec("prompt_completion", ("prompt", "completion"), (), _from_prompt_completion),
        FormatSpec("text", ("text",), (), _from_text),
    )
}
"""Format name -> spec. Detection tries them in this order; the first whose required keys are all present wins."""


def format_matches(row: dict[str, Any], fmt: str) -> bool:
    """Whether ``row`` has the keys format ``fmt`` requires."""
    return all(key in row for key in FORMATS[fmt].required)


def detect_format(row: dict[str, Any], where: str = "row") -> str:
    """Return the name of the first format whose required keys ``row`` has, or raise DataError."""
    for name in FORMATS:
        if format_matches(row, name):
            return name
    keys = ", ".join(map(str, row)) or "no keys"
    expected = "; ".join(spec.describe() for spec in FORMATS.values())
    hint = ""
    if "chosen" in row and "rejected" in row:
        hint = " Rows with chosen/rejected are preference pairs: they belong to the rm or dpo stages."
    raise DataError(
        f"{where}: cannot tell the data format from the keys ({keys}). Expected keys per format: {expected}.{hint}"
    )


def to_example(row: dict[str, Any], fmt: str, where: str, *, require_assistant: bool = True) -> Example:
    """Validate ``row`` in format ``fmt`` (or ``"auto"``) and convert it into an :class:`Example`.

    ``require_assistant=False`` accepts prompt-only conversations (for generation and evaluation);
    training data needs at least one assistant answer.
    """
    if fmt == "auto":
        fmt = detect_format(row, where)
    spec = FORMATS.get(fmt)
    if spec is None:
        raise DataError(f"{where}: unknown data format '{fmt}'; choose one of: auto, {', '.join(FORMATS)}")
    converted = spec.convert(row, where, require_assistant)
    meta = {key: value for key, value in row.items() if key not in spec.keys}
    if isinstance(converted, str):
        return Example(text=converted, meta=meta)
    return Example(messages=converted, meta=meta)
