"""grpo's variants (objective.variant): each knob's function by hand, the losses against TRL's own code, DAPO's
dynamic sampling on the tiny model, and one short run per variant.

TRL keeps its GRPO loss inside `GRPOTrainer._compute_loss` (and RLOO's inside `RLOOTrainer._compute_loss`); it
reads a handful of attributes of its trainer, so it is called here unbound on a stand-in whose
`_get_per_token_logps_and_entropies` returns fixed log-probs. Written against trl 1.16.
"""

import json
import math
import typing
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from prefkit import pref_config, prompt_rows, read_metrics, write_jsonl

from whetstone.config import GRPO_VARIANTS, ObjectiveConfig
from whetstone.errors import WhetstoneError
from whetstone.objectives.policy import (ADVANTAGES, AGGREGATIONS, RATIOS, clipped_ratio_loss, group_advantages,
                                         k3_kl, overlong_penalty)
from whetstone.train.dispatch import train

# ---------------------------------------------------------------------------
# Each function by hand.


def _close(tensor, expected):
    torch.testing.assert_close(tensor, torch.tensor(expected, dtype=tensor.dtype), atol=1e-6, rtol=0)


def test_group_std_is_todays_grpo_advantage_on_every_token():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 2.5])
    mask = torch.ones(8, 3)
    mask[1, 2] = 0.0
    out = ADVANTAGES["group_std"](scores, mask, 4, None)
    assert torch.equal(out, group_advantages(scores, 4)[:, None] * mask)  # bit for bit: the default is unchanged
    std = math.sqrt((3 * 0.5**2 + 1.5**2) / 3)  # group 2: mean 1.0, deviations -0.5 -0.5 -0.5 1.5, unbiased std
    assert out[7, 0].item() == pytest.approx(1.5 / (std + 1e-4), abs=1e-6)
    assert out[1, 2] == 0.0


def test_group_mean_subtracts_the_mean_and_divides_by_nothing():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 2.5])  # group means 0.5 and 1.0
    out = ADVANTAGES["group_mean"](scores, torch.ones(8, 2), 4, None)
    _close(out[:, 0], [0.5, -0.5, -0.5, 0.5, -0.5, -0.5, -0.5, 1.5])
    _close(out[:, 1], [0.5, -0.5, -0.5, 0.5, -0.5, -0.5, -0.5, 1.5])


def test_leave_one_out_baseline_is_the_mean_of_the_others():
    scores = torch.tensor([1.0, 2.0, 6.0])
    # baselines: (2 + 6) / 2 = 4, (1 + 6) / 2 = 3.5, (1 + 2) / 2 = 1.5
    _close(ADVANTAGES["leave_one_out"](scores, torch.ones(3, 1), 3, None)[:, 0], [1 - 4, 2 - 3.5, 6 - 1.5])
    # KL in the reward (rloo): the sequence's summed penalty comes off its score first: r = 0.5, 2, 5
    token_kl = torch.tensor([[0.25, 0.25], [0.0, 0.0], [1.0, 0.0]])
    out = ADVANTAGES["leave_one_out"](scores, torch.ones(3, 2), 3, token_kl)
    _close(out[:, 0], [0.5 - (2 + 5) / 2, 2 - (0.5 + 5) / 2, 5 - (0.5 + 2) / 2])


def test_batch_whiten_whitens_returns_to_go_over_every_token():
    scores = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    token_kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])  # the 9.0 sits after row 2's end: no part
    # per-token rewards: row 1 [-0.1, -0.2, -0.3 + 1], row 2 [-0.4, -0.5 - 1]; returns to go:
    returns = [0.4, 0.5, 0.7, -1.9, -1.5]
    mean = sum(returns) / 5  # -0.36
    var = sum((x - mean) ** 2 for x in returns) / 5  # 1.2224
    white = [(x - mean) / math.sqrt(var + 1e-8) for x in returns]
    out = ADVANTAGES["batch_whiten"](scores, mask, 2, token_kl)
    _close(out, [white[:3], white[3:] + [0.0]])
    # no KL: the score alone, on every token up to the end
    plain = ADVANTAGES["batch_whiten"](scores, mask, 2, None)
    m, v = (3 - 2) / 5, (3 * 0.8**2 + 2 * 1.2**2) / 5
    _close(plain, [[0.8 / math.sqrt(v + 1e-8)] * 3, [-1.2 / math.sqrt(v + 1e-8)] * 2 + [0.0]])
    assert m == pytest.approx(0.2)


