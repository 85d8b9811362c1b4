"""PPO and GRPO: the pieces by hand, log-probs of left-padded rollouts, and learning on a tiny model."""

import pytest
import torch
from prefkit import pref_config, prompt_rows, read_metrics, write_jsonl
from transformers import AutoModelForCausalLM

from whetstone.data.records import Message, Record
from whetstone.errors import WhetstoneError
from whetstone.train.dispatch import train
from whetstone.objectives.online import completion_forward, sample_completions, tokenize_prompts
from whetstone.objectives.policy import (
    AdaptiveKL,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    group_advantages,
    k3_kl,
    ppo_token_rewards,
)
from whetstone.rewards import exact_match, load_rewards

# A reward the tiny model can learn: the share of characters from the first half of the alphabet.
REWARD_FILE = '''
def first_half(prompts, completions, references):
    return [sum(ch in "abcdefghijklm" for ch in c) / max(len(c), 1) for c in completions]
'''
KL_BOUND = 10.0  # nats per completion of 8 tokens, stated in docs/preferences.md for these tests


def test_gae_by_hand():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.1, -0.2, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])  # the 9.0 sits after the end and must not count
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    r, v = [0.1, -0.2, 1.0], [0.5, 0.4, 0.3]
    deltas = [r[t] + gamma * (v[t + 1] if t + 1 < 3 else 0.0) - v[t] for t in range(3)]
    expected = [sum((gamma * lam) ** k * deltas[t + k] for k in range(3 - t)) for t in range(3)]
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    assert advantages[0, :3].tolist() == pytest.approx(expected, rel=1e-6) and advantages[0, 3] == 0
    assert returns[0, :3].tolist() == pytest.approx([a + b for a, b in zip(expected, v)], rel=1e-6)


def test_token_rewards_put_the_score_on_the_last_real_token():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards = ppo_token_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 2.0, 0.0], [0.0, 0.0, -1.0]]))


def test_group_advantages_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    out = group_advantages(scores, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased, as torch.std
    a = 0.5 / (std + 1e-4)
    assert out[:4].tolist() == pytest.approx([a, -a, -a, a], rel=1e-6)
    assert out[4:].tolist() == [0.0] * 4  # a group that agrees teaches nothing


def test_clipped_losses_and_k3_by_hand():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.7]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipped = clipped_policy_loss(new, old, adv, 0.2)
    # A>0: min(r, 1.2) * A; A<0: max(r, 0.8) * A; the loss is the negative.
    assert loss.tolist() == pytest.approx([-1.2, -0.5, 1.1, 0.8], rel=1e-6)
    assert clipped.tolist() == [1.0, 0.0, 0.0, 1.0]
    value = clipped_value_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.1]), 0.5)
    assert value.tolist() == pytest.approx([0.5 * max(2.0**2, 1.5**2), 0.5 * 0.1**2])
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    assert k3_kl(logp, ref).tolist() == pytest.approx([torch.exp(torch.tensor(-0.5)).item() + 0.5 - 1, 0.0])


def test_adaptive_kl_controller():
    ctl = AdaptiveKL(0.1, target=6.0, horizon=100)
    ctl.update(kl=12.0, n=10)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    ctl.update(kl=5.4, n=50)  # error -0.1
    assert ctl.value == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 50 / 100))


def test_left_padded_rollout_log_probs_equal_unpadded_rows(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    records = [Record("prompt", "mem:1", messages=(Message("user", text),))
               for text in ("hi", "a much longer question about the river and the stone?")]
    prompts, _ = tokenize_prompts(records, tiny_tokenizer, 100)
    assert len(prompts[0].ids) < len(prompts[1].ids)  # so the first row is left-padded
    obj = pref_config(tiny_model_dir, "objective=grpo", "objective.reward=[{function: m:f}]", "data.train=x",
                      "objective.max_new_tokens=6", "objective.temperature=0.7").objective
    torch.manual_seed(0)
    rollout = sample_completions(model, tiny_tokenizer, prompts, obj, torch.device("cpu"))
    assert rollout.input_ids.shape[1] == rollout.n_prompt + rollout.mask.shape[1]
    assert (rollout.mask[:, 1:] <= rollout.mask[:, :-1]).all()  # 1s up to the first EOS, then 0s
    with torch.no_grad():
        logps, entropy, _ = completion_forward(model, rollout, obj.temperature)
        for row, prompt in enumerate(prompts):
            n = int(rollout.mask[row].sum())
            ids = prompt.ids + rollout.completion_ids[row, :n].tolist()
            logits = model(input_ids=torch.tensor([ids])).logits[0, len(prompt.ids) - 1 : -1] / obj.temperature
            expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[len(prompt.ids):])[:, None])[:, 0]
            torch.testing.assert_close(logps[row, :n], expected, atol=1e-5, rtol=0)
    assert ((entropy > 0) == (rollout.mask > 0)).all()  # positive on completion tokens, 0 after the end


