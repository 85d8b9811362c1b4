"""Online RL from rewards, top to bottom: PPO (RLHF) and GRPO.

One optimizer "step" of the offline loop becomes one ROUND here:

    1. rollout    sample completions for `rollout_batch_size` prompts (grpo: `num_generations`
                  per prompt) with temperature / top-p, stopping at EOS
    2. score      the weighted sum of the rewards (reward-model runs, Python functions)
    3. measure    log-probs under the sampling policy and the reference, values (ppo)
    4. advantage  ppo: per-token reward = -kl_coef * (log pi - log pi_ref), plus the score on the
                  last token; GAE over the values (Schulman et al. 2016)
                  grpo: (score - group mean) / group std, the same for every token (Shao et al. 2024)
    5. update     `ppo_epochs` passes of minibatch steps with the clipped policy loss
                  (Schulman et al. 2017), the clipped value loss (ppo) or the k3 KL term (grpo)

The run directory, checkpoints and metrics.jsonl are those of the offline loop
(run_dir.py, checkpoint.py); metrics.jsonl has one row per round. The model stays
in eval mode throughout: dropout would make the rollout's log-probs disagree with
the update's before any weight has moved (gradients flow in eval mode all the same).
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from whetstone.config import ONLINE_OBJECTIVES, RunConfig, config_from_dict, read_yaml
from whetstone.data.batches import epoch_order
from whetstone.data.dataset import load_splits
from whetstone.data.records import Message, Record
from whetstone.data.render import render_prompt, stop_ids
from whetstone.errors import WhetstoneError
from whetstone.methods import apply_method, count_parameters, is_adapter_model
from whetstone.methods.lora import interpolate_toward_base
from whetstone.models import load_model, load_tokenizer
from whetstone.models.forward import logits_in_fp32, unwrap
from whetstone.train import distributed
from whetstone.train.checkpoint import save_checkpoint
from whetstone.train.device import (announce_precision, autocast_context, base_dtype, precision_entries,
                                    resolve_device, resolve_precision)
from whetstone.train.fast_path import resolve_fast_path
from whetstone.train.loop import (
    StepCallback,
    StopSignal,
    _save_weights,
    _seed_everything,
    build_optimizer,
    lr_multiplier,
    peak_memory_mb,
)
from whetstone.train.rewards import Reward, load_rewards, score_completions
from whetstone.train.resume import starting_point
from whetstone.train.run_dir import RunDirectory


def is_online(config: RunConfig | None, run_dir, resume: bool) -> bool:
    """Whether `whetstone train` should run this loop (for --resume, the run's own config decides)."""
    if resume:
        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            return False  # the offline loop reports the missing run directory
        config = config_from_dict(read_yaml(path), str(path))
    return config.objective.name in ONLINE_OBJECTIVES


# ---------------------------------------------------------------------------
# Prompts.


@dataclass
class Prompt:
    messages: tuple[Message, ...]
    ids: list[int]  # the rendered prompt, ending with the template's generation prompt
    reference: str | None
    origin: str


def prompt_of(record: Record) -> tuple[tuple[Message, ...], str | None]:
    """(prompt turns, reference answer) of any record kind that holds a prompt."""
    if record.kind == "prompt":
        return record.messages, record.reference
    if record.kind in ("preference", "feedback"):
        return record.messages, None
    if record.kind == "chat" and record.messages[-1].role == "assistant":
        return record.messages[:-1], record.messages[-1].content  # the dataset's answer is the reference
    raise WhetstoneError(f"{record.origin}: a {record.kind} record holds no prompt; use format 'prompt' for ppo/grpo.")


def tokenize_prompts(records: list[Record], tokenizer, max_prompt_tokens: int) -> tuple[list[Prompt], int]:
    """(prompts, how many were dropped for being longer than max_prompt_tokens)."""
    prompts, dropped = [], 0
    for record in records:
        messages, reference = prompt_of(record)
        text = render_prompt(tokenizer, [{"role": m.role, "content": m.content} for m in messages])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_tokens:
            dropped += 1
            continue
        prompts.append(Prompt(messages, ids, reference, record.origin))
    return prompts, dropped


# ---------------------------------------------------------------------------
# Rollouts.


@dataclass
class Rollout:
    """N sampled completions, prompt left-padded to P, completion right-padded to L."""

    input_ids: torch.Tensor  # (N, P + L)
    attention_mask: torch.Tensor  # (N, P + L)
    mask: torch.Tensor  # (N, L) float: 1 on completion tokens through the first EOS
    n_prompt: int  # P
    texts: list[str]
    prompts: list[Prompt]
    scores: torch.Tensor | None = None  # (N,) weighted reward sum
    parts: dict[str, list[float]] | None = None
    old_logps: torch.Tensor | None = None  # (N, L) under the sampling policy
    ref_logps: torch.Tensor | None = None  # (N, L)
    values: torch.Tensor | None = None  # (N, L), ppo
    advantages: torch.Tensor | None = None  # (N, L)
    returns: torch.Tensor | None = None  # (N, L), ppo

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.n_prompt :]

    def rows(self, index: torch.Tensor) -> Rollout:
        """A minibatch of rollouts (tensors indexed along N; the Python lists are not needed there)."""
        pick = lambda t: None if t is None else t[index]
        return Rollout(self.input_ids[index], self.attention_mask[index], self.mask[index], self.n_prompt, [], [],
                       pick(self.scores), None, pick(self.old_logps), pick(self.ref_logps), pick(self.values),
                       pick(self.advantages), pick(self.returns))


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: list[Prompt], cfg, device) -> Rollout:
    """Sample one completion per prompt (repeat prompts for groups). Stops at EOS or max_new_tokens."""
    from transformers import GenerationConfig

    width = max(len(p.ids) for p in prompts)
    pad_id, stops = tokenizer.pad_token_id, stop_ids(tokenizer)  # the template's end of turn and EOS
    prompt_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (N, P), left-padded
    prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        prompt_ids[row, width - len(prompt.ids) :] = torch.tensor(prompt.ids)
        prompt_mask[row, width - len(prompt.ids) :] = 1
    # An explicit config: the model's own generation_config (top_k, repetition penalty...) would change
    # the distribution we sample from without telling the log-prob computation below.
    generation = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                                  max_new_tokens=cfg.max_new_tokens, eos_token_id=stops, pad_token_id=pad_id)
    output = model.generate(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device),
                            generation_config=generation)  # (N, P + L)
    completion = output[:, width:]
    is_eos = torch.isin(completion, torch.tensor(stops, device=completion.device))
    # Keep tokens up to and including the first EOS; what generate appended after it is padding.
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    mask = (~after_eos).float()  # (N, L)
    completion = completion.masked_fill(after_eos, pad_id)
    texts = tokenizer.batch_decode(completion.masked_fill(is_eos, pad_id), skip_special_tokens=True)
    input_ids = torch.cat([prompt_ids.to(device), completion], dim=1)
    attention_mask = torch.cat([prompt_mask.to(device), mask.long()], dim=1)
    return Rollout(input_ids, attention_mask, mask, width, [t.strip() for t in texts], list(prompts))