def test_ratios_by_hand():
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    new = torch.tensor([[-0.8, -2.3, 0.0], [-0.5, -0.2, -0.7]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    _close(RATIOS["token"](new, old, mask),
           [[math.exp(0.2), math.exp(-0.3), 1.0], [1.0, math.exp(0.3), math.exp(-0.2)]])
    # GSPO: exp of the mean log-ratio over each sequence's own tokens: (0.2 - 0.3) / 2, (0 + 0.3 - 0.2) / 3
    _close(RATIOS["sequence"](new, old, mask), [[math.exp(-0.05)], [math.exp(0.1 / 3)]])
    # RLOO: exp of the summed log-ratio
    _close(RATIOS["sequence_sum"](new, old, mask), [[math.exp(-0.1)], [math.exp(0.1)]])


def test_asymmetric_clip_by_hand():
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.7, 1.25])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    loss, clipped = clipped_ratio_loss(ratio, adv, 0.2, 0.28)
    # A > 0: -min(r, 1.28) * A; A < 0: max(r, 0.8) * |A|; 1.25 is under DAPO's 1.28 so it is not clipped
    _close(loss, [-1.28, -0.5, 1.1, 0.8, -1.25])
    assert clipped.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    # a (N, 1) sequence ratio broadcasts over the advantages' tokens
    loss, _ = clipped_ratio_loss(torch.tensor([[1.5], [0.9]]), torch.tensor([[1.0, 2.0], [-1.0, -1.0]]), 0.2, 0.28)
    _close(loss, [[-1.28, -2.56], [0.9, 0.9]])


def test_aggregation_weights_by_hand():
    micro = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    minibatch = torch.cat([micro, torch.tensor([[1.0, 1.0, 0.0, 0.0]])])  # 3 completions, 6 tokens
    # sequence_mean: 1 / (3 completions x the row's own tokens)
    _close(AGGREGATIONS["sequence_mean"](micro, minibatch, 4), [[1 / 9] * 3 + [0.0], [1 / 3, 0.0, 0.0, 0.0]])
    _close(AGGREGATIONS["token_mean"](micro, minibatch, 4), [[1 / 6] * 3 + [0.0], [1 / 6, 0.0, 0.0, 0.0]])
    # constant: 1 / (3 completions x max_new_tokens 4)
    _close(AGGREGATIONS["constant"](micro, minibatch, 4), [[1 / 12] * 3 + [0.0], [1 / 12, 0.0, 0.0, 0.0]])
    # micro-batches add up to the minibatch: each weight sums to 1 over the whole minibatch (constant: 6/12)
    for name, total in (("sequence_mean", 1.0), ("token_mean", 1.0), ("constant", 0.5)):
        parts = AGGREGATIONS[name](micro, minibatch, 4).sum() + AGGREGATIONS[name](minibatch[2:], minibatch, 4).sum()
        assert parts.item() == pytest.approx(total, abs=1e-6), name


def test_overlong_penalty_by_hand():
    # L_max 10, L_buf 4: no penalty up to 6 tokens, then -(len - 6) / 4, and -1 beyond 10
    out = overlong_penalty(torch.tensor([3.0, 6.0, 7.0, 8.0, 10.0, 11.0]), 10, 4)
    _close(out, [0.0, 0.0, -0.25, -0.5, -1.0, -1.0])


def test_registries_and_config_name_the_same_knobs():
    hints = typing.get_type_hints(ObjectiveConfig)
    for field, registry in (("advantage", ADVANTAGES), ("ratio", RATIOS), ("aggregation", AGGREGATIONS)):
        (literal, _) = typing.get_args(hints[field])
        assert set(typing.get_args(literal)) == set(registry), field
    assert set(typing.get_args(hints["variant"])) == set(GRPO_VARIANTS)


# ---------------------------------------------------------------------------
# The presets, and what the config refuses.


def _objective(*overrides):
    reward = "objective.reward=[{function: m:f}]"
    return pref_config("m", "objective=grpo", "data.train=x", reward, *overrides).objective


