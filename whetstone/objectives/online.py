"""The online objectives, ppo (RLHF) and grpo: each step of the training loop is a ROUND that makes its own data.

    1. rollout    sample completions for `rollout_batch_size` prompts (grpo: `num_generations`
                  per prompt) with temperature / top-p, stopping at the template's end of turn
    2. score      the weighted sum of the rewards (reward-model runs, Python functions: whetstone/rewards/)
    3. measure    log-probs under the sampling policy and the reference, values (ppo)
    4. advantage  ppo: per-token reward = -kl_coef * (log pi - log pi_ref), plus the score on the
                  last token; GAE over the values (Schulman et al. 2016)
                  grpo: (score - group mean) / group std, the same for every token (Shao et al. 2024)
    5. update     `ppo_epochs` passes of minibatch steps with the clipped policy loss
                  (Schulman et al. 2017), the clipped value loss (ppo) or the k3 KL term (grpo)

grpo's variants (objective.variant: dr_grpo, dapo, gspo, rloo, reinforce_pp) change step 4's advantage and
step 5's ratio, clip and aggregation (the registries in policy.py; config.GRPO_VARIANTS picks them), and DAPO's
adds two things to steps 1-2: the overlong penalty on the score, and dynamic sampling (`sample_groups`).

The losses are in objectives/policy.py. The loop (train/loop.py) does the rest as for any objective: setup,
resume, the optimizer step with its NaN guard, logging (metrics.jsonl has one row per round), checkpoints and
the summary. The model stays in eval mode throughout: dropout would make the rollout's log-probs disagree with
the update's before any weight has moved (gradients flow in eval mode all the same).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from dataclasses import dataclass, field

import torch

from whetstone.config import PolicyKnobs, RunConfig
from whetstone.data.batches import epoch_order
from whetstone.data.records import Message, Record
from whetstone.data.render import render_prompt, stop_ids
from whetstone.data.tool_parse import tool_call_format
from whetstone.errors import WhetstoneError
from whetstone.methods import is_adapter_model
from whetstone.models.forward import logits_in_fp32, unwrap
from whetstone.objectives.base import OnlineObjective, OptimizerStep, StepOutput
from whetstone.objectives.logprobs import Reference
from whetstone.objectives.policy import (ADVANTAGES, AGGREGATIONS, RATIOS, AdaptiveKL, clipped_ratio_loss,
                                         clipped_value_loss, gae, k3_kl, overlong_penalty, ppo_token_rewards, whiten)
from whetstone.objectives.tool_rollouts import Generate, Turns, policy_sampler, rollout_tensors, tool_rollout
from whetstone.objectives.vllm_engine import VLLMEngine, require_vllm
from whetstone.rewards import Reward, load_rewards, score_completions
from whetstone.tools import Tool, load_tools


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


def tokenize_prompts(records: list[Record], tokenizer, max_prompt_tokens: int,
                     tools: dict[str, Tool] | None = None) -> tuple[list[Prompt], int]:
    """(prompts, how many were dropped for being longer than max_prompt_tokens); `tools` are shown in each."""
    prompts, dropped = [], 0
    schemas = [tool.schema for tool in tools.values()] if tools else None
    for record in records:
        messages, reference = prompt_of(record)
        text = render_prompt(tokenizer, [{"role": m.role, "content": m.content} for m in messages], tools=schemas)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_tokens:
            dropped += 1
            continue
        prompts.append(Prompt(messages, ids, reference, record.origin))
    return prompts, dropped


@dataclass
class PromptSets:
    train: list[Prompt]
    eval: list[Prompt]
    dropped: int  # training prompts longer than max_prompt tokens
    max_prompt: int
    tools: dict[str, Tool] = field(default_factory=dict)  # objective.tools, by name


def prepare_prompts(train_records: list[Record], eval_records: list[Record], tokenizer,
                    config: RunConfig) -> PromptSets:
    """The run's prompts, rendered; a prompt leaves objective.max_new_tokens of data.max_length for its answer."""
    if config.objective.engine == "vllm":
        require_vllm()  # before the model loads
    max_prompt = config.data.max_length - config.objective.max_new_tokens
    tools = load_tools(config.objective.tools)
    if tools and tool_call_format(tokenizer) is None:
        raise WhetstoneError("objective.tools: the model's chat template has no tool-call format whetstone can read "
                             "(hermes, llama3, mistral or harmony: data/tool_parse.py), so a rollout could not call "
                             "a tool; use a model whose template offers tools, or set data.chat_template.")
    prompts, dropped = tokenize_prompts(train_records, tokenizer, max_prompt, tools)
    eval_prompts, _ = tokenize_prompts(eval_records, tokenizer, max_prompt, tools)
    if not prompts:
        raise WhetstoneError(f"data.train: no prompt fits in data.max_length - objective.max_new_tokens = {max_prompt} "
                             f"tokens; raise data.max_length or lower objective.max_new_tokens.")
    return PromptSets(prompts, eval_prompts, dropped, max_prompt, tools)


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
    tool_calls: list[int] | None = None  # tool calls each completion made (objective.tools)

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


