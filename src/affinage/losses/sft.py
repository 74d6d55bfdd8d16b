"""The supervised fine-tuning loss: token cross-entropy, summed, for global-count normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Targets for next-token prediction: position t predicts label t+1.  [B, T] -> [B, T-1]"""
    return labels[:, 1:]


def trainable_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t (0-based, < T-1) whose next token is trained in at least one row.  -> [P]

    Only these positions need logits; under assistant-only masking that skips the output head and
    the softmax over the vocabulary for every prompt and padding token.
    """
    return (shifted_targets(labels) != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def token_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ``-log p(target)`` over targets that are not ``IGNORE_INDEX``, and their count.

    ``logits`` [..., V] and ``targets`` [...] are aligned (already shifted). The sum is computed in
    fp32 whatever the model dtype. Dividing by a *global* token count (over all micro-batches and
    processes of one optimizer step) rather than per micro-batch makes gradient accumulation and
    data parallelism exact: the gradient equals that of one big batch.
    """
    targets = targets.reshape(-1)
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss_sum, (targets != IGNORE_INDEX).sum()
