"""Token batches: which examples make up each optimizer step, and padding them.

The order of examples is a pure function of (seed, epoch), and the examples of
step s are a pure function of the order and s. That is what makes resume exact:
a checkpoint only has to remember the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from whetstone.data.render import IGNORE, Rendered

if TYPE_CHECKING:
    from whetstone.data.mixture import Mixture


@dataclass(frozen=True)
class StepPlan:
    """How n examples map onto optimizer steps, micro-batches and processes."""

    n_examples: int  # examples per epoch: the training set, or a mixture's draws per epoch
    batch_size: int  # per micro-batch, per process
    grad_accum: int
    world_size: int
    total_steps: int
    mixture: Mixture | None = None  # several sources: the epoch's order comes from data/mixture.py
    lengths: list[int] | None = None  # data.group_by_length: tokens of each example, to sort each step by

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.examples_per_step)

    @classmethod
    def build(cls, n_examples: int, batch_size: int, grad_accum: int, world_size: int,
              epochs: float, max_steps: int | None, mixture: Mixture | None = None,
              lengths: list[int] | None = None) -> StepPlan:
        if mixture is not None:
            n_examples = mixture.epoch_size
        per_epoch = math.ceil(n_examples / (batch_size * grad_accum * world_size))
        total = max_steps if max_steps is not None else max(1, math.ceil(epochs * per_epoch))
        return cls(n_examples, batch_size, grad_accum, world_size, total, mixture, lengths)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def micro_batches(self, step: int, seed: int, rank: int = 0) -> list[list[int]]:
        """Example indices of each micro-batch that `rank` runs at optimizer `step`."""
        epoch = self.epoch_of(step)
        order = self.mixture.epoch_order(seed, epoch) if self.mixture else epoch_order(self.n_examples, seed, epoch)
        i = step % self.steps_per_epoch
        chunk = order[i * self.examples_per_step : (i + 1) * self.examples_per_step]
        if self.lengths is not None:
            # Same examples in the step, longest first, so each micro-batch (and process) pads to a similar length.
            # sorted() is stable: the order stays a pure function of (seed, step), and resume stays exact.
            chunk = sorted(chunk, key=lambda index: -self.lengths[index])
        span = self.batch_size * self.world_size
        out = []
        for m in range(self.grad_accum):
            micro = chunk[m * span : (m + 1) * span]
            if micro:
                # Every process runs the same number of micro-batches (DDP needs that), so at the
                # ragged end of an epoch a process's share can be empty.
                out.append(micro[rank * self.batch_size : (rank + 1) * self.batch_size])
        return out


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def example_lengths(examples: list) -> list[int]:
    """Tokens of each example (for a preference pair, its longer row): what data.group_by_length sorts by."""
    return [len(e.input_ids) for e in examples]


def collate(examples: list[Rendered], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Padding has attention 0 and label -100."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return with_distill_mask(batch, examples, [[row] for row in range(len(examples))])


def with_distill_mask(batch: dict[str, torch.Tensor], examples: list[Rendered],
                      rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """Add "distill" (R, T), True on the tokens of data.replay.distill examples, when the batch has any.

    `rows[r]` lists the examples laid out one after another in row r, as the collate function placed them.
    """
    if not any(e.distill for e in examples):
        return batch
    distill = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)  # (R, T)
    for r, members in enumerate(rows):
        start = 0
        for index in members:
            n = len(examples[index].input_ids)
            distill[r, start : start + n] = examples[index].distill
            start += n
    return {**batch, "distill": distill}


def supervised_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry a loss: labels shifted by one, as the objective sees them."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())
