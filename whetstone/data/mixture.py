"""Multi-task mixtures: how several training sources share each epoch.

Source i has n_i usable examples and a weight w_i (data.train[i].weight). Its
share p_i of the draws is

    proportional   p_i = w_i n_i / sum_j w_j n_j
                   (weight x size: with equal weights every example is drawn
                   equally often, as if the files were concatenated; weight 2
                   draws a source twice as often as its size alone would)
    temperature    p_i = (w_i n_i)^(1/T) / sum_j (w_j n_j)^(1/T)
                   (the T5/mT5 convention, p_i ~ n_i^(1/T) with equal weights:
                   T = 1 is proportional, T -> infinity uniform over sources)

`data.replay` adds one more source, task "replay", whose share is fixed at its
fraction f; the task sources share the other 1 - f as above.

An epoch is N draws, N = sum_i n_i / (1 - f): the task data's size, plus the
replay on top. Source i gets q_i = p_i N of them, rounded by largest remainder,
so the shares hold exactly in every epoch rather than on average. Each source is
read as an endless stream of reshuffled passes over its examples, and epoch e
takes stream positions [e q_i, (e + 1) q_i): a down-weighted source is still
seen whole over several epochs, an up-weighted one repeats only after a full
pass. The epoch's draws are then shuffled together. Everything is a function of
(seed, epoch) alone, so a checkpoint that remembers the step resumes exactly,
mid-epoch included (see batches.StepPlan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from whetstone.errors import WhetstoneError

REPLAY_TASK = "replay"


@dataclass(frozen=True)
class MixtureSource:
    task: str
    path: str
    weight: float
    examples: tuple[int, ...]  # indices into the training set
    probability: float  # share of every epoch's draws
    per_epoch: int  # draws per epoch (q_i)


@dataclass(frozen=True)
class Mixture:
    sources: tuple[MixtureSource, ...]
    epoch_size: int  # N draws per epoch
    _last: dict = field(default_factory=dict, compare=False, repr=False)  # (seed, epoch) -> order; one entry

    def epoch_order(self, seed: int, epoch: int) -> list[int]:
        """The training-set indices drawn in `epoch`, in order; len == epoch_size."""
        # The loop asks once per step; rebuilding a large epoch's order each time would cost more than the step.
        if (seed, epoch) not in self._last:
            draws: list[int] = []
            for s, source in enumerate(self.sources):
                draws += _stream(source.examples, seed, s, epoch * source.per_epoch, source.per_epoch)
            order = _rng(seed, 0, epoch).permutation(len(draws))
            self._last.clear()
            self._last[(seed, epoch)] = [draws[i] for i in order]
        return self._last[(seed, epoch)]

    def describe(self) -> list[dict]:
        """One row per source for summary.json and the start-of-run message."""
        return [{"task": s.task, "path": s.path, "weight": s.weight, "examples": len(s.examples),
                 "probability": round(s.probability, 6), "per_epoch": s.per_epoch} for s in self.sources]


def mixture_probabilities(sizes: list[int], weights: list[float], mixing: str, temperature: float,
                          replay_fraction: float = 0.0) -> list[float]:
    """p_i of each task source (formulas above), then the replay's fraction last if there is one."""
    mass = [w * n for w, n in zip(weights, sizes)]
    if mixing == "temperature":
        # In log space: (w n)^(1/T) under- and overflows for extreme T; shifting by the max changes nothing.
        logs = [math.log(m) / temperature if m > 0 else -math.inf for m in mass]
        top = max(logs)
        mass = [math.exp(x - top) for x in logs]
    total = sum(mass)
    probabilities = [(1.0 - replay_fraction) * m / total for m in mass]
    return probabilities + ([replay_fraction] if replay_fraction else [])


def largest_remainder(probabilities: list[float], total: int) -> list[int]:
    """Integer counts summing to `total`, each within 1 of p_i * total."""
    exact = [p * total for p in probabilities]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def build_mixture(groups: list[tuple[str, str, float, list[int]]], mixing: str, temperature: float,
                  replay: tuple[str, list[int], float] | None) -> Mixture:
    """groups: (task, path, weight, example indices) per source; replay: (path, example indices, fraction)."""
    for task, path, _, examples in groups:
        if not examples:
            raise WhetstoneError(f"data.train: source {path} (task {task}) has no usable examples, so it cannot take "
                                 f"part in the mixture; check it with `whetstone data check {path}` or remove it.")
    if replay is not None and not replay[1]:
        raise WhetstoneError(f"data.replay.source: {replay[0]} has no usable examples; check it with "
                             f"`whetstone data check {replay[0]}`.")
    fraction = replay[2] if replay else 0.0
    sizes = [len(g[3]) for g in groups]
    probabilities = mixture_probabilities(sizes, [g[2] for g in groups], mixing, temperature, fraction)
    epoch_size = max(1, round(sum(sizes) / (1.0 - fraction)))
    counts = largest_remainder(probabilities, epoch_size)
    rows = list(groups) + ([(REPLAY_TASK, replay[0], 1.0, replay[1])] if replay else [])
    sources = tuple(MixtureSource(task, path, weight, tuple(examples), p, q)
                    for (task, path, weight, examples), p, q in zip(rows, probabilities, counts))
    return Mixture(sources, epoch_size)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    # SeedSequence mixes the keys without collisions: (seed, source, pass) never aliases another triple.
    return np.random.default_rng([seed % 2**32, *keys])


def _stream(examples: tuple[int, ...], seed: int, source: int, start: int, count: int) -> list[int]:
    """Positions [start, start + count) of the source's endless stream of reshuffled passes."""
    n = len(examples)
    out: list[int] = []
    position = start
    while len(out) < count:
        one_pass = _rng(seed, 1, source, position // n).permutation(n)
        offset = position % n
        take = min(n - offset, count - len(out))
        out += [examples[i] for i in one_pass[offset : offset + take]]
        position += take
    return out
