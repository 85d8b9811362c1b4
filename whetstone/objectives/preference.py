"""The DPO family: learn from preference pairs (prompt x, chosen y_w, rejected y_l) without a reward model.

Every loss is a small pure function over sequence log-probabilities in the
`LOSSES` registry; `objective.loss` picks one. With

    h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]

the implicit reward of an answer is beta * (log pi - log pi_ref) (beta * log pi
for the reference-free losses), and a pair is ranked correctly when the chosen
answer's reward is the higher one. Chosen and rejected answers go through the
model in ONE forward pass: the batch is [chosen rows; rejected rows], or, with
data.packing, the same sequences packed into rows (example_ids numbers them so).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from whetstone.data.dataset import DataStats
from whetstone.data.packing import pack_sequences, pack_shared_prompts
from whetstone.data.records import Record
from whetstone.errors import WhetstoneError
from whetstone.methods import is_adapter_model
from whetstone.models.forward import LOGIT_CHUNK
from whetstone.objectives.base import LossOutput, Objective
from whetstone.objectives.logprobs import (
    Completion,
    Reference,
    build_reference,
    pad_rows,
    render_completion,
    sequence_logprobs,
)

# ---------------------------------------------------------------------------
# The losses. Each maps per-pair log-probs (B,) to per-pair losses (B,).


def sigmoid_loss(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0, margin=0.0):
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization"), with cDPO label smoothing.

        L = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

    eps = 0 is DPO. eps > 0 is conservative DPO (Mitchell 2023, "A note on DPO
    with noisy preferences"): each label is assumed flipped with probability eps.
    """
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0, margin=0.0):
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences").

        L = (h - 1 / (2 * beta))^2

    A squared loss that pulls the log-ratio gap to a finite target instead of
    pushing it to infinity, so it does not overfit deterministic preferences.
    By default the log-probs are averaged per token, which the IPO authors confirmed
    their reported results use (see TRL's implementation); summed h makes the
    target 1 / (2 beta) depend on the answers' lengths.
    """
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    return (h - 1 / (2 * beta)) ** 2


def hinge_loss(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0, margin=0.0):
    """SLiC hinge (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback").

        L = max(0, 1 - beta * h)

    as in RSO (Liu et al. 2023), where beta is 1 / (the SLiC margin delta).
    """
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    return torch.relu(1 - beta * h)


def simpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0, margin=0.0):
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward").

        L = -log sigmoid(beta * (avg log pi(y_w|x) - avg log pi(y_l|x)) - gamma)

    Reference-free; the log-probs are averaged per token (length_normalize) and
    gamma is `objective.margin`, the target reward margin.
    """
    return -F.logsigmoid(beta * (chosen - rejected) - margin)


def orpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0, margin=0.0):
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model").

        L = -avg log pi(y_w|x) - lambda * log sigmoid(log odds(y_w|x) - log odds(y_l|x))
        odds(y|x) = P / (1 - P),  P = exp(avg log pi(y|x))

    Reference-free; the first term is the SFT loss on the chosen answer, lambda is
    `objective.beta`, and the log-probs are averaged per token.
    """
    # log(1 - P) = log1p(-exp(avg)); avg < 0 always, and the clamp keeps exp(avg) < 1 in float32.
    log_odds = (chosen - torch.log1p(-torch.exp(chosen).clamp(max=1 - 1e-6))) - (
        rejected - torch.log1p(-torch.exp(rejected).clamp(max=1 - 1e-6))
    )
    return -chosen - beta * F.logsigmoid(log_odds)


@dataclass(frozen=True)
class PreferenceLoss:
    fn: Callable[..., torch.Tensor]
    reference_free: bool  # the loss needs no pi_ref (and no second forward pass)
    length_normalize: bool  # the paper averages log-probs per token


LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": PreferenceLoss(sigmoid_loss, reference_free=False, length_normalize=False),
    "ipo": PreferenceLoss(ipo_loss, reference_free=False, length_normalize=True),
    "hinge": PreferenceLoss(hinge_loss, reference_free=False, length_normalize=False),
    "simpo": PreferenceLoss(simpo_loss, reference_free=True, length_normalize=True),
    "orpo": PreferenceLoss(orpo_loss, reference_free=True, length_normalize=True),
}


# ---------------------------------------------------------------------------
# Records -> pairs -> batches.


@dataclass
class PairExample:
    chosen: Completion
    rejected: Completion

    @property
    def key(self) -> int:
        """Identifies the pair by its tokens (for precomputed reference log-probs); stable across processes."""
        return hash((tuple(self.chosen.input_ids), tuple(self.rejected.input_ids)))

    @property
    def input_ids(self) -> list[int]:
        """The longer of the two rows; evaluation sorts examples by its length."""
        return max(self.chosen.input_ids, self.rejected.input_ids, key=len)


@dataclass
class PairSet:
    examples: list[PairExample]
    origins: list[str]
    tasks: list[str | None]

    def __len__(self) -> int:
        return len(self.examples)


def prepare_pairs(records: list[Record], tokenizer, cfg, stats: DataStats | None = None) -> PairSet:
    """Render each preference record as (prompt + chosen, prompt + rejected) token rows."""
    out = PairSet([], [], [])
    for record in records:
        if record.kind != "preference":
            raise WhetstoneError(
                f"{record.origin}: a {record.kind} record cannot train a preference objective; each record needs "
                f"'prompt', 'chosen' and 'rejected' (format 'preference')."
            )
        chosen = render_completion(tokenizer, record.messages, record.chosen, cfg.max_length)
        rejected = render_completion(tokenizer, record.messages, record.rejected, cfg.max_length)
        if stats is not None:
            stats.truncated += chosen.truncated or rejected.truncated
        if chosen.n_supervised == 0 or rejected.n_supervised == 0:
            if stats is not None:
                stats.dropped_no_labels += 1
            continue
        out.examples.append(PairExample(chosen, rejected))
        out.origins.append(record.origin)
        out.tasks.append(record.task)
        if stats is not None:
            stats.supervised_tokens += chosen.n_supervised + rejected.n_supervised
            stats.tokens += len(chosen.input_ids) + len(rejected.input_ids)
    return out


def collate_pairs(examples: list[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows 0..B-1 are the chosen answers, rows B..2B-1 the rejected ones, padded together."""
    rows = [(e.chosen.input_ids, e.chosen.labels) for e in examples]
    rows += [(e.rejected.input_ids, e.rejected.labels) for e in examples]
    batch = pad_rows(rows, pad_id)  # (2B, T) each
    batch["pair_key"] = torch.tensor([e.key for e in examples], dtype=torch.long)  # (B,)
    return batch


def collate_pairs_packed(examples: list[PairExample], pad_id: int, max_length: int | None) -> dict[str, torch.Tensor]:
    """collate_pairs' sequences (chosen 0..B-1, rejected B..2B-1, numbered so by example_ids), packed into rows."""
    sequences = [(e.chosen.input_ids, e.chosen.labels) for e in examples]
    sequences += [(e.rejected.input_ids, e.rejected.labels) for e in examples]
    batch, _ = pack_sequences(sequences, pad_id, max_length)
    batch["pair_key"] = torch.tensor([e.key for e in examples], dtype=torch.long)  # (B,)
    return batch


def collate_pairs_shared(examples: list[PairExample], pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """collate_pairs_packed with each pair's common prompt read once (objective.share_prompt; data/packing.py)."""
    batch = pack_shared_prompts([(e.chosen.input_ids, e.chosen.labels, e.rejected.input_ids, e.rejected.labels)
                                 for e in examples], pad_id, max_length)
    batch["pair_key"] = torch.tensor([e.key for e in examples], dtype=torch.long)  # (B,)
    return batch


def count_pairs(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["pair_key"].shape[0])


def pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """Sums over pairs (the loop logs means): rewards, their margin, and accuracy (a tie counts one half)."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    accuracy = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
    return {
        "rewards/chosen": float(chosen_rewards.sum()),
        "rewards/rejected": float(rejected_rewards.sum()),
        "margin": float((chosen_rewards - rejected_rewards).sum()),
        "accuracy": float(accuracy.sum()),
    }


# ---------------------------------------------------------------------------
# The objective: setup (reference), loss.


@dataclass
class PreferenceContext:
    spec: PreferenceLoss
    beta: float
    label_smoothing: float
    margin: float
    length_normalize: bool
    reference: Reference | None  # None for reference-free losses, and after precomputing
    precomputed: dict[int, tuple[float, float]] | None = None  # pair key -> (ref chosen, ref rejected)
    logit_chunk: int | None = LOGIT_CHUNK  # train.logit_chunk: supervised tokens per chunk of the LM head


def _normalize(logps: torch.Tensor, counts: torch.Tensor, on: bool) -> torch.Tensor:
    return logps / counts.clamp(min=1) if on else logps


def setup_preference(model, config, train_set: PairSet, eval_set: PairSet | None = None) -> PreferenceContext:
    obj = config.objective
    spec = LOSSES[obj.loss]
    normalize = spec.length_normalize if obj.length_normalize is None else obj.length_normalize
    context = PreferenceContext(spec, obj.beta, obj.label_smoothing, obj.margin, normalize, reference=None,
                                logit_chunk=config.train.logit_chunk)
    if spec.reference_free:
        return context
    if not obj.precompute_reference:
        context.reference = build_reference(model)
        return context
    # Before the first step the model IS the reference (or is it once its adapters are off),
    # so no copy is made: full fine-tuning then holds one model in memory, not two.
    reference = Reference(copy=None) if is_adapter_model(model) else Reference(copy=model)
    pairs = list(train_set.examples) + (list(eval_set.examples) if eval_set is not None else [])
    context.precomputed = precompute_reference(model, reference, pairs, config.train.batch_size, normalize)
    return context


@torch.no_grad()
def precompute_reference(model, reference: Reference, pairs: list[PairExample], batch_size: int,
                         normalize: bool) -> dict[int, tuple[float, float]]:
    """Reference log-probs of every pair, by pair key: one pass over the data before training."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[int, tuple[float, float]] = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, 0).items()}
        logps, counts = reference.logprobs(model, batch)
        logps = _normalize(logps, counts, normalize)
        n = len(chunk)
        for i, example in enumerate(chunk):
            out[example.key] = (float(logps[i]), float(logps[n + i]))
    model.train(was_training)
    return out


def _reference_logps(model, batch, context: PreferenceContext) -> tuple[torch.Tensor, torch.Tensor]:
    n = count_pairs(batch)
    if context.precomputed is not None:
        # The keys came from the same pairs in setup; a miss is a bug, not a user error.
        values = [context.precomputed[int(k)] for k in batch["pair_key"]]
        ref = torch.tensor(values, dtype=torch.float32, device=batch["input_ids"].device)  # (B, 2)
        return ref[:, 0], ref[:, 1]
    logps, counts = context.reference.logprobs(model, batch)
    logps = _normalize(logps, counts, context.length_normalize)
    return logps[:n], logps[n:]


def preference_loss(model, batch: dict[str, torch.Tensor], context: PreferenceContext) -> LossOutput:
    n = count_pairs(batch)
    logps, counts = sequence_logprobs(model, batch, context.logit_chunk)  # (2B,): chosen rows, then rejected rows
    logps = _normalize(logps, counts, context.length_normalize)
    chosen, rejected = logps[:n], logps[n:]
    if context.spec.reference_free:
        ref_chosen = ref_rejected = None
        chosen_rewards, rejected_rewards = context.beta * chosen, context.beta * rejected
    else:
        ref_chosen, ref_rejected = _reference_logps(model, batch, context)
        chosen_rewards = context.beta * (chosen - ref_chosen)
        rejected_rewards = context.beta * (rejected - ref_rejected)
    losses = context.spec.fn(chosen, rejected, ref_chosen, ref_rejected, context.beta,
                             context.label_smoothing, context.margin)  # (B,)
    return LossOutput(loss_sum=losses.sum(), units=n, metrics=pair_metrics(chosen_rewards, rejected_rewards))


DPO = Objective(name="dpo", prepare=prepare_pairs, collate=collate_pairs, units=count_pairs,
                loss=preference_loss, setup=setup_preference)


def packed_dpo(max_length: int | None) -> Objective:
    """DPO whose chosen and rejected sequences are packed into rows of at most `max_length` tokens, None: one row
    (data.packing)."""
    return dataclasses.replace(DPO, collate=lambda examples, pad_id: collate_pairs_packed(examples, pad_id, max_length))


def shared_prompt_dpo(max_length: int) -> Objective:
    """packed_dpo with each pair's common prompt read once (objective.share_prompt)."""
    return dataclasses.replace(DPO, collate=lambda examples, pad_id: collate_pairs_shared(examples, pad_id, max_length))