def completion_forward(model, rollout: Rollout, temperature: float, value_head=None):
    """Per-token (log-probs (N, L), entropies (N, L), values (N, L) or None) of the completions.

    Log-probs are of logits / temperature: the distribution the tokens were sampled from.
    Everything is 0 after a completion's end, so no ratio taken there can overflow.
    """
    lm = unwrap(model)
    position_ids = (rollout.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # as generate numbers left-padded rows
    hidden = lm.get_decoder()(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                              position_ids=position_ids, use_cache=False).last_hidden_state  # (N, P+L, H)
    hidden = hidden[:, rollout.n_prompt - 1 : -1]  # (N, L, H): position t predicts completion token t
    logits = logits_in_fp32(lm.get_output_embeddings(), hidden)  # (N, L, V): the cost of PPO is this tensor
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    all_logps = torch.log_softmax(logits / temperature, dim=-1)
    logps = all_logps.gather(-1, rollout.completion_ids[..., None]).squeeze(-1) * rollout.mask  # (N, L)
    entropy = -(all_logps.exp() * all_logps).sum(dim=-1) * rollout.mask  # (N, L)
    values = logits_in_fp32(value_head, hidden).squeeze(-1) * rollout.mask if value_head is not None else None  # (N, L)
    return logps, entropy, values


@dataclass
class Reference:
    copy: torch.nn.Module | None  # None: the policy with its adapters disabled

    @torch.no_grad()
    def logprobs(self, model, rollout: Rollout, temperature: float) -> torch.Tensor:
        if self.copy is not None:
            return completion_forward(self.copy, rollout, temperature)[0]
        with model.disable_adapter():
            return completion_forward(model, rollout, temperature)[0]


# ---------------------------------------------------------------------------
# Advantages and losses: small functions over (N, L) tensors; `mask` marks real completion tokens.


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


# ---------------------------------------------------------------------------
# The loop.


def train_online(config: RunConfig | None, run_dir=None, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, on_step: StepCallback | None = None, accept_changes: bool = False,
                 trust_remote_code: bool = False, allow_pickle: bool = False) -> dict:
    """Run (or resume) a ppo or grpo run; return the summary that is also written to summary.json.

    The grants are what a resumed run's model may do, as in `train`.
    """
    t_start = time.perf_counter()

    # ---- setup -----------------------------------------------------------------
    if resume:
        run, config = RunDirectory.open(run_dir, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    else:
        target = run_dir or config.output
        if target is None:
            raise WhetstoneError("no run directory: pass -o DIR or set output: in the config.")
        config, layout = resolve_fast_path(config, "single")  # rollouts keep one sequence per row: packing off
        print(layout, flush=True)
        run = RunDirectory.create(target, config, overwrite)
    cfg, obj = config.train, config.objective
    is_ppo = obj.name == "ppo"
    if distributed.world()[1] > 1:
        raise WhetstoneError(f"objective {obj.name} runs on one process; launch it without torchrun/accelerate.")
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    dtype = base_dtype(config, precision)  # refuses a base the method cannot train on, before any work
    announce_precision(precision, lambda line: print(line, flush=True))
    autocast = autocast_context(device, precision)
    _seed_everything(cfg.seed)

    tokenizer = load_tokenizer(config.model, config.data.chat_template)
    train_records, eval_records, _ = load_splits(config.data, cfg.seed)
    max_prompt = config.data.max_length - obj.max_new_tokens
    prompts, dropped = tokenize_prompts(train_records, tokenizer, max_prompt)
    eval_prompts, _ = tokenize_prompts(eval_records, tokenizer, max_prompt)
    if not prompts:
        raise WhetstoneError(f"data.train: no prompt fits in data.max_length - objective.max_new_tokens = {max_prompt} "
                             f"tokens; raise data.max_length or lower objective.max_new_tokens.")
    print(f"data: {len(prompts)} training prompts ({dropped} longer than {max_prompt} tokens dropped), "
          f"{len(eval_prompts)} eval prompts", flush=True)
    start = starting_point(run, config, resume, accept_changes)  # a resume that cannot go on stops here

    model, resolved = load_model(config.model, device=device, dtype=dtype)
    model = apply_method(model, config.method, autocast_bf16=precision.resolved == "bf16")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = None
    if is_adapter_model(model):
        reference = Reference(copy=None)  # free: the policy with its adapters off; it also measures KL in grpo
    elif is_ppo or obj.kl_coef > 0:  # a frozen copy of the starting weights: 2x the model in memory
        reference = Reference(copy=copy.deepcopy(model).eval().requires_grad_(False))
    value_head = None
    if is_ppo:
        # The value head shares the policy's backbone; zero-initialised, so V starts at 0.
        lm = unwrap(model)
        value_head = torch.nn.Linear(lm.config.hidden_size, 1).to(device)
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
        lm.v_head = value_head  # registered on the model, so the optimizer and checkpoints see it
    trainable, total = count_parameters(model)
    print(f"model: {config.model.name} on {device.type}; method {config.method.name}: "
          f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)", flush=True)
    # The config is the user's own (a resumed one was checked against this command's flags when it opened),
    # so its model grants extend to the reward runs it names; their own config.yaml grants nothing.
    rewards = load_rewards(obj.reward, device, trust_remote_code=config.model.trust_remote_code,
                           allow_pickle=config.model.allow_pickle)

    group = obj.num_generations if not is_ppo else 1
    rounds_per_epoch = math.ceil(len(prompts) / obj.rollout_batch_size)
    total_rounds = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * rounds_per_epoch))
    minibatch = cfg.batch_size * cfg.grad_accum
    steps_per_round = obj.ppo_epochs * math.ceil(obj.rollout_batch_size * group / minibatch)
    optimizer = build_optimizer(model, cfg)
    total_steps = total_rounds * steps_per_round
    warmup_steps = math.ceil(cfg.warmup * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total_steps, warmup_steps, cfg.schedule)
    )
    kl_ctl = AdaptiveKL(obj.kl_coef, obj.kl_target, obj.kl_horizon)
    state = start.restore(model, optimizer, scheduler)
    if start.checkpoint is not None:
        kl_ctl.value = state.extra.get("kl_coef", kl_ctl.value)
        print(f"resumed from {start.checkpoint} at round {state.step} of {total_rounds}", flush=True)
    if resume:
        run.truncate_metrics(state.step)
    model.eval()  # see the module docstring: no dropout, in rollouts and updates alike

    def evaluate() -> dict:
        return evaluate_policy(model, tokenizer, eval_prompts, rewards, reference, obj, device, autocast,
                               cfg.seed, config.eval.max_batches)

    before = evaluate() if eval_prompts and state.step == 0 else {}
    if before:
        run.append_metrics({"step": 0, **{f"eval_{k}": round(v, 6) for k, v in before.items()}})
        print(f"before training: eval reward {before['reward']:.4f}", flush=True)

    # ---- fit -------------------------------------------------------------------
    last_eval = {}
    stopped_early = False
    bar = tqdm(total=total_rounds, initial=state.step, unit="round", dynamic_ncols=True, disable=not progress,
               file=sys.stderr)
    with StopSignal() as stop:
        while state.step < total_rounds:
            t_round = time.perf_counter()
            # 1. rollout: this round's prompts, in an order fixed by (seed, epoch) as in the offline loop
            epoch, i = divmod(state.step, rounds_per_epoch)
            order = epoch_order(len(prompts), cfg.seed, epoch)
            chosen = [prompts[j] for j in order[i * obj.rollout_batch_size : (i + 1) * obj.rollout_batch_size]]
            batch_prompts = [p for p in chosen for _ in range(group)]  # grpo: each prompt G times, adjacent
            with autocast():
                rollout = sample_completions(model, tokenizer, batch_prompts, obj, device)
            # 2. score
            scores, parts = score_completions(rewards, [p.messages for p in batch_prompts], rollout.texts,
                                              [p.reference for p in batch_prompts])
            rollout.scores = torch.tensor(scores, dtype=torch.float32, device=device)
            rollout.parts = parts
            # 3. measure: log-probs of the sampling policy (and reference), values
            with torch.no_grad(), autocast():
                rollout.old_logps, _, rollout.values = completion_forward(model, rollout, obj.temperature, value_head)
                if reference is not None:
                    rollout.ref_logps = reference.logprobs(model, rollout, obj.temperature)
            kl_tokens = (rollout.old_logps - rollout.ref_logps) * rollout.mask if reference is not None else None
            # 4. advantages
            if is_ppo:
                token_rewards = ppo_token_rewards(rollout.scores, rollout.old_logps, rollout.ref_logps,
                                                  rollout.mask, kl_ctl.value)
                advantages, rollout.returns = gae(token_rewards, rollout.values, rollout.mask, obj.gamma, obj.lam)
                rollout.advantages = whiten(advantages, rollout.mask)
            else:
                rollout.advantages = group_advantages(rollout.scores, group)[:, None] * rollout.mask
            # 5. update
            update = ppo_update(model, optimizer, scheduler, rollout, obj, cfg, value_head, autocast, state.step)
            if is_ppo and obj.adaptive_kl:
                kl_ctl.update(float(kl_tokens.sum(dim=1).mean()), len(batch_prompts))

            seconds = time.perf_counter() - t_round
            tokens = int(rollout.attention_mask.sum())
            state.step += 1
            state.tokens += tokens
            state.train_seconds += seconds
            state.extra["kl_coef"] = kl_ctl.value
            row = {
                "step": state.step,
                "loss": round(update["loss"], 6),
                "lr": update["lr"],
                "tokens": state.tokens,
                "tokens_per_s": round(tokens / max(seconds, 1e-9), 2),
                "elapsed_s": round(time.perf_counter() - t_start, 3),
                "reward": round(float(rollout.scores.mean()), 6),
                **{f"reward/{name}": round(sum(v) / len(v), 6) for name, v in parts.items()},
                "kl": round(float(kl_tokens.sum(dim=1).mean()), 6) if kl_tokens is not None else None,
                "kl_coef": round(kl_ctl.value, 6),
                "response_length": round(float(rollout.mask.sum(dim=1).mean()), 3),
                **{k: round(v, 6) for k, v in update.items() if k not in ("loss", "lr")},
            }
            done = state.step == total_rounds
            if eval_prompts and (state.step % config.eval.every == 0 or done):
                last_eval = evaluate()
                row.update({f"eval_{k}": round(v, 6) for k, v in last_eval.items()})
            run.append_metrics(row)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl'] or 0:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
            if not math.isfinite(update["loss"]):
                raise WhetstoneError(f"the loss became {update['loss']} at round {state.step}; lower train.lr.")
            wants_stop = stop.requested or (on_step is not None and on_step(state.step, row))
            if state.step % cfg.checkpoint_every == 0 or done or wants_stop:
                save_checkpoint(run.checkpoints, model, optimizer, scheduler, state, cfg.keep_checkpoints)
            if wants_stop and not done:
                stopped_early = True
                break
    bar.close()

    # ---- save ------------------------------------------------------------------
    if value_head is not None:
        del unwrap(model).v_head  # the policy is the product; the value head was scaffolding
    rows = [r for r in run.read_metrics() if "loss" in r]
    first_eval = next((r for r in run.read_metrics() if "eval_reward" in r), {})
    summary = {
        "train_loss": rows[-1]["loss"] if rows else None,
        "eval_loss": None,  # online RL has no held-out loss; eval_reward is its held-out figure
        "eval_reward_before": first_eval.get("eval_reward"),
        **{f"eval_{k}": round(v, 6) for k, v in last_eval.items()},
        "rounds": state.step,
        "total_rounds": total_rounds,
        "stopped_early": stopped_early,
        "accepted_changes": state.accepted_changes,  # what --accept-changes let a resume continue on
        "tokens": state.tokens,
        "tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 2),
        "train_s": round(state.train_seconds, 3),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": round(100 * trainable / total, 4),
        "method": config.method.name,
        "objective": obj.name,
        "device": device.type,
    } | precision_entries(precision, dtype)
    if not stopped_early:
        interpolate_toward_base(model, config.method.interpolate)
        _save_weights(model, tokenizer, run.path, resolved.path)
    run.write_json("summary.json", summary)
    run.finish(summary)  # report.html, and the trackers of log.to are closed, as in the offline loop
    if stopped_early:
        print(f"stopped at round {state.step} of {total_rounds}; continue with: whetstone train --resume {run.path}")
    else:
        print(f"done: {run.path} (eval reward {summary.get('eval_reward_before')} -> {summary.get('eval_reward')})")
    return summary


