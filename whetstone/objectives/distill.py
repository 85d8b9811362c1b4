"""gkd: on-policy distillation (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes"). Each step of the training loop is a round:

    1. answers    the step's prompts (train.batch_size x train.grad_accum, in an order fixed by (seed, epoch));
                  with probability objective.lmbda (drawn from a generator seeded by (seed, step)) the student
                  samples the answers, otherwise the dataset's reference answers are used (lmbda 0: supervised KD)
    2. score      one forward of the student and of the frozen teacher over prompt + answer
    3. update     the generalised Jensen-Shannon divergence between them on the answer tokens, a mean per token,
                  in micro-batches of train.batch_size, then ONE optimizer step

The teacher is any model whetstone loads (objective.teacher: a hub id, a directory, a run, the embedded model),
loaded once, frozen; it must read the student's vocabulary, since the loss compares their next-token distributions.
The student stays in eval mode (no dropout), as in ppo/grpo, so sampling and scoring see the same model.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from whetstone.config import RunConfig
from whetstone.data.batches import epoch_order
from whetstone.data.records import Message
from whetstone.data.render import IGNORE
from whetstone.errors import WhetstoneError
from whetstone.models.forward import unwrap
from whetstone.models.inference import load_for_inference
from whetstone.objectives.base import OnlineObjective, OptimizerStep, StepOutput
from whetstone.objectives.logprobs import render_completion
from whetstone.objectives.online import (Prompt, PromptSets, Rollout, completion_states, prepare_prompts,
                                         sample_completions)
from whetstone.rundir import RunDir

# ---------------------------------------------------------------------------
# The loss.


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None,
                    beta: float, temperature: float = 1.0) -> torch.Tensor:
    """Per-token generalised Jensen-Shannon divergence (N, L), 0 where mask is 0.

    With S = softmax(student / T), P = softmax(teacher / T) and the mixture M = beta * P + (1 - beta) * S,

        JSD_beta(P || S) = beta * KL(P || M) + (1 - beta) * KL(S || M)

    (Agarwal et al. 2024, eq. 1). As TRL's `GKDTrainer.generalized_jsd_loss` defines the limits, beta = 0 is the
    forward KL(P || S) (mean-seeking, supervised KD) and beta = 1 the reverse KL(S || P) (mode-seeking); in
    between, the divergence is bounded by log 2 / a mix of both. Logits (N, L, V); mask (N, L) or None.
    """
    s = F.log_softmax(student_logits / temperature, dim=-1)  # (N, L, V)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)  # (N, L, V)
    if beta == 0:
        jsd = (t.exp() * (t - s)).sum(dim=-1)  # KL(P || S)
    elif beta == 1:
        jsd = (s.exp() * (s - t)).sum(dim=-1)  # KL(S || P)
    else:
        # log M in log space: log(beta * P + (1 - beta) * S) without leaving it
        m = torch.logsumexp(torch.stack([s + math.log1p(-beta), t + math.log(beta)]), dim=0)  # (N, L, V)
        jsd = beta * (t.exp() * (t - m)).sum(dim=-1) + (1 - beta) * (s.exp() * (s - m)).sum(dim=-1)
    return jsd * mask if mask is not None else jsd


# ---------------------------------------------------------------------------
# Sequences: the dataset's answers, or the student's.


@dataclass
class Answer:
    """A prompt with the dataset's answer as token ids (through the end of turn, at most max_new_tokens)."""

    prompt: Prompt
    answer_ids: list[int]


def reference_answers(prompts: list[Prompt], tokenizer, max_new_tokens: int) -> list[Answer]:
    """The dataset's answer of each prompt, tokenized as the chat template renders an assistant turn."""
    out = []
    for prompt in prompts:
        if prompt.reference is None:
            raise WhetstoneError(f"{prompt.origin}: a prompt without a reference answer; objective gkd with lmbda < 1 "
                                 f"trains on the dataset's answers, so give every record one (a chat record ending "
                                 f"with an assistant turn, or a prompt record with 'reference'), or set "
                                 f"objective.lmbda: 1.")
        rendered = render_completion(tokenizer, prompt.messages, (Message("assistant", prompt.reference),), None)
        answer = [i for i, label in zip(rendered.completion_ids, rendered.completion_labels) if label != IGNORE]
        out.append(Answer(prompt, answer[:max_new_tokens]))
    return out