def test_presets_resolve_and_explicit_knobs_override_them():
    table = {v: _objective(f"objective.variant={v}").policy_knobs() for v in GRPO_VARIANTS}
    row = lambda k: (k.advantage, k.ratio, k.aggregation, k.kl_penalty, k.clip_low, k.clip_high, k.dynamic_sampling,
                     k.overlong_buffer)
    assert row(table["grpo"]) == ("group_std", "token", "sequence_mean", "loss", 0.2, 0.2, False, 0)
    assert row(table["dr_grpo"]) == ("group_mean", "token", "constant", "loss", 0.2, 0.2, False, 0)
    assert row(table["dapo"]) == ("group_std", "token", "token_mean", "loss", 0.2, 0.28, True, 64 // 5)
    assert row(table["gspo"]) == ("group_std", "sequence", "sequence_mean", "loss", 3e-4, 4e-4, False, 0)
    assert row(table["rloo"]) == ("leave_one_out", "sequence_sum", "sequence_mean", "reward", 0.2, 0.2, False, 0)
    assert row(table["reinforce_pp"]) == ("batch_whiten", "token", "sequence_mean", "reward", 0.2, 0.2, False, 0)
    # DAPO's clipping with GSPO's ratio
    mixed = _objective("objective.variant=gspo", "objective.clip_low=0.2", "objective.clip_high=0.28").policy_knobs()
    assert (mixed.ratio, mixed.clip_low, mixed.clip_high) == ("sequence", 0.2, 0.28)
    no_resampling = _objective("objective.variant=dapo", "objective.dynamic_sampling=false").policy_knobs()
    assert no_resampling.dynamic_sampling is False and no_resampling.aggregation == "token_mean"


def test_config_refuses_what_does_not_compose_in_one_error():
    with pytest.raises(WhetstoneError) as info:
        _objective("objective.variant=reinforce_pp", "objective.dynamic_sampling=true", "objective.clip_low=1.5",
                   "objective.overlong_buffer=65", "objective.ratio=sequence_sum", "objective.aggregation=constant")
    message = str(info.value)
    for needle in ("objective.clip_low: got 1.5", "objective.overlong_buffer: got 65",
                   "advantage 'batch_whiten'", "objective.ratio 'sequence_sum'"):
        assert needle in message, needle
    with pytest.raises(WhetstoneError, match="objective.clip_high is set, but objective 'ppo'"):
        pref_config("m", "objective=ppo", "data.train=x", "objective.reward=[{function: m:f}]",
                    "objective.clip_high=0.28")
    with pytest.raises(WhetstoneError, match="max_sampling_rounds is set, but dynamic sampling is off"):
        _objective("objective.max_sampling_rounds=5")


# ---------------------------------------------------------------------------
# The losses against TRL's.

B, T = 6, 5
LENGTHS = [5, 3, 4, 1, 5, 2]


def _fixed_inputs():
    g = torch.Generator().manual_seed(11)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in LENGTHS], dtype=torch.float64)
    logps = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 3) * mask
    # ratios inside and outside the clip
    old = (logps + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)) * mask
    ref = (logps + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)) * mask
    advantages = torch.tensor([1.2, -0.7, 0.4, -1.5, 0.9, -0.3], dtype=torch.float64)
    return logps, old, ref, mask, advantages


