"""The policy-gradient losses of the online objectives (ppo, grpo): small functions over (N, L) tensors.

N completions, L completion tokens each; `mask` (N, L) is 1 on real completion tokens. The rollout, the
reward scoring and the update that use them are in objectives/online.py.
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


def ppo_token_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float) -> torch.Tensor:
    """r_t = -kl_coef * (log pi - log pi_ref)_t, plus the sequence's score on its last real token (N, L)."""
    rewards = -kl_coef * (logps - ref_logps) * mask
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()  # (N,)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def group_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO (Shao et al. 2024, "DeepSeekMath"): A_i = (r_i - mean(group)) / (std(group) + 1e-4), (N,)."""
    grouped = scores.view(-1, group_size)  # (prompts, G)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return advantages.view(-1)


def clipped_policy_loss(logps, old_logps, advantages, clip_range: float):
    """PPO-clip (Schulman et al. 2017): per-token max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)), and clipped."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
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
