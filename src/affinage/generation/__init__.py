"""Batched generation for chat, evaluation and RL rollouts; streaming for the terminal chat."""

from affinage.generation.sampling import (
    GenerationOptions,
    end_of_turn_token_ids,
    generate,
    generate_ids,
    render_prompt,
    stop_token_ids,
    stream_chat,
)

__all__ = [
    "GenerationOptions",
    "end_of_turn_token_ids",
    "generate",
    "generate_ids",
    "render_prompt",
    "stop_token_ids",
    "stream_chat",
]