def ppo_update(model, optimizer, scheduler, rollout: Rollout, obj, cfg, value_head, autocast, round_index: int):
    """`ppo_epochs` passes over the rollouts in minibatches of batch_size x grad_accum; returns their mean metrics."""
    n = rollout.input_ids.shape[0]
    minibatch = cfg.batch_size * cfg.grad_accum
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + round_index)
    sums: dict[str, float] = {}
    steps = 0
    for _ in range(obj.ppo_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, minibatch):
            chunk = order[start : start + minibatch]
            # ppo averages over the minibatch's tokens; grpo over each completion's tokens, then over completions.
            # Per-token weights make either a plain weighted sum, so micro-batches add up to the minibatch.
            completions_or_tokens = float(rollout.mask[chunk].sum()) if value_head is not None else len(chunk)
            for micro in chunk.split(cfg.batch_size):
                part = rollout.rows(micro.to(rollout.input_ids.device))
                weights = part.mask / completions_or_tokens  # (n, L)
                if value_head is None:
                    weights = weights / part.mask.sum(dim=1, keepdim=True).clamp(min=1)
                with autocast():
                    logps, entropy, values = completion_forward(model, part, obj.temperature, value_head)
                policy, clipped = clipped_policy_loss(logps, part.old_logps, part.advantages, obj.clip_range)
                terms = {"policy_loss": policy}
                loss_tokens = policy
                if value_head is not None:
                    terms["value_loss"] = clipped_value_loss(values, part.values, part.returns, obj.value_clip)
                    loss_tokens = loss_tokens + obj.vf_coef * terms["value_loss"]
                elif part.ref_logps is not None and obj.kl_coef > 0:
                    terms["kl_loss"] = k3_kl(logps, part.ref_logps)
                    loss_tokens = loss_tokens + obj.kl_coef * terms["kl_loss"]
                loss = (loss_tokens * weights).sum()
                loss.backward()
                terms.update(loss=loss_tokens, clipfrac=clipped, entropy=entropy,
                             approx_kl=0.5 * (logps - part.old_logps) ** 2)
                for key, per_token in terms.items():
                    sums[key] = sums.get(key, 0.0) + float((per_token.detach() * weights).sum())
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], cfg.max_grad_norm)
            sums["lr_sum"] = sums.get("lr_sum", 0.0) + scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    out = {k: v / steps for k, v in sums.items() if k != "lr_sum"}
    out["lr"] = sums["lr_sum"] / steps
    return out