def completion_states(model, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states (N, L, H), fp32 logits (N, L, V)) at the positions that predict each completion token."""
    lm = unwrap(model)
    position_ids = (rollout.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # as generate numbers left-padded rows
    hidden = lm.get_decoder()(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                              position_ids=position_ids, use_cache=False).last_hidden_state  # (N, P+L, H)
    hidden = hidden[:, rollout.n_prompt - 1 : -1]  # (N, L, H): position t predicts completion token t
    logits = logits_in_fp32(lm.get_output_embeddings(), hidden)  # (N, L, V): the cost of PPO is this tensor
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return hidden, logits


def completion_forward(model, rollout: Rollout, temperature: float, value_head=None):
    """Per-token (log-probs (N, L), entropies (N, L), values (N, L) or None) of the completions.

    Log-probs are of logits / temperature: the distribution the tokens were sampled from.
    Everything is 0 after a completion's end, so no ratio taken there can overflow.
    """
    hidden, logits = completion_states(model, rollout)
    all_logps = torch.log_softmax(logits / temperature, dim=-1)
    logps = all_logps.gather(-1, rollout.completion_ids[..., None]).squeeze(-1) * rollout.mask  # (N, L)
    entropy = -(all_logps.exp() * all_logps).sum(dim=-1) * rollout.mask  # (N, L)
    values = logits_in_fp32(value_head, hidden).squeeze(-1) * rollout.mask if value_head is not None else None  # (N, L)
    return logps, entropy, values


def sample_rollout(model, tokenizer, prompts: list[Prompt], cfg, device, tools: dict[str, Tool] | None,
                   generate: Generate | None = None) -> Rollout:
    """One sampled completion per prompt: `sample_completions`; or built from lists of new token ids, with tools
    completions that may call them (objectives/tool_rollouts.py: the tool results are in the completion with
    mask 0), and with `generate` (the vLLM engine, objective.engine vllm) its samples."""
    if not tools and generate is None:
        return sample_completions(model, tokenizer, prompts, cfg, device)
    generate = generate or policy_sampler(model, tokenizer, cfg.temperature, cfg.top_p, device)
    if tools:
        turns = tool_rollout([(p.ids, [{"role": m.role, "content": m.content} for m in p.messages]) for p in prompts],
                             generate, tokenizer, tools, cfg.max_new_tokens, cfg.max_tool_calls, cfg.tool_timeout)
    else:
        turns = [Turns([], [(new[: cfg.max_new_tokens], True)])
                 for new in generate([p.ids for p in prompts], cfg.max_new_tokens)]
    t = rollout_tensors([p.ids for p in prompts], turns, tokenizer.pad_token_id, device)
    # The rewards score the final answer: the last tokens the policy wrote.
    answers = [next((ids for ids, sampled in reversed(turn.segments) if sampled), []) for turn in turns]
    texts = [text.strip() for text in tokenizer.batch_decode(answers, skip_special_tokens=True)]
    return Rollout(t["input_ids"], t["attention_mask"], t["mask"], t["n_prompt"], texts, list(prompts),
                   tool_calls=[turn.calls for turn in turns] if tools else None)


def reference_logprobs(reference: Reference, model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """Per-token log-probs (N, L) of the completions under the reference."""
    return reference.run(model, lambda m, r: completion_forward(m, r, temperature)[0], rollout)


# ---------------------------------------------------------------------------
# The rounds.


class OnlineRun:
    """A ppo or grpo run's rounds, as the training loop drives them: `step` is one round, `evaluate` samples one
    answer per held-out prompt. Built after the policy (and before the optimizer, which must see the value head)."""

    eval_before_training = True  # the held-out reward before any update: the "before" of the run
    logs_every_step = True  # one metrics.jsonl row per round
    train_mode = False  # see the module docstring: no dropout, in rollouts and updates alike
    steps_per_epoch = None  # rounds draw prompts by epoch, but a round is not a fixed share of one

    def __init__(self, model, config: RunConfig, prompts: PromptSets, tokenizer, device, autocast):
        cfg, obj = config.train, config.objective
        self.model, self.config, self.prompts, self.tokenizer = model, config, prompts, tokenizer
        self.device, self.autocast = device, autocast
        self.is_ppo = obj.name == "ppo"
        self.reference = None
        if is_adapter_model(model):
            self.reference = Reference(copy=None)  # free: the policy with its adapters off; it also measures KL in grpo
        elif self.is_ppo or obj.kl_coef > 0:  # a frozen copy of the starting weights: 2x the model in memory
            self.reference = Reference(copy=copy.deepcopy(model).eval().requires_grad_(False))
        self.value_head = None
        if self.is_ppo:
            # The value head shares the policy's backbone; zero-initialised, so V starts at 0.
            lm = unwrap(model)
            self.value_head = torch.nn.Linear(lm.config.hidden_size, 1).to(device)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
            lm.v_head = self.value_head  # registered on the model, so the optimizer and checkpoints see it
        # The config is the user's own (a resumed one was checked against this command's flags when it opened),
        # so its model grants extend to the reward runs it names; their own config.yaml grants nothing.
        self.rewards = load_rewards(obj.reward, device, trust_remote_code=config.model.trust_remote_code,
                                    allow_pickle=config.model.allow_pickle)
        self.group = obj.num_generations if not self.is_ppo else 1
        self.rounds_per_epoch = math.ceil(len(prompts.train) / obj.rollout_batch_size)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else \
            max(1, math.ceil(cfg.epochs * self.rounds_per_epoch))
        minibatch = cfg.batch_size * cfg.grad_accum
        self.optimizer_steps = self.total_steps * obj.ppo_epochs * math.ceil(obj.rollout_batch_size * self.group /
                                                                             minibatch)
        self.kl = AdaptiveKL(obj.kl_coef, obj.kl_target, obj.kl_horizon)
        self.knobs = obj.policy_knobs()
        self.can_evaluate = bool(prompts.eval)
        # objective.engine vllm: a vLLM copy of the policy samples; `engine_stale` says the policy has changed
        # since its last sync (the weights a resume loaded, an update, the interpolation after the last round).
        self.engine = VLLMEngine.for_run(model, config, tokenizer, autocast) if obj.engine == "vllm" else None
        self.engine_stale = True

    def describe(self) -> str:
        p = self.prompts
        return (f"data: {len(p.train)} training prompts ({p.dropped} longer than {p.max_prompt} tokens dropped), "
                f"{len(p.eval)} eval prompts")

    def restore(self, extra: dict) -> None:
        """Resume: the adaptive KL coefficient as the checkpoint left it (and the weights it loaded, for vLLM)."""
        self.kl.value = extra.get("kl_coef", self.kl.value)
        self.engine_stale = True

    def sampler(self, seed: int | None = None) -> Generate | None:
        """The vLLM engine's `Generate`, synced to the policy first if the policy has changed since; None with
        objective.engine hf, where the policy samples itself. `seed`: VLLMEngine.generate's."""
        if self.engine is None:
            return None
        if self.engine_stale:
            self.engine.sync(self.model)
            self.engine_stale = False
        return functools.partial(self.engine.generate, seed=seed)

    def step(self, index: int, optimizer_step: OptimizerStep) -> StepOutput:
        """Round `index`: rollout, score, measure, advantages, update."""
        cfg, obj = self.config.train, self.config.objective
        t_round = time.perf_counter()
        # 1. rollout: this round's prompts, in an order fixed by (seed, epoch) as in the offline loop
        epoch, i = divmod(index, self.rounds_per_epoch)
        order = epoch_order(len(self.prompts.train), cfg.seed, epoch)
        chosen = [self.prompts.train[j] for j in order[i * obj.rollout_batch_size : (i + 1) * obj.rollout_batch_size]]
        # 2. score (dynamic sampling: of every sampling pass, keeping the groups whose rewards differ)
        t_sample = time.perf_counter()
        rollout, sampling = self.sample_groups(chosen, index)
        sampling["rollout_s"] = round(time.perf_counter() - t_sample, 3)
        sampling["rollout_tokens_per_s"] = round(sampling["sampled_tokens"] / max(sampling["rollout_s"], 1e-9), 2)
        if rollout is None:  # every group's rewards agreed in every pass: nothing to learn from this round
            return StepOutput(loss_sum=0.0, units=0, tokens=0, tokens_read=0, supervised_tokens=0, lr=0.0,
                              entries={**sampling, "update_skipped": True}, extra={"kl_coef": self.kl.value},
                              seconds=time.perf_counter() - t_round)
        batch_prompts, parts = rollout.prompts, rollout.parts
        # 3. measure: log-probs of the sampling policy (and reference), values
        with torch.no_grad(), self.autocast():
            rollout.old_logps, _, rollout.values = completion_forward(self.model, rollout, obj.temperature,
                                                                      self.value_head)
            if self.reference is not None:
                rollout.ref_logps = reference_logprobs(self.reference, self.model, rollout, obj.temperature)
        kl_tokens = (rollout.old_logps - rollout.ref_logps) * rollout.mask if self.reference is not None else None
        # 4. advantages
        if self.is_ppo:
            token_rewards = ppo_token_rewards(rollout.scores, rollout.old_logps, rollout.ref_logps, rollout.mask,
                                              self.kl.value)
            advantages, rollout.returns = gae(token_rewards, rollout.values, rollout.mask, obj.gamma, obj.lam)
            rollout.advantages = whiten(advantages, rollout.mask)
        else:
            token_kl = self.kl.value * kl_tokens if self.knobs.kl_penalty == "reward" and kl_tokens is not None \
                else None
            rollout.advantages = ADVANTAGES[self.knobs.advantage](rollout.scores, rollout.mask, self.group, token_kl)
        # 5. update
        update = ppo_update(self.model, rollout, obj, cfg, self.value_head, self.autocast, index, optimizer_step,
                            self.knobs)
        self.engine_stale = True  # vLLM syncs before it next samples
        if self.is_ppo and obj.adaptive_kl:
            self.kl.update(float(kl_tokens.sum(dim=1).mean()), len(batch_prompts))
        tokens = int(rollout.attention_mask.sum())
        entries = {
            "reward": round(float(rollout.scores.mean()), 6),
            **{f"reward/{name}": round(sum(v) / len(v), 6) for name, v in parts.items()},
            "kl": round(float(kl_tokens.sum(dim=1).mean()), 6) if kl_tokens is not None else None,
            "kl_coef": round(self.kl.value, 6),
            "response_length": round(float(rollout.mask.sum(dim=1).mean()), 3),
            **({"tool_calls": round(sum(rollout.tool_calls) / len(rollout.tool_calls), 3)}
               if rollout.tool_calls is not None else {}),
            **{k: round(v, 6) for k, v in update.items() if k not in ("loss", "lr")},
            **sampling,
        }
        # The round's loss is already a mean (over its minibatch steps): one unit.
        return StepOutput(loss_sum=update["loss"], units=1, tokens=tokens, tokens_read=tokens,
                          supervised_tokens=int(rollout.mask.sum()), lr=update["lr"], entries=entries,
                          extra={"kl_coef": self.kl.value}, seconds=time.perf_counter() - t_round)

    def sample_and_score(self, chosen: list[Prompt]) -> Rollout:
        """num_generations completions of each prompt (adjacent rows), scored; DAPO's overlong penalty added."""
        obj = self.config.objective
        batch_prompts = [p for p in chosen for _ in range(self.group)]  # grpo: each prompt G times, adjacent
        generate = self.sampler()  # outside autocast: a sync merges adapters in their own precision
        with self.autocast():
            rollout = sample_rollout(self.model, self.tokenizer, batch_prompts, obj, self.device, self.prompts.tools,
                                     generate)
        scores, parts = score_completions(self.rewards, [p.messages for p in batch_prompts], rollout.texts,
                                          [p.reference for p in batch_prompts])
        rollout.scores = torch.tensor(scores, dtype=torch.float32, device=self.device)
        rollout.parts = parts
        if self.knobs.overlong_buffer:
            penalty = overlong_penalty(rollout.mask.sum(dim=1), obj.max_new_tokens, self.knobs.overlong_buffer)
            rollout.scores = rollout.scores + penalty
            parts["overlong"] = penalty.tolist()
        return rollout

    def sample_groups(self, chosen: list[Prompt], index: int) -> tuple[Rollout | None, dict]:
        """(The round's scored rollout, its sampling entries). With dynamic sampling (DAPO, Yu et al. 2025), groups
        whose rewards are all equal (advantage 0: no gradient) are dropped and more prompts are sampled, as many
        as groups are missing, until rollout_batch_size groups are kept or max_sampling_rounds passes ran. The
        extra prompts are fixed by (seed, round, pass). None when no group was kept."""
        rollout = self.sample_and_score(chosen)
        sampled = int(rollout.mask.sum())  # completion tokens the policy sampled, in every pass
        if not self.knobs.dynamic_sampling:
            return rollout, {"sampled_tokens": sampled}
        wanted = self.config.objective.rollout_batch_size
        kept, dropped, passes = [], 0, 0
        while True:
            passes += 1
            grouped = rollout.scores.view(-1, self.group)  # (prompts, G)
            differ = (grouped != grouped[:, :1]).any(dim=1).tolist()
            dropped += differ.count(False)
            kept += [select_groups(rollout, [g for g, d in enumerate(differ) if d], self.group)]
            have = sum(len(r.prompts) // self.group for r in kept)
            if have >= wanted or passes >= self.knobs.max_sampling_rounds:
                break
            order = epoch_order(len(self.prompts.train), self.config.train.seed * 1_000_003 + index, passes)
            rollout = self.sample_and_score([self.prompts.train[j] for j in order[: wanted - have]])
            sampled += int(rollout.mask.sum())
        entries = {"groups_dropped": dropped, "sampling_rounds": passes, "sampled_tokens": sampled}
        kept = [r for r in kept if r.prompts]
        if not kept:
            return None, entries
        return concat_rollouts(kept, self.tokenizer.pad_token_id), entries

    def evaluate(self) -> dict:
        seed = self.config.train.seed
        results = evaluate_policy(self.model, self.tokenizer, self.prompts.eval, self.rewards, self.reference,
                                  self.config.objective, self.device, self.autocast, seed,
                                  self.config.eval.max_batches, self.prompts.tools, self.sampler(seed + 7919))
        return {f"eval_{k}": round(v, 6) for k, v in results.items()}

    def finish(self) -> None:
        """Before the weights are saved: the policy is the product; the value head was scaffolding."""
        if self.value_head is not None:
            del unwrap(self.model).v_head
        self.engine_stale = True  # the loop may still move the weights (method.interpolate) and evaluate


def setup_online(model, config: RunConfig, prompts: PromptSets, tokenizer, device, autocast) -> OnlineRun:
    return OnlineRun(model, config, prompts, tokenizer, device, autocast)


PPO = OnlineObjective("ppo", prepare=prepare_prompts, setup=setup_online)
GRPO = OnlineObjective("grpo", prepare=prepare_prompts, setup=setup_online)

def select_groups(rollout: Rollout, groups: list[int], group_size: int) -> Rollout:
    """The rows of the given groups (group g is rows g*G .. g*G + G - 1), with their texts, prompts and scores."""
    rows = [g * group_size + k for g in groups for k in range(group_size)]
    index = torch.tensor(rows, dtype=torch.long, device=rollout.input_ids.device)
    return Rollout(rollout.input_ids[index], rollout.attention_mask[index], rollout.mask[index], rollout.n_prompt,
                   [rollout.texts[r] for r in rows], [rollout.prompts[r] for r in rows], rollout.scores[index],
                   {k: [v[r] for r in rows] for k, v in rollout.parts.items()},
                   tool_calls=None if rollout.tool_calls is None else [rollout.tool_calls[r] for r in rows])


def concat_rollouts(rollouts: list[Rollout], pad_id: int) -> Rollout:
    """Scored rollouts of several sampling passes as one: prompts left-padded to the widest P, completions
    right-padded to the longest L (padding has attention 0 and mask 0)."""
    if len(rollouts) == 1:
        return rollouts[0]
    width = max(r.n_prompt for r in rollouts)
    length = max(r.mask.shape[1] for r in rollouts)

    def pad(r: Rollout, t: torch.Tensor, value) -> torch.Tensor:  # (n, P + L) -> (n, width + length)
        return torch.nn.functional.pad(t, (width - r.n_prompt, length - r.mask.shape[1]), value=value)

    return Rollout(torch.cat([pad(r, r.input_ids, pad_id) for r in rollouts]),
                   torch.cat([pad(r, r.attention_mask, 0) for r in rollouts]),
                   torch.cat([torch.nn.functional.pad(r.mask, (0, length - r.mask.shape[1])) for r in rollouts]),
                   width, [t for r in rollouts for t in r.texts], [p for r in rollouts for p in r.prompts],
                   torch.cat([r.scores for r in rollouts]),
                   {k: [v for r in rollouts for v in r.parts[k]] for k in rollouts[0].parts},
                   tool_calls=None if rollouts[0].tool_calls is None else [c for r in rollouts for c in r.tool_calls])


def ppo_update(model, rollout: Rollout, obj, cfg, value_head, autocast, round_index: int,
               optimizer_step: OptimizerStep, knobs: PolicyKnobs) -> dict[str, float]:
    """`ppo_epochs` passes over the rollouts in minibatches of batch_size x grad_accum; returns their mean metrics.

    `knobs` pick the ratio, the clip, the aggregation and whether the k3 KL term is in the loss."""
    n = rollout.input_ids.shape[0]
    minibatch = cfg.batch_size * cfg.grad_accum
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + round_index)
    sums: dict[str, float] = {}
    steps = 0
    for _ in range(obj.ppo_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, minibatch):
            chunk = order[start : start + minibatch]
            # ppo averages over the minibatch's tokens; grpo (by default) over each completion's tokens, then over
            # completions. Per-token weights make either a plain weighted sum, so micro-batches add up to the minibatch.
            minibatch_mask = rollout.mask[chunk]  # (m, L)
            minibatch_loss = 0.0
            for micro in chunk.split(cfg.batch_size):
                part = rollout.rows(micro.to(rollout.input_ids.device))
                weights = AGGREGATIONS[knobs.aggregation](part.mask, minibatch_mask, obj.max_new_tokens)  # (n, L)
                with autocast():
                    logps, entropy, values = completion_forward(model, part, obj.temperature, value_head)
                ratio = RATIOS[knobs.ratio](logps, part.old_logps, part.mask)  # (n, L) or (n, 1)
                policy, clipped = clipped_ratio_loss(ratio, part.advantages, knobs.clip_low, knobs.clip_high)
                terms = {"policy_loss": policy}
                loss_tokens = policy
                if value_head is not None:
                    terms["value_loss"] = clipped_value_loss(values, part.values, part.returns, obj.value_clip)
                    loss_tokens = loss_tokens + obj.vf_coef * terms["value_loss"]
                elif part.ref_logps is not None and obj.kl_coef > 0 and knobs.kl_penalty == "loss":
                    terms["kl_loss"] = k3_kl(logps, part.ref_logps)
                    loss_tokens = loss_tokens + obj.kl_coef * terms["kl_loss"]
                loss = (loss_tokens * weights).sum()
                loss.backward()
                minibatch_loss += float(loss.detach())
                terms.update(loss=loss_tokens, clipfrac=clipped, entropy=entropy,
                             approx_kl=0.5 * (logps - part.old_logps) ** 2)
                for key, per_token in terms.items():
                    sums[key] = sums.get(key, 0.0) + float((per_token.detach() * weights).sum())
            _, lr = optimizer_step(minibatch_loss, [rollout.prompts[int(j)].origin for j in chunk])
            sums["lr_sum"] = sums.get("lr_sum", 0.0) + lr
            steps += 1
    out = {k: v / steps for k, v in sums.items() if k != "lr_sum"}
    out["lr"] = sums["lr_sum"] / steps
    return out


