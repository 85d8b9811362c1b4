"""The policy-gradient losses of the online objectives (ppo, grpo): small functions over (N, L) tensors.

N completions, L completion tokens each; `mask` (N, L) is 1 on real completion tokens. The rollout, the
reward scoring and the update that use them are in objectives/online.py.

grpo's family (objective.variant: dr_grpo, dapo, gspo, rloo, reinforce_pp) is three registries of small
functions, each knob orthogonal to the others: ADVANTAGES (how scores become per-token advantages), RATIOS (the
importance ratio the clip acts on) and AGGREGATIONS (how per-token losses become the minibatch's loss), plus
asymmetric clipping (`clipped_ratio_loss`) and the DAPO overlong penalty. The variant presets that pick them are
config.GRPO_VARIANTS (config validation reads them, and config.py cannot import this package).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalized advantage estimation (Schulman et al. 2016): (advantages, returns), each (N, L).

        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = sum_l (gamma * lam)^l * delta_{t+l}

    V is 0 after the last real token, so the episode ends there.
    """
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    returns = advantages + values
    return advantages * mask, returns


def last_token(mask: torch.Tensor) -> torch.Tensor:
    """(N,) index of each row's last real token. Not mask.sum() - 1: a completion that called tools has holes
    (the tool results, mask 0) before its end (objectives/tool_rollouts.py)."""
    positions = torch.arange(mask.shape[1], device=mask.device)  # (L,)
    return (positions * (mask > 0)).amax(dim=1)  # a row without any real token: 0


def ppo_token_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float) -> torch.Tensor:
    """r_t = -kl_coef * (log pi - log pi_ref)_t, plus the sequence's score on its last real token (N, L)."""
    rewards = -kl_coef * (logps - ref_logps) * mask
    rewards[torch.arange(len(scores)), last_token(mask)] += scores
    return rewards


def group_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO (Shao et al. 2024, "DeepSeekMath"): A_i = (r_i - mean(group)) / (std(group) + 1e-4), (N,)."""
    grouped = scores.view(-1, group_size)  # (prompts, G)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return advantages.view(-1)


def clipped_policy_loss(logps, old_logps, advantages, clip_range: float):
    """PPO-clip (Schulman et al. 2017): per-token max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)), and clipped."""
    return clipped_ratio_loss(torch.exp(logps - old_logps), advantages, clip_range, clip_range)


def clipped_ratio_loss(ratio, advantages, clip_low: float, clip_high: float):
    """max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)) per token, and where the clip won (N, L).

    clip_low = clip_high is PPO's clip; DAPO (Yu et al. 2025) raises clip_high ("clip-higher", 0.28 against 0.2)
    so that unlikely tokens with A > 0 can grow. `ratio` is (N, L), or (N, 1) for a sequence-level ratio.
    """
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def clipped_value_loss(values, old_values, returns, value_clip: float):
    """Per-token 0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within value_clip of the rollout's V."""
    clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def k3_kl(logps, ref_logps):
    """The per-token KL estimate GRPO penalises (Schulman 2020): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


class AdaptiveKL:
    """Ziegler et al. 2019: kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""

    def __init__(self, value: float, target: float, horizon: int):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, kl: float, n: int) -> None:
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.value *= 1 + error * n / self.horizon


# ---------------------------------------------------------------------------
# grpo's family. Advantages: (scores (N,), mask (N, L), group size G, token_kl (N, L) or None) -> (N, L).
# Completions come in groups of G adjacent rows (one prompt each). `token_kl` is kl_coef * (log pi_old - log pi_ref)
# per token where the variant puts the KL penalty in the reward (objective.kl_penalty: reward), else None.


def sequence_rewards(scores: torch.Tensor, token_kl: torch.Tensor | None) -> torch.Tensor:
    """The score less the completion's summed KL penalty, r - kl_coef * sum_t (log pi_old - log pi_ref)_t (N,)."""
    return scores if token_kl is None else scores - token_kl.sum(dim=1)


def group_std_advantages(scores, mask, group_size: int, token_kl=None) -> torch.Tensor:
    """GRPO (Shao et al. 2024): A_i = (r_i - mean(group)) / (std(group) + 1e-4), the same on every token."""
    return group_advantages(sequence_rewards(scores, token_kl), group_size)[:, None] * mask


def group_mean_advantages(scores, mask, group_size: int, token_kl=None) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = r_i - mean(group), no std.

    Dividing by the group's std weights prompts that are too easy or too hard more: a bias the paper removes.
    """
    grouped = sequence_rewards(scores, token_kl).view(-1, group_size)  # (prompts, G)
    return (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)[:, None] * mask


def leave_one_out_advantages(scores, mask, group_size: int, token_kl=None) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics"): A_i = r_i - (sum_{j != i} r_j) / (G - 1).

    The baseline of each completion is the mean of the other G - 1, so it does not depend on the completion
    itself and the estimate stays unbiased; equal to G / (G - 1) * (r_i - mean(group)).
    """
    grouped = sequence_rewards(scores, token_kl).view(-1, group_size)  # (prompts, G)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).view(-1)[:, None] * mask


