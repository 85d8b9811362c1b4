"""Mixture sampling (data/mixture.py) against the formulas, counted over 10,000 draws."""

from collections import Counter

import pytest

from whetstone.config import ConfigError, load_config
from whetstone.data.batches import StepPlan
from whetstone.data.mixture import build_mixture, largest_remainder, mixture_probabilities

DRAWS = 10_000


def _groups(sizes, weights):
    """(task, path, weight, indices) per source, the indices laid out one source after another."""
    groups, start = [], 0
    for i, (n, w) in enumerate(zip(sizes, weights)):
        groups.append((f"t{i}", f"t{i}.jsonl", w, list(range(start, start + n))))
        start += n
    return groups


def _source_shares(mixture, draws=DRAWS, seed=0):
    """Draw through a StepPlan (as the loop does) and return each source's share of the draws."""
    owner = {i: s for s, source in enumerate(mixture.sources) for i in source.examples}
    plan = StepPlan.build(0, 10, 1, 1, 1.0, draws // 10, mixture)
    counts = Counter(owner[i] for step in range(plan.total_steps) for idx in plan.micro_batches(step, seed)
                     for i in idx)
    total = sum(counts.values())  # a ragged epoch end makes a step short: a few under `draws`
    assert draws - plan.total_steps * 10 // mixture.epoch_size * 10 <= total <= draws
    return [counts[s] / total for s in range(len(mixture.sources))]


def test_probabilities_by_hand():
    # proportional: w n / sum = (100, 600, 150) / 850
    assert mixture_probabilities([100, 300, 50], [1, 2, 3], "proportional", 1.0) == pytest.approx(
        [100 / 850, 600 / 850, 150 / 850])
    # temperature T=2, equal weights: sqrt(100), sqrt(400) = 10, 20
    assert mixture_probabilities([100, 400], [1, 1], "temperature", 2.0) == pytest.approx([1 / 3, 2 / 3])
    # T=1 is proportional; replay takes its fraction off the top
    assert mixture_probabilities([100, 300], [1, 2], "temperature", 1.0, 0.1) == pytest.approx(
        [0.9 * 100 / 700, 0.9 * 600 / 700, 0.1])


def test_proportional_sampling_matches_the_weights_over_10000_draws():
    sizes, weights = [100, 300, 50], [1.0, 2.0, 3.0]
    mixture = build_mixture(_groups(sizes, weights), "proportional", 2.0, None)
    expected = [w * n / sum(w * n for w, n in zip(weights, sizes)) for n, w in zip(sizes, weights)]
    assert _source_shares(mixture) == pytest.approx(expected, abs=0.02)
    assert mixture.epoch_size == 450  # an epoch is as long as the data


def test_temperature_sampling_matches_the_formula_and_flattens():
    sizes = [40, 1000, 160]
    t2 = build_mixture(_groups(sizes, [1, 1, 1]), "temperature", 2.0, None)
    roots = [n ** 0.5 for n in sizes]
    assert _source_shares(t2) == pytest.approx([r / sum(roots) for r in roots], abs=0.02)
    # T -> infinity: uniform over sources, whatever their sizes and weights
    uniform = build_mixture(_groups(sizes, [1, 5, 1]), "temperature", 1e9, None)
    assert _source_shares(uniform) == pytest.approx([1 / 3] * 3, abs=0.02)


def test_replay_fraction_over_10000_draws():
    mixture = build_mixture(_groups([60, 140], [1, 1]), "proportional", 2.0, ("general.jsonl", list(range(200, 230)), 0.1))
    shares = _source_shares(mixture)
    assert shares[2] == pytest.approx(0.1, abs=0.02)
    assert shares[:2] == pytest.approx([0.9 * 0.3, 0.9 * 0.7], abs=0.02)
    assert [s.task for s in mixture.sources] == ["t0", "t1", "replay"]
    assert mixture.epoch_size == round(200 / 0.9)  # the task data per epoch stays the same; replay comes on top


def test_same_seed_same_mixture_and_other_seeds_or_epochs_differ():
    groups = _groups([30, 70], [2, 1])
    a = build_mixture(groups, "proportional", 2.0, None)
    b = build_mixture(groups, "proportional", 2.0, None)
    assert a.epoch_order(7, 0) == b.epoch_order(7, 0) and a.epoch_order(7, 3) == b.epoch_order(7, 3)
    assert a.epoch_order(7, 0) != a.epoch_order(8, 0)
    assert a.epoch_order(7, 0) != a.epoch_order(7, 1)


def test_every_epoch_holds_the_exact_shares_and_sources_are_read_pass_by_pass():
    # source 0: weight 0.5 of 10 examples -> 5 draws per epoch: a full pass every 2 epochs, no repeat inside one
    mixture = build_mixture(_groups([10, 90], [0.5, 1.0]), "proportional", 2.0, None)
    assert [s.per_epoch for s in mixture.sources] == [5, 95]
    first = [i for e in (0, 1) for i in mixture.epoch_order(0, e) if i < 10]
    assert sorted(first) == list(range(10))
    # source 1 is up-weighted past its size: 95 draws of 90 examples, each example at most twice
    counts = Counter(i for i in mixture.epoch_order(0, 0) if i >= 10)
    assert sum(counts.values()) == 95 and len(counts) == 90 and max(counts.values()) == 2


def test_largest_remainder_sums_and_rounds():
    counts = largest_remainder([0.5, 0.3, 0.2], 7)  # 3.5, 2.1, 1.4
    assert counts == [4, 2, 1] and sum(counts) == 7


def test_mixture_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.train=[{path: a.jsonl, weight: 0}, {path: b.jsonl, task: replay}]",
                           "data.temperature=3", "data.replay={source: c.jsonl, fraction: 1.5}"])
    text = str(err.value)
    assert "data.train[0].weight: got 0.0; must be positive" in text
    assert "data.train[1].task: 'replay' is the name of data.replay's task" in text
    assert "data.temperature is 3.0 but data.mixing is 'proportional'; set data.mixing: temperature" in text
    assert "data.replay.fraction: got 1.5; must be in (0, 1)" in text
    config = load_config(None, ["data.train=[{path: a.jsonl}, {path: b.jsonl, weight: 2}]", "data.mixing=temperature",
                                "data.temperature=3", "data.replay={source: c.jsonl}"])
    assert config.data.replay.fraction == 0.1 and config.data.train[1].weight == 2.0