def _trl_stand_in(logps, **attributes):
    accelerator = SimpleNamespace(num_processes=1, reduce=lambda t, reduction: t, gather=lambda t: t,
                                  gather_for_metrics=lambda t: t)
    defaults = dict(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=0.0,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        epsilon_low=0.2, epsilon_high=0.2, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, accelerator=accelerator,
        max_completion_length=T, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    return SimpleNamespace(**{**defaults, **attributes})


def _trl_inputs(old, ref, mask, advantages):
    return {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
            "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask.long(),
            "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
            "num_items_in_batch": mask.sum()}


def _ours(logps, old, ref, mask, advantages, ratio, aggregation, clip_low, clip_high, kl_coef):
    """The minibatch loss as ppo_update composes it, the whole minibatch as one micro-batch."""
    ratios = RATIOS[ratio](logps, old, mask)  # (B, T) or (B, 1)
    per_token, _ = clipped_ratio_loss(ratios, advantages[:, None] * mask, clip_low, clip_high)
    if kl_coef > 0:
        per_token = per_token + kl_coef * k3_kl(logps, ref)
    return (per_token * AGGREGATIONS[aggregation](mask, mask, T)).sum()


# TRL loss_type (and importance_sampling_level) -> the whetstone knobs computing the same loss.
TRL_CASES = [
    ("grpo", "token", "sequence_mean", 0.2, 0.2),
    ("bnpo", "token", "token_mean", 0.2, 0.2),
    ("dr_grpo", "token", "constant", 0.2, 0.2),
    ("dapo", "token", "token_mean", 0.2, 0.28),
    ("gspo", "sequence", "sequence_mean", 3e-4, 4e-4),  # loss_type grpo, importance_sampling_level sequence
    ("gspo_dapo_clip", "sequence", "sequence_mean", 0.2, 0.28),  # the options compose: DAPO's clip on GSPO's ratio
]


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("case,ratio,aggregation,clip_low,clip_high", TRL_CASES)
def test_grpo_losses_match_trl(case, ratio, aggregation, clip_low, clip_high, beta):
    pytest.importorskip("trl")
    from trl.trainer.grpo_trainer import GRPOTrainer

    logps, old, ref, mask, advantages = _fixed_inputs()
    loss_type = "grpo" if case.startswith("gspo") else case
    level = "sequence" if case.startswith("gspo") else "token"
    stand_in = _trl_stand_in(logps, loss_type=loss_type, importance_sampling_level=level, beta=beta,
                             epsilon_low=clip_low, epsilon_high=clip_high)
    theirs = GRPOTrainer._compute_loss(stand_in, None, _trl_inputs(old, ref, mask, advantages))
    ours = _ours(logps, old, ref, mask, advantages, ratio, aggregation, clip_low, clip_high, beta)
    print(f"TRL {case} beta={beta}: |ours - theirs| = {abs(float(ours - theirs)):.3e}")
    assert abs(float(ours - theirs)) < 1e-5
    # and some of the tokens' ratios are clipped, so the clip is tested too (GSPO's tiny range clips them all)
    ratios = RATIOS[ratio](logps, old, mask).expand_as(mask)
    assert ((ratios > 1 + clip_high) | (ratios < 1 - clip_low))[mask > 0].any()


def test_rloo_loss_matches_trl():
    pytest.importorskip("trl")
    from trl.trainer.rloo_trainer import RLOOTrainer

    logps, old, ref, mask, advantages = _fixed_inputs()
    stand_in = _trl_stand_in(logps, epsilon_low=0.2, epsilon_high=0.2)
    inputs = _trl_inputs(old, ref, mask, advantages) | {"old_logps": (old * mask).sum(1)}
    theirs = RLOOTrainer._compute_loss(stand_in, None, inputs)
    ours = _ours(logps, old, ref, mask, advantages, "sequence_sum", "sequence_mean", 0.2, 0.2, 0.0)
    print(f"TRL rloo: |ours - theirs| = {abs(float(ours - theirs)):.3e}")
    assert abs(float(ours - theirs)) < 1e-5


def test_advantages_match_trls_formulas():
    """TRL computes advantages inline in _generate_and_score_completions (no function to call): its
    scale_rewards 'group' is (r - mean) / (std + 1e-4) and 'none' is r - mean; RLOO's baseline is
    (group sum - r) / (G - 1). Reproduced here line by line on the same rewards."""
    rewards = torch.tensor([0.3, 1.0, 0.0, 0.7, 2.0, 2.0, 1.0, 5.0])
    grouped = rewards.view(-1, 4)
    mean = grouped.mean(dim=1).repeat_interleave(4)
    std = grouped.std(dim=1).repeat_interleave(4)  # TRL's nanstd: the unbiased std
    mask = torch.ones(8, 1)
    _close(ADVANTAGES["group_std"](rewards, mask, 4, None)[:, 0], ((rewards - mean) / (std + 1e-4)).tolist())
    _close(ADVANTAGES["group_mean"](rewards, mask, 4, None)[:, 0], (rewards - mean).tolist())
    baseline = ((grouped.sum(dim=1, keepdim=True) - grouped) / 3).view(-1)
    _close(ADVANTAGES["leave_one_out"](rewards, mask, 4, None)[:, 0], (rewards - baseline).tolist())


# ---------------------------------------------------------------------------
# On the tiny model: dynamic sampling, and one short run per variant.

# Rewards by position: completion k of a group scores k, except for prompts naming a listed word, whose group
# all scores 0.5 (dropped by dynamic sampling). Every call is recorded, so the test sees each sampling pass.
SCRIPTED_REWARD = '''
import json
CALLS = {calls!r}
def scripted(prompts, completions, references):
    with open(CALLS, "a") as f:
        f.write(json.dumps(prompts) + "\\n")
    group = {group}
    return [0.5 if any(w in p for w in {constant!r}) else float(i % group) for i, p in enumerate(prompts)]
'''


def _variant_config(tmp_path, tiny_model_dir, reward_file, *overrides, eval_fraction=0.25):
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(32, 5))
    return pref_config(tiny_model_dir, "objective=grpo", f"data.train={data}", f"data.eval_fraction={eval_fraction}",
                       f"objective.reward=[{{function: '{reward_file}:scripted'}}]", "objective.max_new_tokens=6",
                       "objective.num_generations=4", "objective.rollout_batch_size=4", "train.batch_size=8",
                       "method.name=full", "train.schedule=constant", "eval.every=100", *overrides)