def batch_whiten_advantages(scores, mask, group_size: int, token_kl=None) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): per-token reward r_t = score on the last token - kl_coef * (log pi_old - log pi_ref)_t,
    A_t = sum_{s >= t} r_s (the return to go, gamma = 1, no critic), then whitened over every token of the batch:
    (A - mean) / sqrt(var + 1e-8). Groups play no part: the baseline is the global batch's mean.
    """
    rewards = -token_kl * mask if token_kl is not None else torch.zeros_like(mask)
    rewards[torch.arange(len(scores)), last_token(mask)] += scores
    returns = rewards.flip(1).cumsum(dim=1).flip(1) * mask  # (N, L)
    return whiten(returns, mask)


ADVANTAGES = {
    "group_std": group_std_advantages,
    "group_mean": group_mean_advantages,
    "leave_one_out": leave_one_out_advantages,
    "batch_whiten": batch_whiten_advantages,
}
GROUP_ADVANTAGES = ("group_std", "group_mean", "leave_one_out")  # a group that agrees gets 0: dynamic sampling's case


# Ratios: (logps, old_logps, mask), each (N, L) -> the importance ratio pi / pi_old, (N, L) or (N, 1).


def token_ratio(logps, old_logps, mask) -> torch.Tensor:
    """PPO / GRPO: pi(y_t) / pi_old(y_t) per token (N, L); 1 after a completion's end (both log-probs are 0)."""
    return torch.exp(logps - old_logps)


def sequence_ratio(logps, old_logps, mask) -> torch.Tensor:
    """GSPO (Zheng et al. 2025): s = (pi(y) / pi_old(y)) ^ (1 / |y|) = exp(mean_t (log pi - log pi_old)_t) (N, 1).

    One ratio per completion, length-normalised, so one clip decision covers the whole sequence.
    """
    log_ratio = ((logps - old_logps) * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.exp(log_ratio)


def sequence_sum_ratio(logps, old_logps, mask) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024) treats the whole completion as one action: pi(y) / pi_old(y) =
    exp(sum_t (log pi - log pi_old)_t) (N, 1), as TRL's RLOOTrainer; its gradient at ratio 1 is A * grad log pi(y).
    """
    return torch.exp(((logps - old_logps) * mask).sum(dim=1, keepdim=True))


RATIOS = {"token": token_ratio, "sequence": sequence_ratio, "sequence_sum": sequence_sum_ratio}


# Aggregations: (mask of a micro-batch (n, L), mask of its whole minibatch (m, L), max_new_tokens) -> per-token
# weights (n, L). The minibatch's loss is sum(loss_t * weight_t) over its micro-batches, so gradient accumulation
# gives the same update as one big minibatch.


def sequence_mean_weights(mask, minibatch_mask, max_new_tokens: int) -> torch.Tensor:
    """GRPO (Shao et al. 2024): 1/m sum_i 1/|y_i| sum_t loss_it, the mean over each completion's tokens, then over
    completions. A long completion's tokens weigh less than a short one's."""
    weights = mask / len(minibatch_mask)
    return weights / mask.sum(dim=1, keepdim=True).clamp(min=1)


def token_mean_weights(mask, minibatch_mask, max_new_tokens: int) -> torch.Tensor:
    """DAPO (Yu et al. 2025, "token-level policy gradient loss"): sum_{i,t} loss_it / sum_i |y_i| over the minibatch.

    Every token weighs the same. The normaliser is all the minibatch's tokens (the optimizer step's, across its
    micro-batches), as the DAPO paper writes it: TRL's `dapo` when one generation batch is one optimizer step
    (its num_items_in_batch), and TRL's `bnpo` when a minibatch is one micro-batch. TRL's bnpo divides each
    micro-batch by its own tokens instead, which weighs tokens unequally under gradient accumulation.
    Also ppo's: its policy and value losses average over the minibatch's tokens.
    """
    return mask / float(minibatch_mask.sum())


def constant_weights(mask, minibatch_mask, max_new_tokens: int) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): sum_{i,t} loss_it / (m * max_new_tokens), a constant normaliser, so no
    per-sequence length normalisation biases the update towards long wrong answers (TRL's `dr_grpo`)."""
    return mask / (len(minibatch_mask) * max_new_tokens)


AGGREGATIONS = {"sequence_mean": sequence_mean_weights, "token_mean": token_mean_weights,
                "constant": constant_weights}


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward (N,):

        R_len = 0                                  if len <= L_max - L_buf
                (L_max - L_buf - len) / L_buf      if L_max - L_buf < len <= L_max
                -1                                 if len > L_max

    with L_max = max_new_tokens, L_buf = buffer and len the completion's tokens (its end of turn included).
    Generation stops at L_max, so a completion cut off there gets -1 from the middle line.
    """
    lengths = lengths.float()
    start = max_new_tokens - buffer
    ramp = (start - lengths) / buffer
    return torch.where(lengths <= start, torch.zeros_like(lengths),
                       torch.where(lengths <= max_new_tokens, ramp, torch.full_like(lengths, -1.0)))