@torch.no_grad()
def evaluate_policy(model, tokenizer, prompts: list[Prompt], rewards: list[Reward], reference: Reference | None,
                    obj, device, autocast=contextlib.nullcontext, seed: int = 0,
                    max_batches: int | None = None) -> dict[str, float]:
    """Mean reward, KL to the reference (nats per completion) and length of one sample per held-out prompt.

    Sampling uses a fixed seed (and leaves the training RNG untouched), so evaluations
    before and after training draw comparable samples.
    """
    totals: dict[str, float] = {}
    count = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + 7919)
        for n, start in enumerate(range(0, len(prompts), obj.rollout_batch_size)):
            if max_batches is not None and n >= max_batches:
                break
            chunk = prompts[start : start + obj.rollout_batch_size]
            with autocast():
                rollout = sample_completions(model, tokenizer, chunk, obj, device)
            scores, parts = score_completions(rewards, [p.messages for p in chunk], rollout.texts,
                                              [p.reference for p in chunk])
            values = {"reward": sum(scores), "response_length": float(rollout.mask.sum())}
            values.update({f"reward/{k}": sum(v) for k, v in parts.items()})
            if reference is not None:
                with autocast():
                    logps = completion_forward(model, rollout, obj.temperature)[0]
                    ref_logps = reference.logprobs(model, rollout, obj.temperature)
                values["kl"] = float(((logps - ref_logps) * rollout.mask).sum())
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value
            count += len(chunk)
    return {k: v / max(count, 1) for k, v in totals.items()}