def _scripted(tmp_path, constant):
    calls, path = tmp_path / "calls.jsonl", tmp_path / "scripted.py"
    path.write_text(SCRIPTED_REWARD.format(calls=str(calls), group=4, constant=constant))
    return path, calls


def test_dynamic_sampling_drops_agreeing_groups_and_samples_more(tmp_path, tiny_model_dir):
    constant = ["apple", "river", "stone"]  # about two prompts in three name one of these
    reward, calls = _scripted(tmp_path, constant)
    config = _variant_config(tmp_path, tiny_model_dir, reward, "objective.variant=dapo", "train.max_steps=3",
                             "objective.max_sampling_rounds=3", eval_fraction=0.0)  # no eval: every call is a pass
    train(config, tmp_path / "run", progress=False)
    passes = [json.loads(line) for line in calls.read_text().splitlines()]
    rows = [r for r in read_metrics(tmp_path / "run") if r["step"] >= 1 and "sampling_rounds" in r]
    assert len(rows) == 3
    for row in rows:  # replay each round's passes from the recorded calls
        mine, passes = passes[: row["sampling_rounds"]], passes[row["sampling_rounds"]:]
        kept = dropped = 0
        for n, prompts in enumerate(mine):
            groups = [prompts[g * 4] for g in range(len(prompts) // 4)]
            assert all(prompts[g * 4 : g * 4 + 4] == [p] * 4 for g, p in enumerate(groups))  # G adjacent copies
            assert len(groups) == (4 if n == 0 else 4 - kept)  # a later pass samples only what is missing
            bad = sum(any(w in p for w in constant) for p in groups)
            kept, dropped = kept + len(groups) - bad, dropped + bad
        assert row["groups_dropped"] == dropped
        assert kept == 4 or row["sampling_rounds"] == 3  # stopped when full or at the cap
        if kept:
            # trained on the kept groups only: rewards 0, 1, 2, 3 in each, penalised for overlong answers
            assert row["reward"] == pytest.approx(1.5 + row["reward/overlong"], abs=1e-5)
            assert math.isfinite(row["loss"]) and "update_skipped" not in row
    assert sum(r["groups_dropped"] for r in rows) > 0  # the words above make a drop all but certain in 3 rounds
    assert passes == []  # nothing sampled outside the rounds the metrics account for


def test_dynamic_sampling_skips_the_update_when_every_group_agrees(tmp_path, tiny_model_dir):
    reward, calls = _scripted(tmp_path, ["?"])  # every prompt ends with "?"
    config = _variant_config(tmp_path, tiny_model_dir, reward, "objective.variant=dapo", "train.max_steps=1",
                             "objective.max_sampling_rounds=2", "objective.kl_coef=0", eval_fraction=0.0)
    train(config, tmp_path / "run", progress=False)
    (row,) = [r for r in read_metrics(tmp_path / "run") if r["step"] == 1]
    assert row["update_skipped"] is True and row["sampling_rounds"] == 2 and row["groups_dropped"] == 8
    assert row["loss"] == 0.0
    assert [len(json.loads(line)) for line in calls.read_text().splitlines()] == [16, 16]


@pytest.mark.parametrize("variant", list(GRPO_VARIANTS))
def test_each_variant_trains_a_few_rounds(tmp_path, tiny_model_dir, variant):
    reward, _ = _scripted(tmp_path, ["apple"])
    config = _variant_config(tmp_path, tiny_model_dir, reward, f"objective.variant={variant}", "train.max_steps=2",
                             "train.lr=1e-3", "objective.kl_coef=0.05")
    train(config, tmp_path / "run", progress=False)
    rows = [r for r in read_metrics(tmp_path / "run") if r["step"] >= 1 and "loss" in r]
    assert len(rows) == 2
    for row in rows:
        for key in ("loss", "policy_loss", "clipfrac", "entropy", "kl"):
            assert math.isfinite(row[key]), (variant, key, row)
        assert ("kl_loss" in row) == (variant not in ("rloo", "reinforce_pp"))  # those put the KL in the reward
        assert ("groups_dropped" in row) == (variant == "dapo") and ("reward/overlong" in row) == (variant == "dapo")


def test_rounds_log_the_tokens_they_sampled_and_the_rate(tmp_path, tiny_model_dir):
    reward, _ = _scripted(tmp_path, ["apple"])
    config = _variant_config(tmp_path, tiny_model_dir, reward, "train.max_steps=2", eval_fraction=0.0)
    train(config, tmp_path / "run", progress=False)
    rows = [r for r in read_metrics(tmp_path / "run") if r["step"] >= 1]
    for row in rows:  # 4 prompts x 4 completions, each of response_length tokens on average
        assert row["sampled_tokens"] == pytest.approx(16 * row["response_length"], abs=0.01)
        assert row["rollout_tokens_per_s"] == pytest.approx(row["sampled_tokens"] / row["rollout_s"], rel=0.01)
    # dynamic sampling counts the tokens of every pass, the dropped groups' too
    reward, calls = _scripted(tmp_path, ["?"])  # every group agrees: two passes of 16, nothing kept
    config = _variant_config(tmp_path, tiny_model_dir, reward, "objective.variant=dapo", "train.max_steps=1",
                             "objective.max_sampling_rounds=2", "objective.kl_coef=0", eval_fraction=0.0)
    train(config, tmp_path / "dapo", progress=False)
    (row,) = [r for r in read_metrics(tmp_path / "dapo") if r["step"] == 1]
    assert row["update_skipped"] is True and 32 <= row["sampled_tokens"] <= 32 * 6  # 1 to 6 tokens per completion


def test_eval_batch_size_sets_how_many_held_out_prompts_sample_together(tmp_path, tiny_model_dir, monkeypatch):
    from whetstone.objectives import online

    sizes, sample = [], online.sample_rollout

    def spy(model, tokenizer, prompts, *args, **kwargs):
        sizes.append(len(prompts))
        return sample(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(online, "sample_rollout", spy)
    reward, _ = _scripted(tmp_path, ["apple"])  # 32 prompts, a quarter (8) held out
    config = _variant_config(tmp_path, tiny_model_dir, reward, "train.max_steps=1", "objective.eval_batch_size=5")
    train(config, tmp_path / "run", progress=False)
    # before and after training: 8 held-out prompts in chunks of 5; the round samples its 16 in between
    assert sizes == [5, 3, 16, 5, 3]
    sizes.clear()
    config = _variant_config(tmp_path, tiny_model_dir, reward, "train.max_steps=1", "eval.max_batches=1")
    train(config, tmp_path / "default", progress=False)
    assert sizes == [4, 16, 4]  # unset: rollout_batch_size, and eval.max_batches counts those chunks
    sizes.clear()
    config = _variant_config(tmp_path, tiny_model_dir, reward, "train.max_steps=1", "eval.max_batches=1",
                             "eval.before=false")
    summary = train(config, tmp_path / "no_before", progress=False)
    assert sizes == [16, 4]  # eval.before false: the round, then the final evaluation only
    assert "eval_reward_before" not in summary and "eval_reward" in summary
    assert all(r["step"] >= 1 for r in read_metrics(tmp_path / "no_before"))
    with pytest.raises(WhetstoneError, match="objective.eval_batch_size: got 0; must be a positive integer"):
        _variant_config(tmp_path, tiny_model_dir, reward, "objective.eval_batch_size=0")
