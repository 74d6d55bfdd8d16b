"""Data: reading files, row formats, chat templates and loss masks, batching, SFT loading."""

from affinage.data.collate import collate_packed, collate_padded, num_trainable_tokens
from affinage.data.formats import FORMATS, Example, detect_format, to_example
from affinage.data.io import read_rows, stable_fraction, write_jsonl
from affinage.data.sft import DataReport, FileReport, SFTData, load_sft_data
from affinage.data.tokenize import (
    IGNORE_INDEX,
    TokenizedExample,
    encode_prompt,
    render_chat,
    tokenize_example,
)

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "DataReport",
    "Example",
    "FileReport",
    "SFTData",
    "TokenizedExample",
    "collate_packed",
    "collate_padded",
    "detect_format",
    "encode_prompt",
    "load_sft_data",
    "num_trainable_tokens",
    "read_rows",
    "render_chat",
    "stable_fraction",
    "to_example",
    "tokenize_example",
    "write_jsonl",
]
