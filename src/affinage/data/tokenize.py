"""From an :class:`Example` to token ids and labels, with assistant-only loss masks.

How the mask is found, without ``{% generation %}`` tags (few templates have them):
for every assistant turn ``i`` the conversation is rendered twice with the model's chat template,

    before_i = render(messages[:i], add_generation_prompt=True)   # ... "<|im_start|>assistant\\n"
    after_i  = render(messages[:i + 1])                           # ... "answer<|im_end|>\\n"

and both must be prefixes of ``full = render(messages)``. The characters ``full[len(before_i):
len(after_i)]`` are the answer and the template's end of turn. Training covers the answer and the
end of turn up to and including the end-of-sequence token (or, when the EOS string does not appear
there, the last special token; when there is no special token at all, the whole end of turn), so the
model learns to stop; the newline ChatML writes after ``<|im_end|>`` and the header
``<|im_start|>assistant\\n`` are not trained. The full render is tokenised once, with
``add_special_tokens=False`` because templates write their own BOS, and a token is trained when its
character offsets overlap a trained span. Tokenisers without offsets (slow ones) fall back to
tokenising the text up to each boundary.

Templates that are not prefix-stable (some strip the reasoning of earlier turns, so rendering the
first turns alone differs from the start of the whole conversation): the example falls back to
training the final assistant turn only, when that turn can still be located, and says so in
``TokenizedExample.note`` (the data report counts these). When even that fails, a DataError asks for
another template (``model.chat_template``) or ``data.train_on_prompt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affinage.data.formats import Example, Message
from affinage.errors import ConfigError, DataError

IGNORE_INDEX = -100
"""Label of a token that is not trained (the ``ignore_index`` of ``torch.nn.functional.cross_entropy``)."""

DROP_NO_TRAINABLE = "no trainable token"
DROP_TRUNCATED = "no trainable token left after truncation to max_length"
NOTE_LAST_TURN_ONLY = "chat template not prefix-stable: only the final assistant turn trained"


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    """``input_ids[t]`` where token ``t`` is trained, IGNORE_INDEX elsewhere (not yet shifted)."""
    note: str | None = None
    """Set when the example was built in a degraded way (see NOTE_LAST_TURN_ONLY)."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trainable(self) -> int:
        """Tokens that a shifted next-token loss trains on (the first token is never predicted)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def tokenize_example(
    tokenizer: Any,
    example: Example,
    *,
    max_length: int,
    train_on_prompt: bool = False,
    system_prompt: str | None = None,
    where: str = "example",
    first_trained_message: int = 0,
) -> TokenizedExample | str:
    """Tokenise ``example`` and build its labels; return the reason instead when nothing is trainable.

    Chat examples are rendered with the tokenizer's chat template; ``system_prompt`` is inserted
    first when the conversation has no system message. With ``train_on_prompt`` every token is
    trained, otherwise only the assistant answers and their end-of-turn token. Text examples are
    ``text + eos``, every token trained. Sequences longer than ``max_length`` keep their start.
    ``first_trained_message`` (an index into ``example.messages``) trains only the assistant turns
    from that message on: preference data trains the answer, not the assistant turns of its prompt.
    """
    if example.messages is None:
        assert example.text is not None
        input_ids = _encode(tokenizer, example.text, add_special_tokens=True)
        eos = tokenizer.eos_token_id
        if eos is not None and (not input_ids or input_ids[-1] != eos):
            input_ids.append(eos)
        labels = list(input_ids)
        note = None
    else:
        messages = with_system_prompt(example.messages, system_prompt)
        first = first_trained_message + len(messages) - len(example.messages)  # a system prompt shifts turns
        full = render_chat(tokenizer, messages, where=where)
        if train_on_prompt:
            spans, note = [(0, len(full))], None
        else:
            spans, note = _assistant_spans(tokenizer, messages, full, where, first)
        input_ids, labels = _labels_from_spans(tokenizer, full, spans)
    return _truncate(TokenizedExample(input_ids, labels, note), max_length)


def with_system_prompt(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """``messages`` with ``system_prompt`` first, unless there is no prompt or a system message already."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def render_chat(
    tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool = False, where: str = "example"
) -> str:
    """The chat template applied to ``messages``, as text; clear errors for a missing or failing template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"{where} is a conversation, but the tokenizer has no chat template to render it. "
            "Set model.chat_template (e.g. model.chat_template=chatml), or use text-format data."
        )
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as exc:
        raise DataError(f"{where}: the chat template rejected this conversation: {exc}") from None


def encode_prompt(tokenizer: Any, messages: list[Message], *, system_prompt: str | None = None) -> list[int]:
    """Token ids of ``messages`` followed by the generation prompt (the assistant header), for generation."""
    messages = with_system_prompt(messages, system_prompt)
    text = render_chat(tokenizer, messages, add_generation_prompt=True)
    return _encode(tokenizer, text, add_special_tokens=False)


# ----------------------------------------------------------------------------------------------
# Locating the assistant answers
# ----------------------------------------------------------------------------------------------


def _assistant_spans(
    tokenizer: Any, messages: list[Message], full: str, where: str, first: int = 0
) -> tuple[list[tuple[int, int]], str | None]:
    """Character spans of ``full`` to train: each assistant answer (from message ``first`` on) and its end-of-turn token."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= first]
    if not turns:
        raise DataError(f"{where}: the conversation has no assistant turn, so there is nothing to train on")
    spans = [_turn_span(tokenizer, messages, full, i) for i in turns]
    if all(span is not None for span in spans):
        return spans, None  # type: ignore[return-value]
    last = spans[-1]
    if last is not None:
        return [last], NOTE_LAST_TURN_ONLY
    raise DataError(
        f"{where}: the chat template does not render conversations prefix-stably (rendering the first "
        "messages alone does not give the start of the whole conversation), so the assistant answers "
        "cannot be located for the loss mask. Set model.chat_template (e.g. chatml), or set "
        "data.train_on_prompt=true to train on every token."
    )


