"""Batches of tokenised examples: padded ``[B, T]`` or packed padding-free ``[1, sum(T_i)]``.

Padding is told apart by the attention mask, never by comparing ids with ``pad_token_id``: many
models (SmolLM2, the tiny test tokenizer) pad with their EOS token, and the EOS that closes every
answer must keep its label.

Packing puts the examples of a micro-batch end to end in one row with ``position_ids`` restarting at
0 for each example and no ``attention_mask``: transformers then builds a block-diagonal causal mask
from the position ids (``masking_utils.find_packed_sequence_indices``), so no token attends across
examples. That detection is skipped when a KV cache exists, so call the model with
``use_cache=False`` (the default ``config.use_cache=True`` would create one). The label of the first
token of every example is IGNORE_INDEX, so the shifted loss never predicts an example's first token
from the end of the previous one; since the first label of an example is never used by a shifted
loss anyway, a packed batch trains exactly the tokens of the same examples padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from affinage.data.tokenize import IGNORE_INDEX, TokenizedExample


def collate_padded(
    batch: Sequence[TokenizedExample],
    pad_token_id: int,
    *,
    pad_to_multiple_of: int | None = None,
    padding_side: Literal["right", "left"] = "right",
) -> dict[str, torch.Tensor]:
    """Pad to the longest example (rounded up to ``pad_to_multiple_of``): input_ids, attention_mask, labels ``[B, T]``."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    length = max(len(ex) for ex in batch)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex)
        cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
        input_ids[row, cols] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[row, cols] = torch.tensor(ex.labels, dtype=torch.long)
        attention_mask[row, cols] = 1
    # Already IGNORE_INDEX by construction; kept explicit because this is the invariant that matters.
    labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_packed(batch: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
    """Concatenate ``batch`` into one row: input_ids, labels, position_ids ``[1, sum(T_i)]``; no attention_mask."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for ex in batch:
        input_ids.extend(ex.input_ids)
        labels.append(IGNORE_INDEX)  # never predict an example's first token from the previous example
        labels.extend(ex.labels[1:])
        position_ids.extend(range(len(ex)))
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([position_ids], dtype=torch.long),
    }


def num_trainable_tokens(labels: torch.Tensor) -> int:
    """Labels a shifted next-token loss uses: ``labels[..., 1:] != IGNORE_INDEX``, counted.

    The recipe divides the summed loss by the global count of these (over accumulation steps and
    ranks), so every trained token weighs the same whatever the batch it lands in.
    """
    return int((labels[..., 1:] != IGNORE_INDEX).sum().item())
