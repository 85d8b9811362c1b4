"""The run config: typed sections, YAML + ``--set`` overrides, one error for everything.

A config is YAML with the top-level keys ``model``, ``method``, ``objective``,
``data``, ``train``, ``eval``, ``log`` and ``output``. Each section is a dataclass below;
the docstring under each field is its documentation. ``load_config`` collects
every problem (unknown key, wrong type, bad value, conflicting fields) and raises
them together in one ``ConfigError``, each naming the key, the value it got and
the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from whetstone.errors import WhetstoneError

EMBEDDED_MODEL = "smollm2-135m-instruct"


class ConfigError(WhetstoneError):
    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is not well-formed, found the following errors:\n{body}")


@dataclass
class ModelConfig:
    name: str = EMBEDDED_MODEL
    """Embedded name (smollm2-135m-instruct), local HF directory, hub id, or a .gguf file."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `name` is a hub id."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model. Off unless you trust its author."""
    allow_pickle: bool = False
    """Accept pickle-based .bin/.pt weights. Off: only safetensors and GGUF load."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel passed to transformers."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """The frozen base's weights as loaded. auto: bf16 when train.precision resolves to bf16 (and never for method
    full), else fp32. Whatever the base, trainable weights, optimizer states and losses stay fp32."""


@dataclass
class MethodConfig:
    name: Literal["full", "freeze", "lora", "dora", "qlora"] = "lora"
    """What is trained: every weight, the top of a frozen model, or low-rank adapters."""
    r: int = 16
    """LoRA rank (lora, dora, qlora)."""
    alpha: float = 32.0
    """LoRA scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rslora)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    targets: str | list[str] = "all-linear"
    """Modules that get adapters: 'all-linear' or a list of module names (q_proj, v_proj, ...)."""
    rslora: bool = False
    """Rank-stabilised LoRA scaling, alpha / sqrt(r) (Kalajdzievski 2023)."""
    top_blocks: int = 0
    """freeze: number of top transformer blocks left trainable."""
    train_modules: list[str] = field(default_factory=list)
    """freeze: extra trainable parameters, as glob patterns over parameter names (e.g. '*norm*')."""
    train_head: bool = False
    """freeze: also train the output head (tied to the input embeddings in many models). With objective classify the
    head is the new classification head, which always trains; the LM head stays frozen."""
    init_adapter: str | None = None
    """lora: start from this saved PEFT adapter directory (and its r, alpha, targets) instead of from zero."""
    base_adapters: list[str] = field(default_factory=list)
    """lora, dora: saved PEFT adapter directories kept frozen under the trained one, in order (a stack; folded into
    the base weights when the model loads). Generation, eval and export of the run load the whole stack."""
    interpolate: float = 1.0
    """lora, qlora: the share of the adapter's change kept when training ends, W0 + interpolate x (alpha / r) B A.
    Below 1 it moves the tuned model back toward the base along the straight line between them (WiSE-FT,
    Wortsman et al. 2022): it gives back general ability the training took, and some of what it learned. The
    saved adapter, the end-of-training evaluation and exports use it; evaluations during training do not."""

    def validate(self) -> list[str]:
        problems = []
        if self.interpolate != 1.0:
            if self.name not in ("lora", "qlora"):
                problems.append(f"method.interpolate applies to lora and qlora, not '{self.name}': it scales the "
                                f"adapter's B A. dora's magnitude vector does not scale with it, and full and freeze "
                                f"keep no copy of the base to move toward.")
            if not 0.0 < self.interpolate <= 1.0:
                problems.append(f"method.interpolate: got {self.interpolate}; give the share of the change to keep, "
                                f"in (0, 1], e.g. 0.85.")
        if self.name in ("lora", "dora", "qlora"):
            if self.r < 1:
                problems.append(f"method.r: got {self.r}; the LoRA rank must be a positive integer such as 8 or 16.")
            if self.alpha <= 0:
                problems.append(f"method.alpha: got {self.alpha}; must be positive (a common choice is 2 * r).")
            if not 0.0 <= self.dropout < 1.0:
                problems.append(f"method.dropout: got {self.dropout}; must be in [0, 1).")
        if self.name == "freeze":
            if self.top_blocks < 0:
                problems.append(f"method.top_blocks: got {self.top_blocks}; must be 0 or more.")
        return problems

    def trains_nothing(self) -> bool:
        """freeze with nothing unfrozen: only a new head (objective: reward) would learn."""
        return self.name == "freeze" and self.top_blocks == 0 and not self.train_modules and not self.train_head


@dataclass
class RewardSource:
    run: str | None = None
    """A reward-model run directory (trained with objective: reward); it scores prompt + completion."""
    function: str | None = None
    """A Python reward, 'module:function' or 'path/file.py:function', called as
    f(prompts=[...], completions=[...], references=[...]) -> list of floats. Only what you name is imported."""
    weight: float = 1.0
    """Weight of this reward in the sum of all rewards."""
    options: dict[str, Any] = field(default_factory=dict)
    """A function's own settings, passed to it as keyword arguments, e.g. {pattern: '...'} for
    whetstone.rewards.verifiable:regex_format; each must name a parameter of the function (checked, with the
    function's required ones, when training starts). Functions only; empty: called as before."""


ONLINE_OBJECTIVES = ("ppo", "grpo")


@dataclass(frozen=True)
class PolicyKnobs:
    """An online run's policy update, resolved (the functions are in objectives/policy.py's registries)."""

    advantage: str | None  # ADVANTAGES; None for ppo (GAE over its value head)
    ratio: str  # RATIOS
    aggregation: str  # AGGREGATIONS
    kl_penalty: str  # "loss" (a k3 term) or "reward" (kl_coef * (log pi - log pi_ref) off the reward)
    clip_low: float
    clip_high: float
    dynamic_sampling: bool
    max_sampling_rounds: int
    overlong_buffer: int  # tokens; 0 is off


GRPO_KNOBS = ("advantage", "ratio", "aggregation", "kl_penalty", "clip_low", "clip_high", "dynamic_sampling",
              "overlong_buffer")
_GRPO = dict(advantage="group_std", ratio="token", aggregation="sequence_mean", kl_penalty="loss", clip_low=None,
             clip_high=None, dynamic_sampling=False, overlong_buffer=0)
GRPO_VARIANTS: dict[str, dict[str, Any]] = {
    # Each as its paper defines it (docs/preferences.md "GRPO variants"); clip None is clip_range.
    "grpo": _GRPO,  # Shao et al. 2024
    "dr_grpo": _GRPO | dict(advantage="group_mean", aggregation="constant"),  # Liu et al. 2025
    # Yu et al. 2025: clip-higher 0.28 (clip_low stays 0.2), token-level loss, dynamic sampling, overlong penalty
    "dapo": _GRPO | dict(aggregation="token_mean", clip_high=0.28, dynamic_sampling=True, overlong_buffer="fifth"),
    "gspo": _GRPO | dict(ratio="sequence", clip_low=3e-4, clip_high=4e-4),  # Zheng et al. 2025, its clip ranges
    "rloo": _GRPO | dict(advantage="leave_one_out", ratio="sequence_sum", kl_penalty="reward"),  # Ahmadian et al. 2024
    "reinforce_pp": _GRPO | dict(advantage="batch_whiten", kl_penalty="reward"),  # Hu 2025
}
PACKABLE = ("sft", "dpo")  # objectives whose sequences data.packing can share rows


@dataclass
class ObjectiveConfig:
    name: Literal["sft", "classify", "reward", "dpo", "kto", "ppo", "grpo", "gkd"] = "sft"
    """Which loss: sft, classify (a new classification head), reward (Bradley-Terry reward model), dpo (and its
    family, see `loss`), kto, ppo, grpo, gkd (on-policy distillation from a teacher)."""
    loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] = "sigmoid"
    """dpo: sigmoid (DPO; cDPO with label_smoothing), ipo, hinge (SLiC); reference-free simpo, orpo."""
    beta: float | None = None
    """dpo/kto: inverse temperature of the implicit reward beta * log(pi / pi_ref); orpo: weight of the odds-ratio term;
    gkd: the generalised JSD's interpolation, 0 forward KL (teacher || student) .. 1 reverse KL. null: 0.1, gkd 0.5."""
    label_smoothing: float = 0.0
    """dpo sigmoid: assumed probability that a preference label is flipped (cDPO); 0 is plain DPO."""
    margin: float = 0.0
    """reward: Bradley-Terry margin m in -log sigmoid(r_chosen - r_rejected - m); simpo: the target margin gamma."""
    length_normalize: bool | None = None
    """dpo: average log-probs per token instead of summing; null uses the paper's choice (on for ipo, simpo, orpo)."""
    precompute_reference: bool = False
    """dpo: compute reference log-probs once before training; full fine-tuning then keeps no second model."""
    share_prompt: bool | None = None
    """sft and dpo with data.packing: read a shared prompt prefix once, the answers branching from it (prefix
    sharing). DPO shares each pair's prompt between its two answers; SFT shares what a row's examples begin
    with alike (a chat template's system prompt, say). The same losses and gradients, fewer tokens through the
    model. null (the default): on wherever data.packing is (train/fast_path.py)."""
    desirable_weight: float = 1.0
    """kto: weight of the loss on desirable (thumbs-up) examples."""
    undesirable_weight: float = 1.0
    """kto: weight of the loss on undesirable (thumbs-down) examples."""
    head: Literal["seq_cls", "value"] = "seq_cls"
    """reward: the scalar head, 'seq_cls' (a 1-label sequence-classification head, 'score') or 'value' (a value
    head 'v_head' with bias on the causal LM). Which weights train beside it is method: full, freeze or lora."""
    labels: list[str] | None = None
    """classify: the class names, in the order of the head's outputs; null takes the training data's labels, sorted."""
    class_weights: list[float] | Literal["balanced"] | None = None
    """classify: a loss weight per class (in `labels` order), or 'balanced' (n / (classes * count), as sklearn)."""
    reward: list[RewardSource] = field(default_factory=list)
    """ppo/grpo: the rewards, each {run: RM_RUN_DIR} or {function: 'module:function'}, with a weight; summed."""
    kl_coef: float = 0.05
    """ppo: coefficient of the per-token KL penalty to the reference; grpo: weight of its KL term (0 turns it off)."""
    adaptive_kl: bool = False
    """ppo: adapt kl_coef towards kl_target (Ziegler et al. 2019) instead of keeping it fixed."""
    kl_target: float = 6.0
    """ppo with adaptive_kl: the KL (nats per completion) the coefficient steers towards."""
    kl_horizon: int = 10000
    """ppo with adaptive_kl: horizon of the controller, in completions; larger adapts more slowly."""
    gamma: float = 1.0
    """ppo: discount of future per-token rewards in GAE."""
    lam: float = 0.95
    """ppo: GAE lambda; 1 gives Monte-Carlo returns, 0 one-step TD."""
    clip_range: float = 0.2
    """ppo/grpo: the policy ratio is clipped to [1 - clip_range, 1 + clip_range]."""
    value_clip: float = 0.2
    """ppo: new values are clipped to within this of the rollout's values."""
    vf_coef: float = 0.1
    """ppo: weight of the value loss beside the policy loss."""
    ppo_epochs: int = 2
    """ppo/grpo: passes of minibatch updates over each round's rollouts."""
    num_generations: int = 4
    """grpo: completions sampled per prompt (the group whose rewards are normalised)."""
    temperature: float = 1.0
    """ppo/grpo: sampling temperature of the rollouts; gkd: of the student's samples and of both models' logits in
    the divergence."""
    top_p: float = 1.0
    """ppo/grpo: nucleus sampling; 1.0 samples from the whole distribution."""
    max_new_tokens: int = 64
    """ppo/grpo/gkd: longest completion (gkd: the dataset's answers are cut there too); generation stops at EOS."""
    rollout_batch_size: int = 8
    """ppo/grpo: prompts sampled per round (grpo samples num_generations completions for each)."""
    eval_batch_size: int | None = None
    """ppo/grpo: held-out prompts sampled together in an evaluation (one completion each); null: rollout_batch_size.
    Larger is faster (a CPU's matrix products run far below peak on a few rows); eval.max_batches counts these."""
    variant: Literal["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp"] = "grpo"
    """grpo: a named preset of the knobs below (GRPO_VARIANTS, docs/preferences.md "GRPO variants"): grpo, dr_grpo
    (Dr. GRPO), dapo (DAPO), gspo (GSPO), rloo (RLOO), reinforce_pp (REINFORCE++). A knob set here overrides it."""
    advantage: Literal["group_std", "group_mean", "leave_one_out", "batch_whiten"] | None = None
    """grpo: (r - group mean) / group std, r - group mean, r - mean of the other G - 1, or the return to go
    whitened over the batch; null takes the variant's."""
    ratio: Literal["token", "sequence", "sequence_sum"] | None = None
    """grpo: the clipped importance ratio, per token, per sequence length-normalised (GSPO), or per sequence
    (RLOO); null takes the variant's."""
    aggregation: Literal["sequence_mean", "token_mean", "constant"] | None = None
    """grpo: per-token losses averaged per completion then over completions, over all the minibatch's tokens, or
    summed and divided by completions x max_new_tokens; null takes the variant's."""
    kl_penalty: Literal["loss", "reward"] | None = None
    """grpo: where kl_coef's KL acts, a k3 term in the loss, or kl_coef x (log pi - log pi_ref) taken off the
    reward; null takes the variant's."""
    clip_low: float | None = None
    """grpo: the ratio's lower clip is 1 - clip_low; null takes the variant's, else clip_range."""
    clip_high: float | None = None
    """grpo: the ratio's upper clip is 1 + clip_high; null takes the variant's (dapo: 0.28), else clip_range."""
    dynamic_sampling: bool | None = None
    """grpo: drop groups whose rewards are all equal and sample more prompts until rollout_batch_size groups are
    kept or max_sampling_rounds ran (DAPO); null takes the variant's (on for dapo only)."""
    max_sampling_rounds: int = 3
    """grpo with dynamic_sampling: the most sampling passes per round, the first included; the round then trains
    on the groups it kept (none: no update that round)."""
    overlong_buffer: int | None = None
    """grpo: DAPO's overlong penalty on the reward over the last overlong_buffer tokens before max_new_tokens,
    0 turns it off; null takes the variant's (dapo: max_new_tokens // 5, the paper's 4096 of 20480)."""

    tools: list[str] = field(default_factory=list)
    """ppo/grpo: Python functions the policy may call during a rollout ('module:function' or 'file.py:function',
    e.g. whetstone.tools:calculator), shown to the model by the chat template; each call runs with tool_timeout,
    and its result is read but not trained on (whetstone/tools.py)."""
    max_tool_calls: int = 2
    """ppo/grpo with tools: the most tool calls one completion may make; later calls stay text."""
    tool_timeout: float = 5.0
    """ppo/grpo with tools: seconds one call may run before it is stopped (the model reads an error)."""
    engine: Literal["hf", "vllm"] = "hf"
    """ppo/grpo: what samples the rollouts, hf (the policy itself, generate with a KV cache, any device) or vllm (a
    vLLM copy of the policy on the same CUDA GPU, its weights synced after each update: objectives/vllm_engine.py)."""
    vllm_gpu_memory_utilization: float = 0.3
    """ppo/grpo with engine vllm: the share of the GPU's memory vLLM may take for its copy of the weights and its KV
    cache; the policy, its optimizer and the reference live in the rest."""

    teacher: str | None = None
    """gkd: the teacher model, a hub id, a directory, a run directory or the embedded 'smollm2-135m-instruct'; it
    must share the student's tokenizer."""
    lmbda: float = 0.5
    """gkd: the share of steps trained on the student's own samples; the others use the dataset's answers (0 is
    supervised distillation on the data, 1 fully on-policy)."""

    def __post_init__(self):
        if self.beta is None:  # one field, two meanings: each objective's usual value
            self.beta = 0.5 if self.name == "gkd" else 0.1

    def policy_knobs(self) -> PolicyKnobs:
        """The update's knobs: grpo's from its variant with the explicit ones over them; ppo's are fixed."""
        if self.name == "ppo":
            return PolicyKnobs(None, "token", "token_mean", "reward", self.clip_range, self.clip_range, False,
                               self.max_sampling_rounds, 0)
        knobs = dict(GRPO_VARIANTS[self.variant])
        knobs.update({k: getattr(self, k) for k in GRPO_KNOBS if getattr(self, k) is not None})
        knobs["clip_low"] = self.clip_range if knobs["clip_low"] is None else knobs["clip_low"]
        knobs["clip_high"] = self.clip_range if knobs["clip_high"] is None else knobs["clip_high"]
        if knobs["overlong_buffer"] == "fifth":
            knobs["overlong_buffer"] = self.max_new_tokens // 5
        return PolicyKnobs(**knobs, max_sampling_rounds=self.max_sampling_rounds)

    def validate(self) -> list[str]:
        problems = []
        name = self.name
        if name == "gkd":
            problems += self._validate_gkd()
        elif self.beta <= 0:
            problems.append(f"objective.beta: got {self.beta}; must be positive (0.1 is the usual DPO value).")
        if name != "gkd" and (self.teacher is not None or self.lmbda != 0.5):
            problems.append(f"objective.teacher and objective.lmbda are for objective: gkd, not '{name}'; remove them.")
        if not 0.0 <= self.label_smoothing < 0.5:
            problems.append(f"objective.label_smoothing: got {self.label_smoothing}; must be in [0, 0.5).")
        if self.label_smoothing and self.loss != "sigmoid":
            problems.append(
                f"objective.label_smoothing is {self.label_smoothing} but objective.loss is '{self.loss}'; "
                f"label smoothing (cDPO) applies to loss 'sigmoid' only."
            )
        if self.precompute_reference and name != "dpo":
            problems.append(f"objective.precompute_reference applies to objective dpo only, not '{name}'.")
        if self.precompute_reference and self.loss in ("simpo", "orpo"):
            problems.append(f"objective.precompute_reference: loss '{self.loss}' uses no reference model; remove it.")
        for key in ("desirable_weight", "undesirable_weight"):
            if getattr(self, key) <= 0:
                problems.append(f"objective.{key}: got {getattr(self, key)}; must be positive.")
        problems += self._validate_classify()
        problems += self._validate_engine()
        if name in ONLINE_OBJECTIVES:
            problems += self._validate_online()
        else:
            if self.reward:
                problems.append(f"objective.reward is set, but objective '{name}' does not use it; rewards are for ppo "
                                f"and grpo.")
            if self.tools:
                problems.append(f"objective.tools is set, but objective '{name}' does not use it; tool calls run in "
                                f"the rollouts of ppo and grpo.")
        return problems

    def _validate_gkd(self) -> list[str]:
        problems = []
        if not self.teacher:
            problems.append("objective.teacher: gkd needs a teacher to distil from, e.g. teacher: runs/translation "
                            "(a run), a hub id or a model directory with the student's tokenizer.")
        if not 0.0 <= self.beta <= 1.0:
            problems.append(f"objective.beta: got {self.beta}; gkd's JSD interpolation must be in [0, 1] (0 forward "
                            f"KL, 1 reverse KL, 0.5 the usual).")
        if not 0.0 <= self.lmbda <= 1.0:
            problems.append(f"objective.lmbda: got {self.lmbda}; it is the share of on-policy steps, in [0, 1].")
        if self.temperature <= 0:
            problems.append(f"objective.temperature: got {self.temperature}; must be > 0.")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"objective.top_p: got {self.top_p}; must be in (0, 1].")
        if self.max_new_tokens < 1:
            problems.append(f"objective.max_new_tokens: got {self.max_new_tokens}; must be a positive integer.")
        return problems

    def _validate_classify(self) -> list[str]:
        problems = []
        if self.name != "classify":
            for key in ("labels", "class_weights"):
                if getattr(self, key) is not None:
                    problems.append(f"objective.{key} is set, but objective '{self.name}' does not use it; it is for "
                                    f"objective: classify.")
            return problems
        if self.labels is not None:
            if len(self.labels) < 2:
                problems.append(f"objective.labels: got {self.labels}; a classifier needs at least two classes.")
            doubled = sorted({label for label in self.labels if self.labels.count(label) > 1})
            if doubled:
                problems.append(f"objective.labels: {doubled} listed twice; name each class once.")
            if any(not label.strip() for label in self.labels):
                problems.append("objective.labels: a label is empty; give every class a name.")
        if isinstance(self.class_weights, list):
            if any(w <= 0 for w in self.class_weights):
                problems.append(f"objective.class_weights: got {self.class_weights}; every weight must be positive.")
            if self.labels is not None and len(self.class_weights) != len(self.labels):
                problems.append(
                    f"objective.class_weights: {len(self.class_weights)} weights for {len(self.labels)} labels "
                    f"({', '.join(self.labels)}); give one weight per label, in the same order, or 'balanced'."
                )
        return problems

    def _validate_engine(self) -> list[str]:
        """objective.engine: vllm samples ppo and grpo rollouts only; its memory share is for it alone."""
        if self.engine == "hf":
            if self.vllm_gpu_memory_utilization != 0.3:
                return ["objective.vllm_gpu_memory_utilization is set, but objective.engine is 'hf'; it is for "
                        "objective.engine: vllm."]
            return []
        problems = []
        if self.name not in ONLINE_OBJECTIVES:
            problems.append(f"objective.engine: vllm samples the rollouts of ppo and grpo, and objective '{self.name}' "
                            f"has none; set objective.engine: hf (the default).")
        if not 0.0 < self.vllm_gpu_memory_utilization < 1.0:
            problems.append(f"objective.vllm_gpu_memory_utilization: got {self.vllm_gpu_memory_utilization}; it is a "
                            f"share of the GPU's memory, in (0, 1), e.g. 0.3.")
        return problems

    def _validate_online(self) -> list[str]:
        problems = []
        if not self.reward:
            problems.append(
                f"objective.reward: {self.name} needs at least one reward, e.g. reward: [{{run: runs/rm}}] "
                f"or reward: [{{function: 'mypackage.rewards:exact_match', weight: 1.0}}]."
            )
        for i, source in enumerate(self.reward):
            key = f"objective.reward[{i}]"
            if (source.run is None) == (source.function is None):
                problems.append(f"{key}: give exactly one of 'run' (a reward-model run dir) or 'function'.")
            if source.function is not None and (":" not in source.function or source.function.endswith(":")):
                problems.append(
                    f"{key}.function: got {source.function!r}; write it as 'module:function' or 'file.py:function'."
                )
            if source.weight == 0:
                problems.append(f"{key}.weight: got 0; remove the reward instead.")
            if source.run is not None and source.options:
                problems.append(f"{key}.options: a reward-model run takes no options; they are for a function.")
        if self.kl_coef < 0:
            problems.append(f"objective.kl_coef: got {self.kl_coef}; must be 0 or more.")
        if self.adaptive_kl and (self.kl_target <= 0 or self.kl_horizon < 1):
            problems.append("objective.kl_target and objective.kl_horizon must be positive with adaptive_kl.")
        if self.adaptive_kl and self.kl_coef == 0:
            problems.append("objective.adaptive_kl needs a starting kl_coef above 0 (e.g. 0.05).")
        for key in ("gamma", "lam"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                problems.append(f"objective.{key}: got {getattr(self, key)}; must be in [0, 1].")
        if not 0.0 < self.clip_range < 1.0:
            problems.append(f"objective.clip_range: got {self.clip_range}; must be in (0, 1), e.g. 0.2.")
        if self.value_clip <= 0 or self.vf_coef < 0:
            problems.append("objective.value_clip must be positive and objective.vf_coef 0 or more.")
        for key in ("ppo_epochs", "max_new_tokens", "rollout_batch_size", "eval_batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                problems.append(f"objective.{key}: got {getattr(self, key)}; must be a positive integer.")
        if self.name == "grpo" and self.num_generations < 2:
            problems.append(
                f"objective.num_generations: got {self.num_generations}; grpo compares completions within a group, "
                f"so it needs at least 2 (4 to 16 is usual)."
            )
        if self.temperature <= 0:
            problems.append(f"objective.temperature: got {self.temperature}; rollouts are sampled, so it must be > 0.")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"objective.top_p: got {self.top_p}; must be in (0, 1].")
        for i, spec in enumerate(self.tools):
            if not isinstance(spec, str) or ":" not in spec or spec.endswith(":"):
                problems.append(f"objective.tools[{i}]: got {spec!r}; write it as 'module:function' or "
                                f"'file.py:function', e.g. whetstone.tools:calculator.")
        if self.tools and self.max_tool_calls < 1:
            problems.append(f"objective.max_tool_calls: got {self.max_tool_calls}; with tools it must be at least 1.")
        if self.tool_timeout <= 0:
            problems.append(f"objective.tool_timeout: got {self.tool_timeout}; must be a positive number of seconds.")
        return problems + self._validate_variant()

    def _validate_variant(self) -> list[str]:
        """grpo's variant knobs: ranges, and the combinations that do not compose. Other objectives read none."""
        set_here = [k for k in GRPO_KNOBS if getattr(self, k) is not None]
        set_here += ["variant"] * (self.variant != "grpo") + ["max_sampling_rounds"] * (self.max_sampling_rounds != 3)
        if self.name != "grpo":
            return [f"objective.{key} is set, but objective '{self.name}' does not use it; it is for objective: grpo."
                    for key in set_here]
        problems = []
        knobs = self.policy_knobs()
        if not 0.0 < knobs.clip_low < 1.0:
            problems.append(f"objective.clip_low: got {knobs.clip_low}; must be in (0, 1), e.g. 0.2.")
        if knobs.clip_high <= 0:
            problems.append(f"objective.clip_high: got {knobs.clip_high}; must be positive, e.g. 0.28.")
        if not 0 <= knobs.overlong_buffer <= self.max_new_tokens:
            problems.append(f"objective.overlong_buffer: got {knobs.overlong_buffer}; must be from 0 (off) to "
                            f"objective.max_new_tokens ({self.max_new_tokens}).")
        if self.max_sampling_rounds < 1:
            problems.append(f"objective.max_sampling_rounds: got {self.max_sampling_rounds}; must be 1 or more.")
        if self.max_sampling_rounds != 3 and not knobs.dynamic_sampling:
            problems.append("objective.max_sampling_rounds is set, but dynamic sampling is off; set "
                            "objective.dynamic_sampling: true or remove it.")
        if knobs.dynamic_sampling and knobs.advantage not in ("group_std", "group_mean", "leave_one_out"):
            problems.append(f"objective.dynamic_sampling drops groups whose rewards agree, which only a group "
                            f"advantage zeroes; advantage '{knobs.advantage}' (variant '{self.variant}') still "
                            f"learns from them. Set dynamic_sampling: false or a group advantage.")
        if knobs.ratio == "sequence_sum" and knobs.aggregation != "sequence_mean":
            problems.append(f"objective.ratio 'sequence_sum' makes each completion one action, so its loss is "
                            f"averaged per completion; aggregation '{knobs.aggregation}' would weigh it by length. "
                            f"Use aggregation: sequence_mean or another ratio.")
        return problems


@dataclass
class SourceConfig:
    path: str = ""
    """A data file (jsonl, json, csv, tsv, parquet, optionally .gz) or an HF dataset name."""
    task: str | None = None
    """Task name for per-task reporting; in a list of several sources it defaults to the file's stem."""
    weight: float = 1.0
    """Relative sampling weight in a mixture (see data.mixing): 2.0 draws this source twice as often."""
    eval: str | None = None
    """This source's own eval file (its records get this source's task); else data.eval_fraction carves one."""


@dataclass
class ReplayConfig:
    source: str | list[str] = ""
    """General data (any format data.train takes) mixed into training as the guard against forgetting: a file,
    or a list of files (e.g. chat records and plain text, which one file cannot mix), drawn from as one source."""
    fraction: float = 0.1
    """Share of every epoch's draws that come from the replay data, logged as task 'replay'."""
    distill: bool = False
    """Replay learns the base model's whole next-token distribution at every token of its records (KL to the model
    before tuning, the same model with adapters off or a frozen copy) instead of the records' own tokens. Objective
    sft; the logged 'replay' loss is then that KL. See docs/supervised.md and docs/knowledge.md."""
    kl_weight: float = 1.0
    """With distill: the weight of the replay tokens' KL against the data's cross-entropy in the loss (1: a replay
    token counts as much as a data token). Above 1 it holds the model nearer its base at no extra steps; the logged
    'replay' loss stays the KL itself, unweighted."""

    @property
    def paths(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)


# The most wordings data.augment.paraphrase may ask for: data/synth/paraphrase.py MAX_WORDINGS, the number of its
# template frames (config.py imports no data module; tests/data/test_augment.py holds the two equal).
AUGMENT_MAX_WORDINGS = 8


@dataclass
class AugmentConfig:
    paraphrase: int = 5
    """Wordings of every question of data.train, the question itself included (2 to 8): the teacher's rewordings,
    then template frames where it gives fewer; the answers stay as they are (data/augment.py, docs/knowledge.md)."""
    teacher: str | None = None
    """The model that rewords: null for the embedded model, a model name, directory or hub id, a run directory,
    or 'templates' for the template frames alone (no model). With teacher_url, the endpoint's model id."""
    teacher_url: str | None = None
    """An OpenAI-compatible endpoint's base URL (e.g. http://127.0.0.1:8000/v1 for `whetstone serve`) to reword with."""
    teacher_key_env: str | None = None
    """The environment variable holding teacher_url's key (default OPENAI_API_KEY, sent only when set)."""


@dataclass
class DataConfig:
    train: str | list[SourceConfig] = ""
    """Training data: a file, or a list of {path, task, weight} sources."""
    eval: str | None = None
    """Evaluation data file. Without it, data.eval_fraction carves one out of train."""
    eval_fraction: float = 0.0
    """Fraction of the training records held out for evaluation when data.eval is not set."""
    format: str = "auto"
    """Record format, or 'auto' to detect it from the fields present."""
    max_length: int = 256
    """Tokens per example; longer examples are truncated (and counted)."""
    train_on_prompt: bool = False
    """Supervise every token, not only the assistant/completion tokens."""
    on_error: Literal["error", "skip"] = "error"
    """Bad records stop the run (error) or are skipped and counted (skip)."""
    chat_template: str | None = None
    """Override the model's chat template with this Jinja string (e.g. for a base model without one)."""
    canaries: int = 0
    """Plant N random secret strings in the training data; `whetstone audit` then measures their exposure."""
    mixing: Literal["proportional", "temperature"] = "proportional"
    """How several train sources share each epoch: p_i = w_i*n_i / sum (proportional), or
    p_i = (w_i*n_i)^(1/T) / sum (temperature; T=1 is proportional, large T uniform). See data/mixture.py."""
    temperature: float = 2.0
    """T of data.mixing: temperature (mT5 used about 3.3); applies only with that mixing."""
    replay: ReplayConfig | None = None
    """{source: PATH, fraction: 0.1}: general data mixed in at that fraction of the draws, task 'replay'."""
    augment: AugmentConfig | None = None
    """{paraphrase: N}: before training, data.train's questions each in N wordings (a teacher model's, then
    templates), cached under the user cache directory and reported in the run's augment.json (data/augment.py)."""
    packing: bool | None = None
    """sft, dpo: concatenate a micro-batch's sequences (dpo: chosen and rejected answers) into rows of at most
    max_length tokens (attention stays within each sequence), so less compute goes to padding. Same loss per
    example; see data/packing.py. null (the default): on for sft and dpo wherever it applies, off (with a line
    saying why) elsewhere (train/fast_path.py)."""
    reasoning: Literal["keep", "drop", "auto"] = "auto"
    """Assistant turns' reasoning (a message's reasoning_content or thinking): keep supervises it with the answer,
    drop trains on the answer alone, auto does what the chat template does with it (data/render.py)."""
    group_by_length: bool = False
    """Order each optimizer step's examples by length before splitting them into micro-batches (and processes),
    so each pads less. Each step keeps the same examples; it helps only with grad_accum > 1 or several processes."""

    def validate(self) -> list[str]:
        problems = []
        problems += self._validate_mixture()
        problems += self._validate_augment()
        if self.canaries < 0:
            problems.append(f"data.canaries: got {self.canaries}; must be 0 (none) or a number of canaries, e.g. 4.")
        if self.train == "" or self.train == []:
            problems.append("data.train: missing; set it to a data file, e.g. data.train=examples/stdlib_qa/train.jsonl.")
        if not 0.0 <= self.eval_fraction < 1.0:
            problems.append(f"data.eval_fraction: got {self.eval_fraction}; must be in [0, 1).")
        if self.eval and self.eval_fraction:
            problems.append(
                "data.eval and data.eval_fraction are both set. Choose one: an eval file, or a fraction of train."
            )
        if self.max_length < 8:
            problems.append(f"data.max_length: got {self.max_length}; must be at least 8 tokens.")
        return problems

    def _validate_augment(self) -> list[str]:
        augment, problems = self.augment, []
        if augment is None:
            return problems
        if not 2 <= augment.paraphrase <= AUGMENT_MAX_WORDINGS:
            problems.append(f"data.augment.paraphrase: got {augment.paraphrase}; give the wordings of each question, "
                            f"2 to {AUGMENT_MAX_WORDINGS} (1 is the data as it is: remove data.augment).")
        if not isinstance(self.train, str):
            problems.append("data.augment: data.train is a list of sources; augment rewords one file. Give data.train "
                            "one file, or write each source's wordings with `whetstone data paraphrase`.")
        if self.eval_fraction:
            problems.append(f"data.augment with data.eval_fraction {self.eval_fraction}: the held-out records would "
                            f"be rewordings of trained questions. Give data.eval a file of its own instead.")
        if self.format not in ("auto", "messages"):
            problems.append(f"data.augment with data.format {self.format!r}: the reworded data is chat records "
                            f"({{messages: [...]}}); set data.format: auto or messages.")
        if augment.teacher == "templates" and augment.teacher_url is not None:
            problems.append("data.augment: teacher 'templates' asks for no model, teacher_url for an endpoint; "
                            "use one of the two.")
        if augment.teacher_key_env is not None and augment.teacher_url is None:
            problems.append("data.augment.teacher_key_env names the key of teacher_url; set teacher_url too.")
        return problems

    def _validate_mixture(self) -> list[str]:
        problems = []
        sources = [] if isinstance(self.train, str) else self.train
        for i, source in enumerate(sources):
            if not source.path:
                problems.append(f"data.train[{i}].path: missing; every source needs a data file.")
            if not source.weight > 0:
                problems.append(f"data.train[{i}].weight: got {source.weight}; must be positive (remove the source "
                                f"to leave it out).")
            if source.task == "replay":
                problems.append(f"data.train[{i}].task: 'replay' is the name of data.replay's task; rename it.")
        train_paths = [self.train] if isinstance(self.train, str) else [s.path for s in sources]
        paths = train_paths + (self.replay.paths if self.replay else [])
        twice = sorted({p for p in paths if p and paths.count(p) > 1})
        if twice:
            problems.append(f"data.train / data.replay: {twice} listed twice; list each file once and use its weight.")
        if self.mixing == "temperature" and not self.temperature > 0:
            problems.append(f"data.temperature: got {self.temperature}; must be positive (1 is proportional, "
                            f"2 to 5 flattens the mixture, large values make it uniform).")
        if self.mixing == "proportional" and self.temperature != 2.0:
            problems.append(f"data.temperature is {self.temperature} but data.mixing is 'proportional'; set "
                            f"data.mixing: temperature to use it.")
        if self.replay is not None:
            if not self.replay.paths or not all(self.replay.paths):
                problems.append("data.replay.source: missing; give a general data file, e.g. one written by "
                                "`whetstone data replay OUT.jsonl` (the model's own requests and answers).")
            if not 0.0 < self.replay.fraction < 1.0:
                problems.append(f"data.replay.fraction: got {self.replay.fraction}; must be in (0, 1), e.g. 0.1.")
            if not self.replay.kl_weight > 0:
                problems.append(f"data.replay.kl_weight: got {self.replay.kl_weight}; must be above 0, e.g. 1.")
            elif self.replay.kl_weight != 1.0 and not self.replay.distill:
                problems.append(f"data.replay.kl_weight: {self.replay.kl_weight} weights the distilled replay's KL, "
                                f"and data.replay.distill is false; set distill: true, or leave kl_weight out.")
        return problems


@dataclass
class TrainConfig:
    epochs: float = 1.0
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides epochs."""
    max_minutes: float | None = None
    """A training-time budget: stop at the end of the step that brings the time spent in training steps to this
    many minutes (loading, evaluations and saving do not count), then finish as at the last step (the final
    evaluation, the weights). max_steps (or epochs) still sets the schedule and the longest run."""
    batch_size: int = 8
    """Examples per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step. Effective batch = batch_size * grad_accum * processes."""
    global_batch_size: int | None = None
    """Examples per optimizer step over all processes; when set, batch_size is derived from it, so a run
    (or its resume) on any number of processes follows the same trajectory."""
    lr: float = 2.0e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """Decoupled weight decay, applied to matrices only (not norms or biases)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup: float = 0.03
    """Fraction of the steps spent warming the learning rate up linearly from 0."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup: cosine or linear to 0, or constant."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; null disables clipping."""
    seed: int = 0
    """Seed for initialisation, data order and dropout."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """fp32, or bf16 autocast (fp32 master weights); auto: bf16 on CUDA with bf16 and on CPUs with avx512_bf16 or
    amx_bf16, else fp32. bf16 on a CPU without those instructions runs emulated (slower), with a warning."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """Where to train; auto picks cuda, then mps, then cpu."""
    skip_nonfinite: bool = False
    """Skip (and count) a step whose loss or gradient is NaN/inf, instead of stopping the run."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""
    log_every: int = 10
    """Write a metrics.jsonl line every N optimizer steps."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint every N optimizer steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    logit_chunk: int | None = 1024
    """sft: supervised tokens per chunk of LM head + cross-entropy; bounds the head's memory to chunk x vocabulary
    floats, with the same loss and gradients. null computes all logits at once."""
    strategy: Literal["auto", "ddp", "fsdp", "deepspeed"] = "auto"
    """How several processes share the work: ddp (full copy each), fsdp (full shard of weights, gradients and
    optimizer state), deepspeed (ZeRO, from train.deepspeed); auto: deepspeed when train.deepspeed is set,
    fsdp under `accelerate launch` with an FSDP config, else ddp."""
    deepspeed: str | None = None
    """A DeepSpeed JSON config (e.g. configs/ds_zero2.json); batch sizes, accumulation and clipping left "auto"
    there are filled from this section."""

    def validate(self) -> list[str]:
        problems = []
        if self.strategy == "deepspeed" and self.deepspeed is None:
            problems.append("train.strategy: got 'deepspeed' but train.deepspeed is not set; set it to a DeepSpeed "
                            "JSON config such as configs/ds_zero2.json.")
        if self.deepspeed is not None and self.strategy not in ("auto", "deepspeed"):
            problems.append(f"train.deepspeed is set but train.strategy is '{self.strategy}'; set train.strategy: "
                            f"deepspeed (or auto), or remove train.deepspeed.")
        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            problems.append(f"train.deepspeed: {self.deepspeed} does not exist; give a DeepSpeed JSON config such as "
                            f"configs/ds_zero2.json.")
        for name in ("batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
            value = getattr(self, name)
            if value < 1:
                problems.append(f"train.{name}: got {value}; must be a positive integer.")
        if self.global_batch_size is not None and self.global_batch_size % self.grad_accum:
            problems.append(f"train.global_batch_size: got {self.global_batch_size}; it must be a multiple of "
                            f"train.grad_accum ({self.grad_accum}).")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"train.max_steps: got {self.max_steps}; must be positive, or null to use train.epochs.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"train.max_minutes: got {self.max_minutes}; must be positive, or null for no time "
                            f"budget.")
        if self.max_steps is None and self.epochs <= 0:
            problems.append(f"train.epochs: got {self.epochs}; must be positive.")
        if self.lr <= 0:
            problems.append(f"train.lr: got {self.lr}; must be positive, e.g. 2e-4 for LoRA or 2e-5 for full.")
        if not 0.0 <= self.warmup < 1.0:
            problems.append(f"train.warmup: got {self.warmup}; it is a fraction of the steps, in [0, 1).")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            problems.append(f"train.betas: got {self.betas}; must be two numbers in [0, 1), e.g. [0.9, 0.999].")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            problems.append(f"train.max_grad_norm: got {self.max_grad_norm}; must be positive, or null to disable.")
        if self.logit_chunk is not None and self.logit_chunk < 1:
            problems.append(f"train.logit_chunk: got {self.logit_chunk}; must be a positive number of tokens (e.g. "
                            f"1024), or null to compute all logits at once.")
        return problems


EVAL_METRICS = ("loss", "exact_match", "chrf", "bleu", "rouge", "accuracy", "macro_f1")
# The three question sets of the knowledge eval (whetstone/evaluate/knowledge.py), and their file names in a directory.
KNOWLEDGE_FILES = {"train_wording": "train_wording.jsonl", "paraphrase": "paraphrase.jsonl",
                   "heldout": "heldout.jsonl"}


@dataclass
class KnowledgeConfig:
    dir: str | None = None
    """A directory holding train_wording.jsonl, paraphrase.jsonl and heldout.jsonl (chat records)."""
    train_wording: str | None = None
    """Trained facts asked in a training wording; default: DIR/train_wording.jsonl."""
    paraphrase: str | None = None
    """Trained facts asked in a wording never trained on; default: DIR/paraphrase.jsonl."""
    heldout: str | None = None
    """Facts of the same kind never trained on; default: DIR/heldout.jsonl."""
    limit: int | None = None
    """Ask at most the first N questions of each set; null asks them all."""
    base: bool = True
    """Also score the base model (adapters switched off, or the base reloaded) for the style gain."""

    def paths(self) -> dict[str, str | None]:
        """{set: file}: an explicit path, else the file of that name in `dir`, else None."""
        return {name: getattr(self, name) or (str(Path(self.dir) / file) if self.dir else None)
                for name, file in KNOWLEDGE_FILES.items()}

    def check(self, key: str = "eval.knowledge") -> list[str]:
        # Not `validate`: the mapping is one arm of a union, where problems would read as "not a mapping".
        problems = []
        for name, path in self.paths().items():
            if path is None:
                problems.append(f"{key}.{name}: not set; give {key}.dir (holding {KNOWLEDGE_FILES[name]}) or "
                                f"{key}.{name}: FILE.")
            elif not path.startswith("hf:") and not Path(path).is_file():
                problems.append(f"{key}.{name}: {path} does not exist; build the sets (e.g. python "
                                f"examples/knowledge_base/build.py) or point {key} at the directory that holds them.")
        if self.limit is not None and self.limit < 1:
            problems.append(f"{key}.limit: got {self.limit}; must be positive, or null for every question.")
        return problems



@dataclass
class EvalConfig:
    every: int = 100
    """Evaluate on data.eval every N optimizer steps (and at the end)."""
    metrics: list[str] = field(default_factory=lambda: ["loss"])
    """loss (and perplexity) runs during training; exact_match, chrf, bleu, rouge, accuracy, macro_f1 at the end."""
    max_batches: int | None = None
    """Cap on eval batches per evaluation, to keep mid-run evals cheap."""
    before: bool = True
    """ppo, grpo, gkd: evaluate the held-out set before the first step too (step 0 of metrics.jsonl, the
    summary's *_before). false skips it: for runs whose "before" is another run's, the same base and seed."""
    final_limit: int | None = 200
    """End-of-training generation metrics use the first N eval records; null uses them all."""
    max_new_tokens: int = 128
    """Longest generated answer, in tokens, for the end-of-training metrics."""
    generation_batch_size: int = 16
    """Prompts generated together (left-padded, greedy, each row stops at EOS)."""
    forgetting: bool = False
    """At the end of training, run the general-ability probe on the base and the tuned model; deltas go to summary.json."""
    forgetting_data: str | list[str] | None = None
    """Probe files for eval.forgetting (text records: perplexity; chat records: QA). Default: examples/general_probe."""
    knowledge: str | KnowledgeConfig | None = None
    """At the end of training, the knowledge eval (docs/knowledge.md): a directory of the three sets, or a mapping."""

    def knowledge_sets(self) -> KnowledgeConfig | None:
        """eval.knowledge as a mapping (a plain string is its `dir`); None when unset."""
        return KnowledgeConfig(dir=self.knowledge) if isinstance(self.knowledge, str) else self.knowledge

    def probe_files(self) -> list[str]:
        if self.forgetting_data is None:
            return []
        return [self.forgetting_data] if isinstance(self.forgetting_data, str) else list(self.forgetting_data)

    def validate(self) -> list[str]:
        problems = []
        if self.every < 1:
            problems.append(f"eval.every: got {self.every}; must be a positive integer.")
        unknown = [m for m in self.metrics if m not in EVAL_METRICS]
        if unknown:
            problems.append(f"eval.metrics: got {unknown}; known metrics are {', '.join(EVAL_METRICS)}.")
        for name in ("max_new_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"eval.{name}: got {getattr(self, name)}; must be a positive integer.")
        if self.final_limit is not None and self.final_limit < 1:
            problems.append(f"eval.final_limit: got {self.final_limit}; must be positive, or null for every record.")
        # Checked now, not after training: a missing probe file must not cost a finished run.
        for path in self.probe_files():
            if not path.startswith("hf:") and not Path(path).exists():
                problems.append(f"eval.forgetting_data: {path} does not exist; give a JSONL file of text and/or chat "
                                f"records, or leave it unset for the bundled examples/general_probe set.")
        if self.forgetting_data is not None and not self.forgetting:
            problems.append("eval.forgetting_data is set but eval.forgetting is false; set eval.forgetting: true.")
        if self.knowledge_sets() is not None:
            problems += self.knowledge_sets().check()
        return problems


@dataclass
class LogConfig:
    to: list[Literal["tensorboard", "mlflow", "wandb"]] = field(default_factory=list)
    """Trackers that receive every metrics.jsonl row (each needs its package installed)."""
    project: str = "whetstone"
    """The W&B project and the MLflow experiment the run is logged under."""
    run_name: str | None = None
    """The run's name in the trackers; default: the run directory's name."""
    tensorboard_dir: str | None = None
    """Where TensorBoard event files go; default: RUN_DIR/tensorboard."""
    mlflow_uri: str | None = None
    """MLflow tracking URI (file:/path, http://host:5000, sqlite:///mlflow.db); default: MLflow's own."""
    wandb_mode: Literal["online", "offline"] = "online"
    """W&B mode: online streams to the W&B server; offline writes RUN_DIR/wandb for `wandb sync` later."""

    def validate(self) -> list[str]:
        duplicates = sorted({t for t in self.to if self.to.count(t) > 1})
        if duplicates:
            return [f"log.to: {duplicates} listed twice; name each tracker once."]
        return []


@dataclass
class StageConfig:
    name: str = ""
    """The stage's name; its run directory is RUN/stages/<index>-<name>."""
    data: DataConfig = field(default_factory=DataConfig)
    """The stage's data: the base config's data: with this stage's keys laid over it."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The stage's optimisation: the base train: with this stage's keys laid over it."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """The stage's evaluation: the base eval: with this stage's keys laid over it."""

    def validate(self) -> list[str]:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name or ""):
            return [f"name: got {self.name!r}; a stage needs a short name of letters, digits, '_', '-' or '.', "
                    f"e.g. name: legal; it names the stage's run directory."]
        return []


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """What is trained."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """Which loss."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the examples come from and how they become tokens."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation during and after training."""
    log: LogConfig = field(default_factory=LogConfig)
    """Experiment trackers fed from the same stream as metrics.jsonl."""
    output: str | None = None
    """Run directory; `-o DIR` on the command line overrides it."""
    stages: list[StageConfig] = field(default_factory=list)
    """A sequential pipeline: each stage overrides data/train/eval and starts from the previous one's output."""
    stages_adapters: Literal["merge", "stack", "continue"] = "merge"
    """lora between stages: merge (fold the adapter into a saved full model, start a new one), stack (keep every
    stage's adapter, frozen, under a new one: method.base_adapters) or continue (train the same adapter on).
    See whetstone/train/stages.py."""

    def validate(self) -> list[str]:
        """Checks across sections (each section checks its own fields)."""
        problems = []
        if self.method.init_adapter is not None and self.method.name not in ("lora", "dora"):
            problems.append(f"method.init_adapter applies to lora and dora, not '{self.method.name}'.")
        if self.method.base_adapters and self.method.name not in ("lora", "dora"):
            hint = (" A 4-bit qlora base cannot hold a folded adapter exactly; use method lora, or continue one "
                    "adapter (method.init_adapter)." if self.method.name == "qlora" else "")
            problems.append(f"method.base_adapters applies to lora and dora, not '{self.method.name}'.{hint}")
        # reward and classify add a new head, which always trains: a fully frozen backbone is their plain case.
        if self.method.trains_nothing() and self.objective.name not in ("reward", "classify"):
            problems.append(
                "method: 'freeze' with nothing left trainable; set method.top_blocks (e.g. 2), "
                "method.train_modules or method.train_head: true."
            )
        if self.method.name == "full" and self.model.dtype in ("bf16", "fp16"):
            problems.append(f"model.dtype: {self.model.dtype} with method full would train {self.model.dtype} weights "
                            f"(no fp32 master copy), and small updates round away; set model.dtype: auto (fp32 "
                            f"weights) with train.precision: bf16 for bf16 compute, or use method lora on a "
                            f"{self.model.dtype} base.")
        if self.objective.name == "classify":
            asked = [m for m in self.eval.metrics if m not in ("loss", "accuracy", "macro_f1")]
            if asked:
                problems.append(
                    f"eval.metrics: {asked} score generated text, but objective classify predicts a label with its "
                    f"head; it reports loss, accuracy, macro_f1 and the confusion matrix. Remove {', '.join(asked)}."
                )
        if self.objective.name in ONLINE_OBJECTIVES:
            asked = [m for m in self.eval.metrics if m != "loss"] + (["forgetting"] if self.eval.forgetting else [])
            if asked:
                problems.append(
                    f"eval: {self.objective.name} evaluates the held-out mean reward and KL itself, so it does not run "
                    f"{', '.join(asked)}; remove them, or evaluate the finished run with `whetstone eval --run`."
                )
        if self.objective.share_prompt and not (self.objective.name in PACKABLE and self.data.packing is not False):
            problems.append(f"objective.share_prompt applies to objectives {' and '.join(PACKABLE)} with data.packing "
                            f"on (got objective {self.objective.name}, data.packing "
                            f"{str(self.data.packing).lower()}).")
        if self.data.packing and self.objective.name not in PACKABLE:
            problems.append(f"data.packing: objective {self.objective.name} keeps one sequence per row "
                            f"(classification, rewards, rollouts), so it cannot be packed; packing is for objectives "
                            f"{' and '.join(PACKABLE)}. Set data.packing: false.")
        if self.data.replay is not None and self.data.replay.distill and self.objective.name != "sft":
            problems.append(f"data.replay.distill: objective {self.objective.name} does not learn from tokens, so "
                            f"there is nothing to distil; it is for objective sft. Set data.replay.distill: false.")
        if self.objective.share_prompt and self.model.attn_implementation == "flash_attention_2":
            problems.append("objective.share_prompt with model.attn_implementation flash_attention_2: a shared prefix "
                            "needs a custom attention mask, which flash-attention cannot read; set "
                            "objective.share_prompt: false (packing still applies, as one padding-free row per "
                            "micro-batch), or use attn_implementation sdpa.")
        if self.objective.engine == "vllm" and self.train.device in ("cpu", "mps"):
            problems.append(f"objective.engine: vllm runs on a CUDA GPU, but train.device is '{self.train.device}'; "
                            f"set objective.engine: hf (the default), which samples with the policy on any device.")
        if self.objective.engine == "vllm" and self.method.name == "qlora":
            problems.append("objective.engine: vllm with method qlora: the 4-bit base cannot be synced into vLLM's "
                            "copy of the weights; use method lora (a bf16 base), or objective.engine: hf.")
        if self.train.strategy in ("fsdp", "deepspeed") or self.train.deepspeed is not None:
            problems += sharding_problems(self, "deepspeed" if self.train.deepspeed else self.train.strategy)
        return problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sharding_problems(config: RunConfig, strategy: str) -> list[str]:
    """What FSDP and DeepSpeed cannot do here; every process holds only a shard of the weights."""
    problems = []
    if config.method.name == "qlora":
        problems.append(f"method: qlora with train.strategy {strategy}: 4-bit bitsandbytes weights cannot be sharded "
                        f"here; use method lora with train.strategy {strategy}, or qlora with train.strategy ddp.")
    if config.objective.name in (*ONLINE_OBJECTIVES, "gkd"):
        problems.append(f"objective: {config.objective.name} generates its own data in its own loop, which runs "
                        f"with ddp only; set train.strategy: ddp (or auto).")
    if config.data.replay is not None and config.data.replay.distill:
        problems.append(f"data.replay.distill with train.strategy {strategy}: the base model's forward pass is not "
                        f"wired for sharded weights; set data.replay.distill: false, or use train.strategy ddp.")
    if config.data.packing:
        problems.append(f"data.packing with train.strategy {strategy}: packed batches are not tested with sharded "
                        f"weights yet; set data.packing: false, or use train.strategy ddp.")
    asked = [m for m in config.eval.metrics if m != "loss"] + (["forgetting"] if config.eval.forgetting else [])
    asked += ["knowledge"] if config.eval.knowledge else []
    if asked:
        problems.append(f"eval: {', '.join(asked)} generate text at the end of training, which is not wired for "
                        f"train.strategy {strategy}; remove them and run `whetstone eval --run RUN_DIR` afterwards.")
    return problems


# ---------------------------------------------------------------------------
# Building typed sections from plain mappings, collecting every problem.

_SHORTHAND = {"model": "name", "method": "name", "objective": "name"}  # `model: x` means {name: x}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is dict or origin is dict:
        return "a mapping of names to values, e.g. {pattern: '[0-9]+'}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Return `value` as type `tp`, or append a problem and return the sentinel `_BAD`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        problems.append(f"{key}: got {value!r}; must be one of {_describe(tp)}.{hint}")
        return _BAD
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, arg, key, trial)
            if not trial:
                return out
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(sections) == 1:  # a section with a bad key: say which
            return _coerce(value, sections[0], key, problems)
        problems.append(f"{key}: got {value!r}; must be {_describe(tp)}.")
        return _BAD
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}: got {value!r}; must be {_describe(tp)}.")
            return _BAD
        (item_tp,) = typing.get_args(tp)
        items = [_coerce(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return _BAD if any(i is _BAD for i in items) else items
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: got {value!r}; must be a mapping of {_field_names(tp)}.")
            return _BAD
        return _build(tp, value, key, problems)
    if tp is dict or origin is dict:  # free-form settings (objective.reward[i].options): names, any values
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key}: got {value!r}; must be a finite number.")
            return _BAD
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            return float(value)  # PyYAML reads "1e-4" (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    problems.append(f"{key}: got {value!r}; must be {_describe(tp)}.")
    return _BAD


_BAD = object()
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _field_names(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _build(cls: type, raw: dict, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(sorted(known))}."
            problems.append(f"{dotted}: unknown key.{hint}")
            continue
        if key in _SHORTHAND and isinstance(value, str) and not prefix:
            value = {_SHORTHAND[key]: value}
        out = _coerce(value, hints[key], dotted, problems)
        if out is not _BAD:
            kwargs[key] = out
    for f in dataclasses.fields(cls):
        # Sections left out still get their checks (a config without data: has no data.train).
        if f.name not in raw and dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], {}, f"{prefix}.{f.name}" if prefix else f.name, problems)
    instance = cls(**kwargs)
    # Cross-field checks run on whatever did parse, so one pass shows every problem.
    if hasattr(instance, "validate"):
        problems.extend(instance.validate())
    return instance


# ---------------------------------------------------------------------------
# Loading: YAML, --set overrides, then typing.


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], value); the value is read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError([f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4."], "--set")
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError([f"--set {text!r}: the key {key!r} has an empty part."], "--set")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the raw string, e.g. a path with a colon
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = dict(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if isinstance(child, str) and i == 0 and part in _SHORTHAND:
                child = {_SHORTHAND[part]: child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError([f"--set {text}: '{'.'.join(parts[: i + 1])}' is {child!r}, not a mapping."], "--set")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WhetstoneError(f"config file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise WhetstoneError(f"{where}: this is not valid YAML ({getattr(exc, 'problem', exc)}).") from None
    except UnicodeDecodeError:
        raise WhetstoneError(f"{path}: not UTF-8 text; save the config as UTF-8.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise WhetstoneError(f"{path}: a config is a YAML mapping of model, method, objective, data, train, eval, output.")
    return raw


_STAGE_SECTIONS = ("data", "train", "eval")


def _merge(base: Any, over: Any) -> Any:
    """`over` laid over `base`, mapping by mapping; anything else in `over` replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


def _build_stages(raw: dict, stages: Any, problems: list[str]) -> list[StageConfig]:
    """Each stage's data/train/eval laid over the base config's, typed; problems name the stage."""
    if not isinstance(stages, list) or not stages:
        problems.append(f"stages: got {stages!r}; must be a non-empty list of {{name, data, train, eval}} mappings.")
        return []
    built = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            problems.append(f"stages[{i}]: got {stage!r}; must be a mapping with name and data/train/eval overrides.")
            continue
        resolved = {**stage, **{k: _merge(raw.get(k) or {}, stage.get(k) or {}) for k in _STAGE_SECTIONS}}
        own: list[str] = []
        built.append(_build(StageConfig, resolved, "", own))
        problems += [f"stages[{i}] ({stage.get('name', '?')}): {p}" for p in own]
    return built


def _pipeline_problems(config: RunConfig) -> list[str]:
    problems = []
    names = [s.name for s in config.stages]
    if len(set(names)) < len(names):
        problems.append(f"stages: names {names} repeat; give every stage its own name.")
    if config.objective.name != "sft":
        problems.append(f"stages: objective {config.objective.name} cannot run as a pipeline yet; pipelines train "
                        f"and measure objective sft (run other objectives' stages as separate runs).")
    if config.method.name == "qlora" and config.stages_adapters != "continue":
        problems.append(f"stages_adapters: {config.stages_adapters} folds adapters into a 4-bit qlora base, which "
                        f"loses precision; use stages_adapters: continue, or method lora.")
    for key in ("init_adapter", "base_adapters"):
        if getattr(config.method, key):
            problems.append(f"method.{key}: a pipeline sets it for each stage itself (stages_adapters); remove it.")
    return problems


def config_from_dict(raw: dict, source: str = "config") -> RunConfig:
    problems: list[str] = []
    stages = raw.get("stages", [])
    if stages != []:  # the dump of a single run says `stages: []`
        built = _build_stages(raw, stages, problems)
        raw = {k: v for k, v in raw.items() if k != "stages"}
    config = _build(RunConfig, raw, "", problems)
    if stages != []:
        # In a pipeline the top-level data: only holds defaults for the stages; each stage brings its own train data.
        problems = [p for p in problems if not p.startswith("data.train: missing")]
        config.stages = built
        problems += _pipeline_problems(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def model_config_from_dict(raw: dict, source: str = "config") -> ModelConfig:
    """A `model:` section alone, typed and checked as in a whole config (a run's config.yaml read for its model)."""
    problems: list[str] = []
    model = _build(ModelConfig, raw, "model", problems)
    if problems:
        raise ConfigError(problems, source)
    return model


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """Read a YAML config (or start from `base`), apply `--set` overrides, and type-check it."""
    raw = read_yaml(path) if path is not None else dict(base or {})
    raw = apply_overrides(raw, list(overrides))
    return config_from_dict(raw, str(path) if path else "config")


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
