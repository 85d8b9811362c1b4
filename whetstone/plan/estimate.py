"""What a run will cost, per method: parameters, memory, FLOPs, time and storage.

Everything here is arithmetic over a few measured or counted numbers, so it can be
checked by hand:

- parameters are counted exactly on a model built on the meta device (no weights
  are read), after applying the method there (`count_method_parameters`);
- activations come from `ActivationFit`, measured by the probe (probe.py):
  saved-for-backward bytes = a * tokens + b * batch * length^2 + c * supervised tokens;
- the memory model of one process (fp32 weights, AdamW):

      peak = baseline + weights + gradients + optimizer + activations + logits

  weights   = total params x 4 bytes (qlora: targeted Linear weights at 4.13 bits, NF4 with
              double quantisation; everything else fp32)
  gradients = trainable x 4 bytes (fp32; gradients of frozen weights are never allocated)
  optimizer = trainable x 8 bytes (AdamW keeps two fp32 moments per trainable parameter)
  activations = the fit at the largest padded micro-batch of the run (B x T, T = the longest
              example in that micro-batch), all but the head
  logits    = the fit's supervised-token term (the head runs at supervised positions only,
              see models/forward.py) plus its gradient of the same size in backward
  baseline  = the resident memory of the process before any model is loaded (Python, torch,
              transformers, the tokenizer and the data), measured by the probe
  allocator = what a fresh process running the run's own first optimizer steps (real batches)
              held at its peak RSS beyond the terms above: freed memory the allocator keeps,
              fragmentation, workspaces, the model's load. Measured by the probe, added to the peak.

- with gradient checkpointing, a block keeps only its input (B x T x hidden x 4 bytes) and
  one block's activations are live at a time during the recompute:
      ckpt activations = layers x B x T x H x 4 + body / layers
- FLOPs per token, N = parameters that multiply (all but the input embedding table):
      every weight trains:        6N              (2N forward, 2N input grads, 2N weight grads)
      frozen base (freeze, lora): 2N + 2N_below_top + 2N_trainable
      plus 2N for a reference model's forward (DPO and the other losses that use one)
  where N_below_top is what backward must flow through (the whole model for adapters, only the
  blocks from the lowest trainable one up for freeze). Attention's own T^2 term is left out.
- output size on disk: adapters save trainable x 4 bytes (PEFT safetensors, fp32); full and
  freeze save the whole model, total x 4 bytes. K task variants cost K adapters plus one shared
  base, or K whole models.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field

import torch

from whetstone.config import MethodConfig, ModelConfig
from whetstone.errors import WhetstoneError

FP32 = 4
ADAMW_BYTES = 8  # two fp32 moments per trainable parameter
NF4_BYTES = 4.127 / 8  # 4-bit NF4 + 8-bit absmax per 64 + fp32 per 256 absmax (double quantisation)
METHOD_NAMES = ("full", "freeze", "lora", "dora", "qlora")
DEFAULT_FREEZE_BLOCKS = 4  # the freeze row when the config's own method is not freeze (configs/sft_freeze.yaml)


@dataclass
class ParameterCount:
    total: int  # every parameter of the trained model (tied weights once; adapters included)
    trainable: int
    base_total: int  # the model before the method (no adapters)
    matmul: int  # parameters that multiply activations: all but the input embedding table
    backward_through: int  # matmul parameters that backward has to flow through (input gradients)
    quantizable: int  # base Linear weights a 4-bit load would quantise (all but the head)
    layers: int
    hidden: int

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)


@dataclass
class ActivationFit:
    """Bytes saved for backward by one micro-batch: a*tokens + b*batch*length^2 + c*supervised + d.

    Measured by the probe on the real model (probe.py); `c` is the head's (N, V) logits and the
    loss's saved softmax at the supervised positions; `d` what does not grow with the batch (DoRA
    keeps each adapted weight's norm computation, for instance).
    """

    per_token: float  # a
    per_batch_len2: float  # b
    per_supervised: float  # c
    constant: float = 0.0  # d

    def body(self, batch: int, length: int) -> float:
        return self.per_token * batch * length + self.per_batch_len2 * batch * length**2 + self.constant

    def logits(self, supervised: int) -> float:
        # The saved logits, plus their gradient of the same (N, V) shape allocated at the start of backward.
        return 2.0 * self.per_supervised * supervised


@dataclass
class MemoryEstimate:
    baseline: float
    weights: float
    gradients: float
    optimizer: float
    activations: float  # the body, without gradient checkpointing
    activations_checkpointed: float
    logits: float
    gradient_checkpointing: bool  # which activation figure the peak uses (train.gradient_checkpointing)
    allocator: float = 0.0  # what the probe's fresh process held beyond the terms above (CPU runs)

    def peak_with(self, checkpointing: bool) -> float:
        acts = self.activations_checkpointed if checkpointing else self.activations
        return self.baseline + self.weights + self.gradients + self.optimizer + acts + self.logits + self.allocator

    @property
    def peak(self) -> float:
        """The peak of the run as configured (train.gradient_checkpointing)."""
        return self.peak_with(self.gradient_checkpointing)


@dataclass
class MicroBatchShape:
    """The largest micro-batch of the run, as the memory peak sees it."""

    batch: int
    length: int  # padded length: the longest example in the micro-batch
    supervised: int


@dataclass
class MethodPlan:
    method: str
    params: ParameterCount | None
    memory: MemoryEstimate | None = None
    flops_per_token: float | None = None
    seconds: float | None = None
    measured: dict | None = None  # the probe's timed steps: first_step_s, per_token_s, per_step_s, steps
    output_bytes: float | None = None
    variants_bytes: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out: dict = {"method": self.method, "notes": self.notes}
        if self.params is not None:
            p = self.params
            out |= {"total_params": p.total, "trainable_params": p.trainable,
                    "trainable_pct": round(p.trainable_pct, 4)}
        if self.memory is not None:
            m = self.memory
            out["memory_mb"] = {
                "baseline": _mb(m.baseline), "weights": _mb(m.weights), "gradients": _mb(m.gradients),
                "optimizer": _mb(m.optimizer), "activations": _mb(m.activations),
                "activations_checkpointed": _mb(m.activations_checkpointed), "logits": _mb(m.logits),
                "allocator": _mb(m.allocator),
            }
            out["peak_mb"] = _mb(m.peak)
            out["peak_without_checkpointing_mb"] = _mb(m.peak_with(False))
            out["peak_with_checkpointing_mb"] = _mb(m.peak_with(True))
        out["flops_per_token"] = self.flops_per_token
        out["seconds"] = None if self.seconds is None else round(self.seconds, 2)
        if self.measured is not None:
            out["measured"] = self.measured
        out["output_mb"] = None if self.output_bytes is None else _mb(self.output_bytes)
        out["variants_mb"] = None if self.variants_bytes is None else _mb(self.variants_bytes)
        return out


@dataclass
class PlanOptions:
    """What `whetstone plan` is asked: the methods, the device the run will train on, and the budget."""

    methods: list[str] = field(default_factory=lambda: ["full", "freeze", "lora", "dora", "qlora"])
    device: str = "cpu"  # where the run will train: cpu or cuda
    variants: int = 10  # K task variants for the storage column
    peak_tflops: float | None = None  # a stated device peak, for --device cuda without a GPU here
    utilisation: float = 0.4  # the share of that peak a fine-tuning step reaches (model FLOPs utilisation)
    budget: float | None = None  # bytes; None: no recommendation (the analytic plan uses the GPU's memory)
    gpu: str | None = None  # a known GPU (analytic.GPUS): plan from config.json alone, without the weights
    memory: float | None = None  # bytes of one GPU (or, with device cpu, of the machine): plan from config.json
    gpus: int = 1  # GPUs sharding weights, gradients and optimizer states (FSDP / ZeRO-3)

    @property
    def analytic(self) -> bool:
        return self.gpu is not None or self.memory is not None


@dataclass
class Plan:
    """What it found: one row per method, and the run's steps and largest micro-batch (planner, analytic)."""

    rows: list[MethodPlan]
    steps: int
    padded_tokens: int
    largest: MicroBatchShape
    time_source: str  # how the seconds were obtained
    device: str
    recommendation: str | None = None
    notes: list[str] = field(default_factory=list)
    memory_note: str | None = None  # the memory model's one-line summary, when it is not the probe's

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "steps": self.steps,
            "padded_tokens": self.padded_tokens,
            "largest_micro_batch": {"batch": self.largest.batch, "length": self.largest.length,
                                    "supervised": self.largest.supervised},
            "time_source": self.time_source,
            "methods": [r.to_dict() for r in self.rows],
            "recommendation": self.recommendation,
            "notes": self.notes,
        }


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