def _turn_span(tokenizer: Any, messages: list[Message], full: str, i: int) -> tuple[int, int] | None:
    from jinja2 import TemplateError

    try:
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        after = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, add_generation_prompt=False)
    except (TemplateError, ValueError):  # e.g. a template that refuses a conversation ending with a user turn
        return None
    if not (full.startswith(before) and full.startswith(after) and len(after) > len(before)):
        return None
    start, end = len(before), len(after)
    return start, start + _trained_length(tokenizer, full[start:end])


def _trained_length(tokenizer: Any, segment: str) -> int:
    """How much of ``segment`` (answer + end of turn) to train: up to the EOS, else the last special token."""
    eos = tokenizer.eos_token
    if eos and (found := segment.rfind(eos)) >= 0:
        return found + len(eos)
    ends = [segment.rfind(tok) + len(tok) for tok in _special_tokens(tokenizer) if tok and tok in segment]
    return max(ends) if ends else len(segment)


def _special_tokens(tokenizer: Any) -> set[str]:
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens.update(tok.content for tok in decoder.values() if getattr(tok, "special", False))
    return tokens


# ----------------------------------------------------------------------------------------------
# Tokens and labels
# ----------------------------------------------------------------------------------------------


def _encode(tokenizer: Any, text: str, *, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _labels_from_spans(
    tokenizer: Any, text: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Tokenise ``text``; a token is trained when its characters overlap one of ``spans`` (sorted, disjoint)."""
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids, offsets = list(encoding["input_ids"]), encoding["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return _labels_by_prefixes(tokenizer, text, spans)
    labels = [IGNORE_INDEX] * len(input_ids)
    k = 0
    for t, (start, end) in enumerate(offsets):
        end = max(end, start + 1)  # a zero-width token belongs where it stands
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        if k == len(spans):
            break
        if spans[k][0] < end:
            labels[t] = input_ids[t]
    return input_ids, labels


def _labels_by_prefixes(
    tokenizer: Any, text: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Slow-tokenizer fallback: a character boundary maps to the token count of the text before it."""
    input_ids = _encode(tokenizer, text, add_special_tokens=False)
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in spans:
        first = len(_encode(tokenizer, text[:start], add_special_tokens=False))
        last = len(_encode(tokenizer, text[:end], add_special_tokens=False))
        for t in range(first, min(last, len(input_ids))):
            labels[t] = input_ids[t]
    return input_ids, labels


def _truncate(example: TokenizedExample, max_length: int) -> TokenizedExample | str:
    truncated = len(example.input_ids) > max_length
    if truncated:
        example = TokenizedExample(example.input_ids[:max_length], example.labels[:max_length], example.note)
    if example.num_trainable == 0:
        return DROP_TRUNCATED if truncated else DROP_NO_TRAINABLE
    return example