def answer_rollout(references: list[Answer], pad_id: int, device) -> Rollout:
    """The references as a Rollout: prompts left-padded to P, answers right-padded to L, mask 1 on answer tokens."""
    width = max(len(r.prompt.ids) for r in references)
    length = max(1, max(len(r.answer_ids) for r in references))
    input_ids = torch.full((len(references), width + length), pad_id, dtype=torch.long)  # (N, P + L)
    attention_mask = torch.zeros_like(input_ids)
    mask = torch.zeros((len(references), length))  # (N, L)
    for row, r in enumerate(references):
        p, a = len(r.prompt.ids), len(r.answer_ids)
        input_ids[row, width - p : width] = torch.tensor(r.prompt.ids)
        input_ids[row, width : width + a] = torch.tensor(r.answer_ids, dtype=torch.long)
        attention_mask[row, width - p : width + a] = 1
        mask[row, :a] = 1
    return Rollout(input_ids.to(device), attention_mask.to(device), mask.to(device), width, [],
                   [r.prompt for r in references])


# ---------------------------------------------------------------------------
# The teacher.


def load_teacher(spec: str, student_tokenizer, config: RunConfig, device):
    """The frozen teacher named by objective.teacher (a run directory, else a hub id, directory or embedded name)."""
    run = spec if RunDir.is_run(spec) else None
    teacher, tokenizer = load_for_inference(None if run else spec, None, run, str(device),
                                            trust_remote_code=config.model.trust_remote_code,
                                            allow_pickle=config.model.allow_pickle)
    student_vocab = student_tokenizer.get_vocab()
    out_features = unwrap(teacher).get_output_embeddings().weight.shape[0]
    if tokenizer.get_vocab() != student_vocab or out_features < len(student_tokenizer):
        raise WhetstoneError(
            f"objective.teacher: {spec} reads another vocabulary ({len(tokenizer)} tokens, {out_features} logits) "
            f"than the student {config.model.name} ({len(student_tokenizer)} tokens); gkd compares their next-token "
            f"distributions token by token, so the teacher must share the student's tokenizer. Pick a teacher of "
            f"the same model family (or one fine-tuned from the student).")
    return teacher.eval().requires_grad_(False)


# ---------------------------------------------------------------------------
# The rounds.


