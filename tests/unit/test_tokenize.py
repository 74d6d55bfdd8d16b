"""Chat templates and loss masks: exactly the assistant answers and their end-of-turn token are trained."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from affinage.data.formats import Example
from affinage.data.tokenize import (
    DROP_NO_TRAINABLE,
    DROP_TRUNCATED,
    IGNORE_INDEX,
    NOTE_LAST_TURN_ONLY,
    _labels_by_prefixes,
    _labels_from_spans,
    encode_prompt,
    tokenize_example,
)
from affinage.errors import ConfigError, DataError
from affinage.testing import make_tiny_tokenizer

TWO_TURNS = [
    {"role": "system", "content": "You help with cheese."},
    {"role": "user", "content": "question1"},
    {"role": "assistant", "content": "answer1"},
    {"role": "user", "content": "question2 affiné"},
    {"role": "assistant", "content": "answer2 é"},
]


def trained_spans(tokenizer, tokenized) -> list[str]:
    """Decode each maximal run of trained positions."""
    spans, current = [], []
    for token, label in zip(tokenized.input_ids, tokenized.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(s) for s in spans]


def test_loss_mask_trains_exactly_the_answers_and_their_end_token(tiny_tokenizer):
    result = tokenize_example(tiny_tokenizer, Example(messages=TWO_TURNS), max_length=1024)
    assert trained_spans(tiny_tokenizer, result) == ["answer1<|im_end|>", "answer2 é<|im_end|>"]
    rendered = tiny_tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    assert tiny_tokenizer.decode(result.input_ids) == rendered
    assert result.input_ids == tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert result.note is None
    assert result.num_trainable == len("answer1") + len("answer2 é".encode()) + 2


def test_train_on_prompt_trains_every_token(tiny_tokenizer):
    result = tokenize_example(
        tiny_tokenizer, Example(messages=TWO_TURNS), max_length=1024, train_on_prompt=True
    )
    assert result.labels == result.input_ids


def test_text_is_followed_by_eos_and_fully_trained(tiny_tokenizer):
    result = tokenize_example(tiny_tokenizer, Example(text="Comté"), max_length=1024)
    assert result.input_ids == [*tiny_tokenizer("Comté")["input_ids"], tiny_tokenizer.eos_token_id]
    assert result.labels == result.input_ids


def test_system_prompt_is_inserted_only_when_missing(tiny_tokenizer):
    without = Example(messages=TWO_TURNS[1:3])
    result = tokenize_example(tiny_tokenizer, without, max_length=1024, system_prompt="SYS")
    assert tiny_tokenizer.decode(result.input_ids).startswith(
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user"
    )
    result = tokenize_example(
        tiny_tokenizer, Example(messages=TWO_TURNS), max_length=1024, system_prompt="SYS"
    )
    assert "SYS" not in tiny_tokenizer.decode(result.input_ids)


def test_truncation_keeps_the_start(tiny_tokenizer):
    full = tokenize_example(tiny_tokenizer, Example(messages=TWO_TURNS), max_length=1024)
    cut = len(full) - 6
    result = tokenize_example(tiny_tokenizer, Example(messages=TWO_TURNS), max_length=cut)
    assert result.input_ids == full.input_ids[:cut]
    assert result.labels == full.labels[:cut]


def test_truncation_that_leaves_no_trainable_token_is_dropped_with_a_reason(tiny_tokenizer):
    messages = [{"role": "user", "content": "a long question " * 10}, {"role": "assistant", "content": "yes"}]
    assert tokenize_example(tiny_tokenizer, Example(messages=messages), max_length=64) == DROP_TRUNCATED


def test_single_token_text_without_eos_has_nothing_to_train():
    tokenizer = make_tiny_tokenizer()
    tokenizer.eos_token = None
    assert tokenize_example(tokenizer, Example(text="a"), max_length=8) == DROP_NO_TRAINABLE


def test_chat_data_without_chat_template_says_how_to_fix_it():
    tokenizer = make_tiny_tokenizer(chat_template=None)
    with pytest.raises(ConfigError, match=r"model\.chat_template"):
        tokenize_example(tokenizer, Example(messages=TWO_TURNS), max_length=1024, where="a.jsonl, row 3")


def test_end_of_turn_token_other_than_eos_is_trained():
    template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|endoftext|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tokenizer = make_tiny_tokenizer(chat_template=template)
    result = tokenize_example(tokenizer, Example(messages=TWO_TURNS), max_length=1024)
    assert trained_spans(tokenizer, result) == ["answer1<|endoftext|>", "answer2 é<|endoftext|>"]


def test_template_that_hides_earlier_answers_falls_back_to_the_last_turn():
    # Like templates that strip the reasoning of earlier turns: an answer renders differently
    # once a later turn follows it, so only the final answer can be located.
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}{% endif %}"
        "<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer = make_tiny_tokenizer(chat_template=template)
    result = tokenize_example(tokenizer, Example(messages=TWO_TURNS), max_length=1024)
    assert trained_spans(tokenizer, result) == ["answer2 é<|im_end|>"]
    assert result.note == NOTE_LAST_TURN_ONLY


def test_template_that_is_never_prefix_stable_is_an_error():
    template = (
        "{{ messages | length }}\n{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>' }}"
        "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tokenizer = make_tiny_tokenizer(chat_template=template)
    with pytest.raises(DataError, match=r"a\.jsonl, row 3: .*prefix-stably.*model\.chat_template"):
        tokenize_example(tokenizer, Example(messages=TWO_TURNS), max_length=1024, where="a.jsonl, row 3")
    result = tokenize_example(tokenizer, Example(messages=TWO_TURNS), max_length=1024, train_on_prompt=True)
    assert result.labels == result.input_ids


def test_prefix_tokenisation_fallback_agrees_with_offsets(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    answers = [m["content"] + "<|im_end|>" for m in TWO_TURNS if m["role"] == "assistant"]
    spans = [(text.index(a), text.index(a) + len(a)) for a in answers]
    assert _labels_by_prefixes(tiny_tokenizer, text, spans) == _labels_from_spans(tiny_tokenizer, text, spans)


def test_encode_prompt_ends_with_the_generation_header(tiny_tokenizer):
    ids = encode_prompt(tiny_tokenizer, TWO_TURNS[1:2], system_prompt="SYS")
    assert tiny_tokenizer.decode(ids) == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nquestion1<|im_end|>\n<|im_start|>assistant\n"
    )


def _smollm2_dir() -> Path | None:
    home = os.environ.get("AFFINAGE_HOME")
    path = Path(home) / "models" / "smollm2-135m-instruct" if home else None
    return path if path is not None and (path / "tokenizer_config.json").exists() else None


@pytest.mark.skipif(
    _smollm2_dir() is None, reason="SmolLM2 not at $AFFINAGE_HOME/models/smollm2-135m-instruct"
)
@pytest.mark.parametrize("messages", [TWO_TURNS, TWO_TURNS[1:]], ids=["system", "default-system"])
def test_real_smollm2_tokenizer(messages):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_smollm2_dir())
    result = tokenize_example(tokenizer, Example(messages=messages), max_length=1024)
    reference = tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert result.input_ids == reference  # rendering then tokenising matches, BOS not doubled
    assert result.input_ids[:2] != [result.input_ids[0]] * 2
    assert trained_spans(tokenizer, result) == ["answer1<|im_end|>", "answer2 é<|im_end|>"]
    assert result.note is None
