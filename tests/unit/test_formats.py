"""Row formats: detection, conversion into Example, and errors that name the row and the problem."""

from __future__ import annotations

import pytest

from affinage.data.formats import FORMATS, Example, detect_format, to_example
from affinage.errors import DataError

WHERE = "train.jsonl, row 12"

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
]

CASES = [
    (
        "messages",
        {"messages": CONVERSATION, "language": "fr", "id": 7},
        CONVERSATION,
        {"language": "fr", "id": 7},
    ),
    (
        "sharegpt",
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello!"},
            ],
            "category": "greeting",
        },
        CONVERSATION,
        {"category": "greeting"},
    ),
    (
        "sharegpt",
        {
            "system": "Be brief.",
            "conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello!"}],
        },
        CONVERSATION,
        {},
    ),
    (
        "alpaca",
        {"instruction": "Translate", "input": "chat", "output": "cat", "system": "Be brief."},
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Translate\n\nchat"},
            {"role": "assistant", "content": "cat"},
        ],
        {},
    ),
    (
        "alpaca",
        {"instruction": "Say hi", "input": "", "output": "hi", "source": "x"},
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        {"source": "x"},
    ),
    (
        "prompt_completion",
        {"prompt": "2+2?", "completion": "4"},
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        {},
    ),
    (
        "prompt_completion",
        {"prompt": CONVERSATION[:2], "completion": [{"role": "assistant", "content": "Hello!"}]},
        CONVERSATION,
        {},
    ),
]


@pytest.mark.parametrize(("fmt", "row", "messages", "meta"), CASES)
def test_each_chat_format_is_detected_and_converted(fmt, row, messages, meta):
    assert detect_format(row) == fmt
    example = to_example(row, "auto", WHERE)
    assert example.messages == messages
    assert example.text is None
    assert example.meta == meta
    assert to_example(row, fmt, WHERE) == example


def test_text_format():
    row = {"text": "Le fromage affiné.", "lang": "fr"}
    assert detect_format(row) == "text"
    example = to_example(row, "auto", WHERE)
    assert example == Example(text="Le fromage affiné.", meta={"lang": "fr"})
    assert not example.is_chat


def test_content_parts_are_joined():
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
            {"role": "assistant", "content": "Hi"},
        ]
    }
    assert to_example(row, "messages", WHERE).messages[0] == {"role": "user", "content": "Hello"}


def test_prompt_only_rows_are_accepted_when_no_answer_is_required():
    example = to_example({"prompt": "2+2?"}, "prompt_completion", WHERE, require_assistant=False)
    assert example.messages == [{"role": "user", "content": "2+2?"}]


def test_undetectable_row_lists_the_keys_found_and_expected():
    with pytest.raises(DataError) as err:
        detect_format({"question": "q", "answer": "a"}, WHERE)
    message = str(err.value)
    assert WHERE in message and "question, answer" in message
    for name, spec in FORMATS.items():
        assert name in message and spec.required[0] in message


def test_preference_rows_get_a_hint():
    with pytest.raises(DataError, match="preference"):
        detect_format({"chosen": [], "rejected": []}, WHERE)


def _user(content="Hi"):
    return {"role": "user", "content": content}


def _assistant(content="Hello"):
    return {"role": "assistant", "content": content}


@pytest.mark.parametrize(
    ("fmt", "row", "expected"),
    [
        ("messages", {"text": "x"}, "missing key 'messages'"),
        ("messages", {"messages": "Hi"}, "must be a list of messages, got str"),
        ("messages", {"messages": []}, "empty list"),
        ("messages", {"messages": [_user(), "Hello"]}, "'messages[1]' must be an object"),
        (
            "messages",
            {"messages": [_user(), {"role": "assistant"}]},
            "'messages[1]' needs the keys role and content",
        ),
        ("messages", {"messages": [_user(), {"role": "bot", "content": "x"}]}, "unknown role 'bot'"),
        (
            "messages",
            {"messages": [_user(), _assistant(3)]},
            "content of 'messages[1]' must be a string, got int",
        ),
        ("messages", {"messages": [_user(), _assistant("  ")]}, "content of 'messages[1]' is empty"),
        ("messages", {"messages": [_user(), _user()]}, "no assistant turn"),
        ("messages", {"messages": [_assistant(), _user(), _assistant()]}, "starts with an assistant message"),
        (
            "messages",
            {"messages": [_user(), {"role": "system", "content": "x"}, _assistant()]},
            "system message after the start",
        ),
        (
            "sharegpt",
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bard", "value": "x"}]},
            "unknown from 'bard'",
        ),
        ("alpaca", {"instruction": "Do", "output": ""}, "'output' is empty"),
        ("alpaca", {"instruction": "Do", "output": "ok", "input": 3}, "'input' must be a string, got int"),
        ("prompt_completion", {"prompt": "q", "completion": None}, "'completion' must be a string, got null"),
        ("prompt_completion", {"prompt": "q", "completion": [_user()]}, "role assistant"),
        ("text", {"text": ""}, "'text' is empty"),
        ("text", {"text": ["a"]}, "'text' must be a string, got list"),
    ],
)
def test_malformed_rows_name_the_row_and_the_problem(fmt, row, expected):
    with pytest.raises(DataError) as err:
        to_example(row, fmt, WHERE)
    assert WHERE in str(err.value)
    assert expected in str(err.value)


def test_unknown_format_name():
    with pytest.raises(DataError, match="unknown data format 'chatml'"):
        to_example({"text": "x"}, "chatml", WHERE)