def method_config(base: MethodConfig, name: str, layers: int | None = None) -> MethodConfig:
    """The config's method options (r, alpha, targets, top_blocks...) under another method name."""
    cfg = dataclasses.replace(base, name=name, init_adapter=None)
    if name == "freeze" and cfg.trains_nothing():
        cfg.top_blocks = min(DEFAULT_FREEZE_BLOCKS, layers or DEFAULT_FREEZE_BLOCKS)
    return cfg


def build_meta_model(model_cfg: ModelConfig):
    """The model's architecture on the meta device: shapes without weights, so any size builds at once."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from whetstone.models.load import quiet_transformers, resolve_model

    quiet_transformers()
    resolved = resolve_model(model_cfg.name)
    try:
        hf_config = AutoConfig.from_pretrained(resolved.path, revision=model_cfg.revision,
                                               trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise WhetstoneError(f"model: could not read the config of {model_cfg.name}: {exc}") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config, trust_remote_code=model_cfg.trust_remote_code)


def count_method_parameters(model_cfg: ModelConfig, method: MethodConfig) -> ParameterCount:
    """Exact parameter counts of `method` applied to the model, built on the meta device."""
    from whetstone.methods import apply_method, count_parameters
    from whetstone.methods.freeze import transformer_blocks

    model = build_meta_model(model_cfg)
    _, base_total = count_parameters(model)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    tied = head_weight is not None and head_weight is embed
    # The input embedding is a lookup, not a matmul; a tied head multiplies, so it counts once as the head.
    matmul = base_total - (0 if tied else embed.numel())
    head_params = head_weight.numel() if head_weight is not None else 0
    quantizable = sum(m.weight.numel() for m in model.modules()
                      if isinstance(m, torch.nn.Linear) and m is not head)
    blocks = transformer_blocks(model)
    hidden = int(getattr(model.config, "hidden_size", embed.shape[1]))
    # qlora's kbit preparation cannot run on meta tensors; its trainable parameters are lora's.
    applied_cfg = dataclasses.replace(method, name="lora") if method.name == "qlora" else method
    try:
        model = apply_method(model, applied_cfg)
        trainable, total = count_parameters(model)
    except (RuntimeError, NotImplementedError, ValueError):
        trainable = lora_parameters_from_shapes(model, method)
        total = base_total + trainable
    if method.name == "freeze":
        # Backward flows from the head down to the lowest trainable block only.
        start = len(blocks) - method.top_blocks if method.top_blocks else len(blocks)
        below = sum(p.numel() for b in blocks[start:] for p in b.parameters())
        backward_through = below + head_params + _other_trainable(model, blocks, method)
    else:
        backward_through = matmul
    return ParameterCount(total=total, trainable=trainable, base_total=base_total, matmul=matmul,
                          backward_through=min(backward_through, matmul), quantizable=quantizable,
                          layers=len(blocks), hidden=hidden)


def _other_trainable(model, blocks, method: MethodConfig) -> int:
    """freeze with train_modules/train_head below the top blocks: backward reaches them, so count all."""
    if method.train_modules or method.train_head:
        return sum(p.numel() for b in blocks for p in b.parameters())
    return 0


def lora_parameters_from_shapes(model: torch.nn.Module, method: MethodConfig) -> int:
    """LoRA parameters from the targeted Linear shapes, for models peft cannot wrap on meta.

    r * (in + out) per targeted Linear (A is r x in, B is out x r); DoRA adds a magnitude per
    output feature. 'all-linear' is every Linear but the output head, as in peft.
    """
    head = model.get_output_embeddings()
    targets = method.targets
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if targets != "all-linear" and not any(leaf == t or fnmatch.fnmatch(name, t) for t in targets):
            continue
        total += method.r * (module.in_features + module.out_features)
        if method.name == "dora":
            total += module.out_features
    return total


def flops_per_token(params: ParameterCount, method: str, reference: bool = False) -> float:
    """Training FLOPs per token: 6N when every weight trains, 2N + 2N_backward + 2N_trainable otherwise.

    `reference`: the objective also runs a frozen reference model forward on every token (DPO, IPO, hinge),
    2N more, the base's N: lora's reference is the base with its adapters off. Precomputing the reference
    moves that forward before the first step; it does not remove it.
    """
    extra = 2.0 * params.matmul if reference else 0.0
    if method == "full":
        return 6.0 * params.matmul + extra
    adapters = params.total - params.base_total  # lora/dora weights also multiply in forward and backward
    return 2.0 * (params.matmul + adapters) + 2.0 * (params.backward_through + adapters) + 2.0 * params.trainable + extra


def weight_bytes(params: ParameterCount, method: str) -> float:
    if method == "qlora":
        return params.quantizable * NF4_BYTES + (params.total - params.quantizable) * FP32
    return params.total * FP32


def checkpointed_activations(fit: ActivationFit, params: ParameterCount, shape: MicroBatchShape) -> float:
    """Block inputs kept for every layer, plus one block's activations live during its recompute."""
    kept = params.layers * shape.batch * shape.length * params.hidden * FP32
    return kept + fit.body(shape.batch, shape.length) / max(params.layers, 1)


