"""Which examples go into which micro-batch, on which process, at which optimizer step.

One optimizer step consumes a *global batch* of ``batch_size * grad_accum * world_size`` examples,
drawn in order from a permutation of the dataset that depends only on the seed and the epoch. The
plan is a pure function of the step number, so resuming at step k reads exactly the examples an
uninterrupted run would have read, and 1 process with batch 4 sees the same global batches as 2
processes with batch 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from affinage.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    num_examples: int
    batch_size: int
    grad_accum: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.num_examples < self.global_batch_size:
            raise ConfigError(
                f"the training set has {self.num_examples} examples, fewer than one global batch "
                f"(train.batch_size={self.batch_size} x train.grad_accum={self.grad_accum} x "
                f"{self.world_size} process(es) = {self.global_batch_size}); lower train.batch_size or "
                "train.grad_accum, or add data"
            )

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        # The last incomplete global batch of each epoch is dropped so every step has the same size.
        return self.num_examples // self.global_batch_size

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        if max_steps is not None:
            return max_steps
        return max(1, math.ceil(epochs * self.steps_per_epoch))

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def global_batch(self, step: int) -> list[int]:
        """Indices of every example used at optimizer step ``step`` (0-based), in order."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        start = offset * self.global_batch_size
        return self._permutation(epoch)[start : start + self.global_batch_size]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """The ``grad_accum`` micro-batches of process ``rank`` at step ``step``."""
        indices = self.global_batch(step)
        per_micro = self.batch_size * self.world_size
        out = []
        for m in range(self.grad_accum):
            chunk = indices[m * per_micro : (m + 1) * per_micro]
            out.append(chunk[rank * self.batch_size : (rank + 1) * self.batch_size])
        return out
