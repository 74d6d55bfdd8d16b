"""Tiny models and tokenizers built in memory, for tests and examples that must not download."""

from affinage.testing.tiny import CHATML_TEMPLATE, make_tiny_model, make_tiny_tokenizer, sharpen_weights

__all__ = ["CHATML_TEMPLATE", "make_tiny_model", "make_tiny_tokenizer", "sharpen_weights"]