def _online_config(tmp_path, tiny_model_dir, objective, *overrides):
    (tmp_path / "first_half.py").write_text(REWARD_FILE)
    # 64 held-out prompts: one sample each, so the eval reward's own noise (~0.02) stays well under the gain.
    data = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(128, 5))
    return pref_config(tiny_model_dir, f"objective={objective}", f"data.train={data}", "data.eval_fraction=0.5",
                       f"objective.reward=[{{function: '{tmp_path / 'first_half.py'}:first_half'}}]",
                       "objective.max_new_tokens=8", "method.name=full", "train.schedule=constant", *overrides)


# Sampled rollouts take other paths wherever a CPU's kernels round differently, so the gain is not one number.
# Measured with seeds 0 and 2 under AVX-512, AVX2 and scalar kernels: PPO +0.195 to +0.25 (KL 2.0-2.6),
# GRPO +0.14 to +0.19 (KL 2.4-2.6; by step 28 its KL passes the bound below). The untrained policy scores 0.17-0.24.
@pytest.mark.parametrize("objective,overrides", [
    ("ppo", ["train.max_steps=60", "train.lr=1e-2", "objective.rollout_batch_size=16", "train.batch_size=16",
             "objective.vf_coef=0.5", "objective.kl_coef=0.05", "eval.every=60"]),
    ("grpo", ["train.max_steps=20", "train.lr=3e-3", "objective.rollout_batch_size=4", "train.batch_size=16",
              "objective.kl_coef=0.2", "eval.every=20"]),
])
def test_online_rl_raises_held_out_reward_with_bounded_kl(tmp_path, tiny_model_dir, objective, overrides):
    config = _online_config(tmp_path, tiny_model_dir, objective, *overrides)
    summary = train(config, tmp_path / objective, progress=False)
    rows = read_metrics(tmp_path / objective)
    before, after = rows[0], rows[-1]
    assert before["step"] == 0 and before["eval_kl"] == 0.0  # the policy starts as the reference
    assert after["eval_reward"] > before["eval_reward"] + 0.1, (before, after)
    assert 0 <= after["eval_kl"] < KL_BOUND
    for key in ("reward", "kl", "entropy", "clipfrac", "response_length", "tokens", "tokens_per_s", "lr"):
        assert key in rows[1], key
    if objective == "ppo":
        assert "value_loss" in rows[1]
    assert summary["eval_reward_before"] == before["eval_reward"] and summary["eval_reward"] == after["eval_reward"]
    assert (tmp_path / objective / "model" / "model.safetensors").is_file()


def test_ppo_resumed_equals_uninterrupted(tmp_path, tiny_model_dir):
    overrides = ["train.max_steps=4", "train.lr=1e-2", "objective.rollout_batch_size=8", "train.batch_size=4",
                 "eval.every=100", "train.checkpoint_every=100", "objective.adaptive_kl=true"]
    straight = train(_online_config(tmp_path, tiny_model_dir, "ppo", *overrides), tmp_path / "a", progress=False)
    stopped = train(_online_config(tmp_path, tiny_model_dir, "ppo", *overrides), tmp_path / "b", progress=False,
                    on_step=lambda step, row: step == 2)
    assert stopped["stopped_early"] and stopped["steps"] == 2
    resumed = train(None, tmp_path / "b", resume=True, progress=False)
    assert resumed["steps"] == 4
    drop = ("elapsed_s", "tokens_per_s", "rollout_s", "rollout_tokens_per_s")  # clocks
    a = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / "a")]
    b = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / "b")]
    assert a == b
    assert straight["eval_reward"] == resumed["eval_reward"]


def test_reward_functions_are_imported_only_as_named(tmp_path):
    from whetstone.config import RewardSource

    with pytest.raises(WhetstoneError, match="does not exist"):
        load_rewards([RewardSource(function=str(tmp_path / "missing.py") + ":f")], "cpu")
    with pytest.raises(WhetstoneError, match="has no function named 'nope'"):
        load_rewards([RewardSource(function="whetstone.rewards:nope")], "cpu")
    bad = tmp_path / "bad.py"
    bad.write_text("def f(prompts, completions, references):\n    return [1.0]\n")
    (reward,) = load_rewards([RewardSource(function=f"{bad}:f")], "cpu")
    with pytest.raises(WhetstoneError, match="returned 1 values for 2 completions"):
        reward.score([(Message("user", "q"),)] * 2, ["a", "b"], [None, None])
    assert exact_match(["q"] * 3, ["`os.path`.", "os", "OS path"], ["os.path", "os.path", None]) == [1.0, 0.0, 0.0]