def estimate_memory(params: ParameterCount, method: str, fit: ActivationFit, shape: MicroBatchShape,
                    baseline: float, gradient_checkpointing: bool) -> MemoryEstimate:
    return MemoryEstimate(
        baseline=baseline,
        weights=weight_bytes(params, method),
        gradients=params.trainable * FP32,
        optimizer=params.trainable * ADAMW_BYTES,
        activations=fit.body(shape.batch, shape.length),
        activations_checkpointed=checkpointed_activations(fit, params, shape),
        logits=fit.logits(shape.supervised),
        gradient_checkpointing=gradient_checkpointing,
    )


def output_bytes(params: ParameterCount, method: str) -> float:
    """What the run writes: an adapter (trainable weights) or the whole model, fp32 safetensors."""
    if method in ("lora", "dora", "qlora"):
        return params.trainable * FP32
    return params.total * FP32


def variants_bytes(params: ParameterCount, method: str, k: int) -> float:
    """K task variants: K adapters plus the one base they share, or K whole models."""
    if method in ("lora", "dora", "qlora"):
        return k * output_bytes(params, method) + params.base_total * FP32
    return k * output_bytes(params, method)


def parse_size(text: str, flag: str = "--memory-budget") -> float:
    """'8GB', '512MB', '8GiB', '1.5g' -> bytes (GB and GiB both mean 2^30 here, as RSS tools report)."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    s = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if s and s[-1] in units:
            value = float(s[:-1]) * units[s[-1]]
        else:
            value = float(s)
    except ValueError:
        raise WhetstoneError(f"{flag}: got {text!r}; write a size such as 8GB, 512MB or 16GiB.") from None
    if not value > 0:
        raise WhetstoneError(f"{flag}: got {text!r}; must be a positive size such as 8GB.")
    return value


def recommend(plans: list[MethodPlan], budget: float) -> str:
    """One sentence: the cheapest method (shortest predicted time, then smallest output) under the budget."""
    budget_gb = budget / 2**30
    fitting = [p for p in plans if p.memory is not None and p.memory.peak <= budget]
    if fitting:
        best = min(fitting, key=lambda p: (p.seconds if p.seconds is not None else float("inf"),
                                           p.output_bytes or 0.0, p.memory.peak))
        others = [p.method for p in fitting if p is not best]
        why = f"; {', '.join(others)} also fit but cost more time or storage" if others else ""
        return (f"recommended: {best.method}: the cheapest method that fits {budget_gb:.1f} GB (predicted peak "
                f"{best.memory.peak / 2**30:.2f} GB, {_duration(best.seconds)}, "
                f"{_mb(best.output_bytes or 0):,.1f} MB on disk){why}.")
    planned = [p for p in plans if p.memory is not None]
    if not planned:
        return f"nothing could be planned against the {budget_gb:.1f} GB budget."
    smallest = min(planned, key=lambda p: p.memory.peak)
    m = smallest.memory
    fixed = m.baseline + m.weights + m.gradients + m.optimizer
    hints = []
    if not m.gradient_checkpointing:
        hints.append(f"train.gradient_checkpointing=true ({m.peak_with(True) / 2**30:.2f} GB)")
    acts = m.activations_checkpointed if m.gradient_checkpointing else m.activations
    halved = fixed + (acts + m.logits) / 2
    hints.append(f"half train.batch_size with twice train.grad_accum ({halved / 2**30:.2f} GB)")
    hints.append(f"a shorter data.max_length (at most {fixed / 2**30:.2f} GB even with tiny batches)")
    return (f"nothing fits {budget_gb:.1f} GB: the smallest is {smallest.method} at {m.peak / 2**30:.2f} GB. "
            f"Try {'; or '.join(hints)}.")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "time unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
