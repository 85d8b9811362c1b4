"""KTO: learn from unpaired thumbs-up / thumbs-down feedback (Ethayarajh et al. 2024,
"KTO: Model Alignment as Prospect Theoretic Optimization").

    r(x, y) = log pi(y|x) - log pi_ref(y|x)
    z0      = max(0, mean over the batch of r(x_i, y_j)), j != i     (a KL estimate, no gradient)
    L(x, y) = w_D * (1 - sigmoid(beta * (r - z0)))   if y is desirable
              w_U * (1 - sigmoid(beta * (z0 - r)))   if y is undesirable

z0 is measured on mismatched pairs: prompt i with the completion of example i+1
in the same micro-batch. Matched and mismatched rows go through ONE forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from whetstone.data.dataset import DataStats
from whetstone.data.records import Record
from whetstone.errors import WhetstoneError
from whetstone.objectives.base import LossOutput, Objective
from whetstone.objectives.logprobs import (
    Completion,
    Reference,
    build_reference,
    pad_rows,
    render_completion,
    sequence_logprobs,
)


def kto_loss(rewards: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """Per-example KTO loss (B,) from log-ratios `rewards` (B,), labels `desirable` (B,) bool and the KL estimate z0."""
    kl = kl.detach().clamp(min=0)
    desirable_loss = desirable_weight * (1 - torch.sigmoid(beta * (rewards - kl)))
    undesirable_loss = undesirable_weight * (1 - torch.sigmoid(beta * (kl - rewards)))
    return torch.where(desirable, desirable_loss, undesirable_loss)


@dataclass
class FeedbackExample:
    completion: Completion
    desirable: bool

    @property
    def input_ids(self) -> list[int]:
        return self.completion.input_ids


@dataclass
class FeedbackSet:
    examples: list[FeedbackExample]
    origins: list[str]
    tasks: list[str | None]

    def __len__(self) -> int:
        return len(self.examples)


def prepare_feedback(records: list[Record], tokenizer, cfg, stats: DataStats | None = None) -> FeedbackSet:
    out = FeedbackSet([], [], [])
    for record in records:
        if record.kind != "feedback":
            raise WhetstoneError(
                f"{record.origin}: a {record.kind} record cannot train kto; each record needs 'prompt', "
                f"'completion' and a boolean 'label' (format 'kto')."
            )
        completion = render_completion(tokenizer, record.messages, record.completion, cfg.max_length)
        if stats is not None:
            stats.truncated += completion.truncated
        if completion.n_supervised == 0:
            if stats is not None:
                stats.dropped_no_labels += 1
            continue
        out.examples.append(FeedbackExample(completion, bool(record.label)))
        out.origins.append(record.origin)
        out.tasks.append(record.task)
        if stats is not None:
            stats.supervised_tokens += completion.n_supervised
            stats.tokens += len(completion.input_ids)
    return out


def collate_feedback(examples: list[FeedbackExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows 0..B-1: prompt i + its completion. Rows B..2B-1: prompt i + completion i+1 (for z0)."""
    n = len(examples)
    rows = [(e.completion.input_ids, e.completion.labels) for e in examples]
    for i, example in enumerate(examples):
        other = examples[(i + 1) % n].completion
        mismatched = Completion(example.completion.prompt_ids, other.completion_ids, other.completion_labels, False)
        rows.append((mismatched.input_ids, mismatched.labels))
    batch = pad_rows(rows, pad_id)  # (2B, T) each
    batch["desirable"] = torch.tensor([e.desirable for e in examples], dtype=torch.bool)  # (B,)
    return batch


def count_examples(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["desirable"].shape[0])


@dataclass
class KTOContext:
    reference: Reference
    beta: float
    desirable_weight: float
    undesirable_weight: float


def setup_kto(model, config, train_set, eval_set=None) -> KTOContext:
    obj = config.objective
    return KTOContext(build_reference(model), obj.beta, obj.desirable_weight, obj.undesirable_weight)


def feedback_loss(model, batch: dict[str, torch.Tensor], context: KTOContext) -> LossOutput:
    n = count_examples(batch)
    logps, _ = sequence_logprobs(model, batch)  # (2B,)
    ref_logps, _ = context.reference.logprobs(model, batch)  # (2B,)
    ratios = logps - ref_logps
    rewards, kl = ratios[:n], ratios[n:].mean()
    desirable = batch["desirable"]
    losses = kto_loss(rewards, desirable, kl, context.beta, context.desirable_weight, context.undesirable_weight)
    # Ranked right when a desirable answer's reward is above z0 and an undesirable one's below (ties: one half).
    gap = (rewards.detach() - kl.detach().clamp(min=0)) * torch.where(desirable, 1.0, -1.0)
    metrics = {
        "accuracy": float(((gap > 0).float() + 0.5 * (gap == 0).float()).sum()),
        "kl": float(kl.detach().clamp(min=0)) * n,
        "rewards/signed": float(context.beta * gap.sum()),
    }
    return LossOutput(loss_sum=losses.sum(), units=n, metrics=metrics)


KTO = Objective(name="kto", prepare=prepare_feedback, collate=collate_feedback, units=count_examples,
                loss=feedback_loss, setup=setup_kto)