class DistillRun:
    """A gkd run's rounds, as the training loop drives them (the contract of objectives/base.py)."""

    eval_before_training = True  # the held-out divergence before any update: the "before" of the run
    logs_every_step = True  # one metrics.jsonl row per round, with on_policy
    train_mode = False  # no dropout: the student samples and is scored as the same model
    steps_per_epoch = None

    def __init__(self, model, config: RunConfig, prompts: PromptSets, tokenizer, device, autocast):
        cfg, obj = config.train, config.objective
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise WhetstoneError("objective gkd runs on one process; launch it without torchrun/accelerate.")
        self.model, self.config, self.prompts, self.tokenizer = model, config, prompts, tokenizer
        self.device, self.autocast = device, autocast
        self.teacher = load_teacher(obj.teacher, tokenizer, config, device)
        # Logits beyond the tokenizer's vocabulary (padding rows of the head) are compared only where both have them.
        self.vocab = min(unwrap(m).get_output_embeddings().weight.shape[0] for m in (model, self.teacher))
        # Answers of the dataset, tokenized once; lmbda 1 never reads them.
        self.train_refs = reference_answers(prompts.train, tokenizer, obj.max_new_tokens) if obj.lmbda < 1 else None
        self.eval_refs = reference_answers([p for p in prompts.eval if p.reference is not None], tokenizer,
                                           obj.max_new_tokens)
        self.per_step = cfg.batch_size * cfg.grad_accum
        self.steps_per_pass = math.ceil(len(prompts.train) / self.per_step)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else \
            max(1, math.ceil(cfg.epochs * self.steps_per_pass))
        self.optimizer_steps = self.total_steps  # one optimizer step per round
        self.can_evaluate = bool(self.eval_refs)

    def describe(self) -> str:
        p, obj = self.prompts, self.config.objective
        return (f"data: {len(p.train)} training prompts ({p.dropped} longer than {p.max_prompt} tokens dropped), "
                f"{len(self.eval_refs)} eval prompts with answers; teacher {obj.teacher}, beta {obj.beta}, "
                f"lmbda {obj.lmbda}")

    def restore(self, extra: dict) -> None:
        """Nothing to restore: a round depends only on (seed, step) and the weights."""

    def on_policy(self, index: int) -> bool:
        """Whether round `index` trains on the student's samples: probability lmbda, fixed by (seed, index)."""
        generator = torch.Generator().manual_seed(self.config.train.seed * 1_000_003 + index)
        return bool(torch.rand(1, generator=generator) < self.config.objective.lmbda)

    def step(self, index: int, optimizer_step: OptimizerStep) -> StepOutput:
        """Round `index`: answers (sampled or the dataset's), the JSD to the teacher, one optimizer step."""
        cfg, obj = self.config.train, self.config.objective
        t_round = time.perf_counter()
        epoch, i = divmod(index, self.steps_per_pass)
        order = epoch_order(len(self.prompts.train), cfg.seed, epoch)[i * self.per_step : (i + 1) * self.per_step]
        on_policy = self.on_policy(index)
        if on_policy:
            with self.autocast():
                rollout = sample_completions(self.model, self.tokenizer, [self.prompts.train[j] for j in order], obj,
                                             self.device)
        else:
            rollout = answer_rollout([self.train_refs[j] for j in order], self.tokenizer.pad_token_id, self.device)
        total = rollout.mask.sum().clamp(min=1)  # the loss is a mean over the round's answer tokens
        loss_sum = 0.0
        for micro in torch.arange(len(order)).split(cfg.batch_size):
            part = rollout.rows(micro.to(rollout.input_ids.device))
            jsd = self.divergence(part)  # (n, L)
            loss = jsd.sum() / total
            loss.backward()
            loss_sum += float(loss.detach())
        grad_norm, lr = optimizer_step(loss_sum, [rollout.prompts[int(j)].origin for j in range(len(order))])
        tokens = int(rollout.attention_mask.sum())
        entries = {"on_policy": int(on_policy), "jsd": round(loss_sum, 6),
                   "response_length": round(float(rollout.mask.sum(dim=1).mean()), 3)}
        return StepOutput(loss_sum=loss_sum, units=1, tokens=tokens, tokens_read=tokens,
                          supervised_tokens=int(rollout.mask.sum()), lr=lr, grad_norm=grad_norm, entries=entries,
                          seconds=time.perf_counter() - t_round)

    def divergence(self, rollout: Rollout) -> torch.Tensor:
        """Per-token JSD (N, L) of the student to the teacher on the rollout's completions (student has grad)."""
        obj = self.config.objective
        with self.autocast():
            student = completion_states(self.model, rollout)[1][..., : self.vocab]  # (N, L, V)
            with torch.no_grad():
                teacher = completion_states(self.teacher, rollout)[1][..., : self.vocab]  # (N, L, V)
        return generalized_jsd(student, teacher, rollout.mask, obj.beta, obj.temperature)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """On the eval prompts' reference answers: the mean JSD per token, and the student's loss (NLL per token)."""
        cfg = self.config
        jsd_sum, nll_sum, tokens = 0.0, 0.0, 0.0
        for n, start in enumerate(range(0, len(self.eval_refs), cfg.train.batch_size)):
            if cfg.eval.max_batches is not None and n >= cfg.eval.max_batches:
                break
            rollout = answer_rollout(self.eval_refs[start : start + cfg.train.batch_size],
                                     self.tokenizer.pad_token_id, self.device)
            jsd_sum += float(self.divergence(rollout).sum())
            with self.autocast():
                logps = torch.log_softmax(completion_states(self.model, rollout)[1], dim=-1)  # (N, L, V)
            answer = rollout.completion_ids.clamp(max=logps.shape[-1] - 1)
            nll_sum -= float((logps.gather(-1, answer[..., None]).squeeze(-1) * rollout.mask).sum())
            tokens += float(rollout.mask.sum())
        tokens = max(tokens, 1.0)
        return {"eval_jsd": round(jsd_sum / tokens, 6), "eval_loss": round(nll_sum / tokens, 6)}

    def finish(self) -> None:
        """Nothing to take off the student: the teacher is a separate model (kept: the loop may evaluate after)."""


def setup_distill(model, config: RunConfig, prompts: PromptSets, tokenizer, device,
                  autocast=contextlib.nullcontext) -> DistillRun:
    return DistillRun(model, config, prompts, tokenizer, device, autocast)


GKD = OnlineObjective("gkd", prepare=prepare_prompts, setup=setup_distill)