@torch.no_grad()
def evaluate_policy(model, tokenizer, prompts: list[Prompt], rewards: list[Reward], reference: Reference | None,
                    obj, device, autocast=contextlib.nullcontext, seed: int = 0,
                    max_batches: int | None = None, tools: dict[str, Tool] | None = None,
                    generate: Generate | None = None) -> dict[str, float]:
    """Mean reward, KL to the reference (nats per completion) and length of one sample per held-out prompt.

    Sampling uses a fixed seed (and leaves the training RNG untouched), so evaluations
    before and after training draw comparable samples. `generate`: the vLLM engine's, seeded likewise.
    """
    totals: dict[str, float] = {}
    count = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + 7919)
        size = obj.eval_batch_size or obj.rollout_batch_size
        for n, start in enumerate(range(0, len(prompts), size)):
            if max_batches is not None and n >= max_batches:
                break
            chunk = prompts[start : start + size]
            with autocast():
                rollout = sample_rollout(model, tokenizer, chunk, obj, device, tools, generate)
            scores, parts = score_completions(rewards, [p.messages for p in chunk], rollout.texts,
                                              [p.reference for p in chunk])
            values = {"reward": sum(scores), "response_length": float(rollout.mask.sum())}
            if rollout.tool_calls is not None:
                values["tool_calls"] = float(sum(rollout.tool_calls))
            values.update({f"reward/{k}": sum(v) for k, v in parts.items()})
            if reference is not None:
                with autocast():
                    logps = completion_forward(model, rollout, obj.temperature)[0]
                    ref_logps = reference_logprobs(reference, model, rollout, obj.temperature)
                values["kl"] = float(((logps - ref_logps) * rollout.mask).sum())
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value
            count += len(chunk)
    return {k: v / max(count, 1) for k, v in totals.items()}
