"""Reward functions for the RL examples (``reward.sources: [{function: examples/rewards.py:NAME}]``).

A reward function takes ``(prompt, completion)`` or ``(prompt, completion, row)`` and returns a
number: ``prompt`` is the last user message, ``completion`` the model's answer (special tokens and
stop strings removed) and ``row`` the data row of the prompt (here its reference ``answer``).
Answers cut at ``rollout.max_new_tokens`` without ending get ``reward.unfinished_penalty`` on top.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d+")


def short_and_correct(prompt: str, completion: str, row: dict) -> float:
    """The arithmetic toy task of examples/grpo.yaml: 1 for the right number in an answer of at most
    8 words, 0.5 for the right number in a longer one, 0 otherwise. Verifiable: no reward model."""
    numbers = _NUMBER.findall(completion)
    if str(row["answer"]) not in numbers:
        return 0.0
    return 1.0 if len(completion.split()) <= 8 else 0.5


def uses_word(prompt: str, completion: str, row: dict) -> float:
    """1 when the answer contains the row's ``word`` (case-insensitive), else 0."""
    return 1.0 if str(row["word"]).lower() in completion.lower() else 0.0


def brevity(prompt: str, completion: str) -> float:
    """Prefers answers of at most 60 words, decreasing linearly to 0 at 180 words."""
    words = len(completion.split())
    return 1.0 if words <= 60 else max(0.0, 1.0 - (words - 60) / 120)
