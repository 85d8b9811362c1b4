"""DeepSpeed ZeRO through its own JSON config (train.deepspeed), where deepspeed is installed.

whetstone owns the batch arithmetic, so the four numbers DeepSpeed also wants
are filled from the train section: a value of "auto" (or a missing key) is
filled in, an explicit value must agree, and a disagreement is an error that
names both, rather than one side silently winning:

    train_micro_batch_size_per_gpu   per-process micro-batch (train.batch_size, or from global_batch_size)
    gradient_accumulation_steps      train.grad_accum
    train_batch_size                 micro-batch x grad_accum x processes
    gradient_clipping                train.max_grad_norm (0 = off)

The optimizer and the learning-rate schedule are whetstone's (AdamW, train.lr,
train.schedule), so a JSON that defines its own is refused.

With more than one process, `Engine` hands whetstone's loss module and AdamW to
`deepspeed.initialize`. The loop keeps what makes N processes follow the same
trajectory as one: the micro-batches, the token-normalised loss (a sum divided by
the step's units over all processes) and the schedule. The engine does backward,
the gradient reduction (ZeRO-2/3: reduce-scatter into each process's partition),
clipping to gradient_clipping and the AdamW step on its partition. Checkpoints stay
in whetstone's one-process format: every process joins the gather of the full fp32
weights and AdamW moments, rank 0 writes, so a checkpoint written by N processes
resumes on M, with or without DeepSpeed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from whetstone.config import TrainConfig
from whetstone.errors import WhetstoneError

INSTALL_HINT = (
    "pip install deepspeed (on CPU-only machines: DS_BUILD_OPS=0 pip install deepspeed; it compiles its "
    "ops on first use and needs a C++ compiler)"
)


def require_deepspeed() -> None:
    """Fail before any work when the deepspeed package is missing."""
    if importlib.util.find_spec("deepspeed") is None:
        raise WhetstoneError(
            f"train.strategy deepspeed (train.deepspeed or ACCELERATE_USE_DEEPSPEED) needs the deepspeed package, "
            f"which is not installed in this environment: {INSTALL_HINT}. Or use train.strategy: fsdp, which "
            f"shards weights, gradients and optimizer state with torch alone."
        )


def read_config(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise WhetstoneError(f"train.deepspeed: cannot read {path}: {exc.strerror or exc}.") from None
    except json.JSONDecodeError as exc:
        raise WhetstoneError(f"train.deepspeed: {path} line {exc.lineno}: not valid JSON ({exc.msg}).") from None
    if not isinstance(data, dict):
        raise WhetstoneError(f"train.deepspeed: {path} must hold a JSON object, got {type(data).__name__}.")
    return data


def engine_config(ds: dict, cfg: TrainConfig, micro_batch: int, world_size: int,
                  source: str = "train.deepspeed") -> dict:
    """DeepSpeed's config with whetstone's batch sizes, accumulation, clipping and precision filled in.

    `ds` is the user's JSON (not modified); `micro_batch` is the per-process micro-batch.
    """
    ours = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": micro_batch * cfg.grad_accum * world_size,
        "gradient_clipping": float(cfg.max_grad_norm or 0.0),  # DeepSpeed reads 0 as "no clipping"
    }
    where = {
        "train_micro_batch_size_per_gpu": "train.batch_size (per process)",
        "gradient_accumulation_steps": "train.grad_accum",
        "train_batch_size": f"train.batch_size x train.grad_accum x {world_size} processes",
        "gradient_clipping": "train.max_grad_norm",
    }
    out = dict(ds)
    problems = []
    for key, value in ours.items():
        given = ds.get(key, "auto")
        if given == "auto":
            out[key] = value
        elif not isinstance(given, (int, float)) or float(given) != float(value):
            problems.append(f"{key} is {given!r} but {where[key]} gives {value}; set it to \"auto\" (or {value}).")
    for section in ("optimizer", "scheduler"):
        if section in ds:
            problems.append(f"'{section}' is set, but whetstone builds AdamW and its schedule from train.lr, "
                            f"train.schedule and train.warmup; remove the '{section}' section.")
    if (ds.get("fp16") or {}).get("enabled") in (True, "auto"):
        problems.append("fp16 is enabled, but whetstone trains in fp32 or bf16 (train.precision); remove 'fp16' or "
                        "set its 'enabled' to false.")
    bf16 = dict(ds.get("bf16") or {})
    # DeepSpeed runs on CUDA, where auto means bf16 if the GPU computes it (train/device.py resolve_precision).
    wanted = cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available()
                                         and torch.cuda.is_bf16_supported())
    if bf16.get("enabled", "auto") == "auto":
        bf16["enabled"] = wanted
        out["bf16"] = bf16
    elif bool(bf16["enabled"]) != wanted:
        problems.append(f"bf16.enabled is {bf16['enabled']} but train.precision is {cfg.precision}; set "
                        f"bf16.enabled to \"auto\".")
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage == 0:
        problems.append("zero_optimization.stage is 0 (or missing): that is plain data parallelism; set "
                        "zero_optimization.stage to 2 or 3 (see configs/ds_zero2.json), or use train.strategy: ddp.")
    elif stage not in (1, 2, 3):
        problems.append(f"zero_optimization.stage is {stage!r}; DeepSpeed ZeRO has stages 1 to 3.")
    if problems:
        raise WhetstoneError(f"{source}: the DeepSpeed config disagrees with the run config: " + " ".join(problems))
    # torch's AdamW is what whetstone builds; ZeRO runs it, but asks to be told so for client optimizers.
    out.setdefault("zero_allow_untested_optimizer", True)
    return out


def check_config(config, world_size: int) -> dict:
    """The engine config for this run (train.deepspeed filled in); raises on any disagreement."""
    cfg = config.train
    if cfg.deepspeed is None:
        raise WhetstoneError("train.deepspeed is not set; set it to a DeepSpeed JSON config such as "
                             "configs/ds_zero2.json.")
    per_step = cfg.grad_accum * world_size
    micro_batch = cfg.batch_size if cfg.global_batch_size is None else max(1, cfg.global_batch_size // per_step)
    return engine_config(read_config(cfg.deepspeed), cfg, micro_batch, world_size)


class _Forward(torch.nn.Module):
    """The loss module for the engine: returns (loss_sum, LossOutput).

    DeepSpeed starts its backward bookkeeping (ZeRO's gradient hooks) from hooks on the tensors a forward
    returns, and it looks into tuples, lists and dicts but not into a dataclass.
    """

    def __init__(self, loss_module: torch.nn.Module):
        super().__init__()
        self.inner = loss_module

    def forward(self, batch: dict[str, torch.Tensor]):
        out = self.inner(batch)
        return out.loss_sum, out


_MODEL_PREFIX = "inner.model."  # the model's parameter names inside _Forward


class Engine:
    """DeepSpeed's engine around whetstone's loss module and AdamW (ZeRO stage 1, 2 or 3).

    Per micro-batch: `boundary(last)` before the forward, `backward(loss)` after it;
    per optimizer step: `step()`. The loop's loss is already divided by the whole
    step's units, so DeepSpeed must not divide it again by the accumulation steps
    (backward's scale_wrt_gas, off here) and must reduce only at the step's last
    micro-batch (set_gradient_accumulation_boundary, so the boundary follows the
    loop rather than DeepSpeed's own micro-step counter). DeepSpeed averages the
    gradients over processes, which the loop's grad_scale (the world size) undoes.
    """

    def __init__(self, loss_module: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 ds_config: dict):
        import deepspeed

        # Deprecation notices from inside DeepSpeed's collectives, once per call on every process: not ours to fix.
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        # The one-process numbering of AdamW's parameters and groups, read before ZeRO replaces each group's
        # parameters with this process's flat fp32 partition: checkpoints are keyed by it.
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.group_sizes = [len(group["params"]) for group in optimizer.param_groups]
        self.name_of = {id(p): n for n, p in model.named_parameters()}
        self.model = model
        self.optimizer = optimizer  # ours; ZeRO steps it on the flat partitions, so the LR schedule still drives it
        self.stage = int(ds_config["zero_optimization"]["stage"])
        self.engine, self.zero, _, _ = deepspeed.initialize(model=_Forward(loss_module), optimizer=optimizer,
                                                            config=ds_config)
        self.head = self._head_parameters()
        for p in self.head:
            # ZeRO-3 gathers a module's weights around that module's own forward, but the chunked LM head
            # (models/forward.py) reads the head's weight directly, after the decoder ran (and, for a tied
            # head, after the embedding released the same weight). As DeepSpeed does for a weight it sees
            # escape its module: mark it external, so the embedding keeps it, and have the loss module
            # gather it for each forward and backward (evaluation gathers it itself, `evaluating`).
            p.is_external_param = True
            deepspeed.zero.register_external_parameter(self.engine.module, p)

    def _head_parameters(self) -> list[torch.nn.Parameter]:
        """ZeRO-3: the output embedding's own weight and bias (also the input embedding when tied)."""
        if self.stage < 3:
            return []
        from whetstone.models.forward import unwrap

        head = unwrap(self.model).get_output_embeddings()
        return list(head.parameters(recurse=False)) if head is not None else []

    def evaluating(self):
        """Around evaluation, which calls the model directly: ZeRO-3 gathers the head's weights."""
        import deepspeed

        return deepspeed.zero.GatheredParameters(self.head) if self.head else contextlib.nullcontext()

    def __call__(self, batch: dict[str, torch.Tensor]):
        return self.engine(batch)[1]

    def boundary(self, last_micro_batch: bool) -> None:
        """Reduce gradients (and allow the step) only after the step's last micro-batch."""
        self.engine.set_gradient_accumulation_boundary(last_micro_batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop normalised it by the whole step already

    def step(self) -> float:
        """Clip (gradient_clipping) and apply AdamW; returns the global gradient norm before clipping.

        A non-finite gradient makes DeepSpeed skip the update and report an infinite norm, which the
        loop then stops on (or counts, with train.skip_nonfinite).
        """
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return 0.0 if norm is None else float(norm)

    # ---- one-process checkpoints -------------------------------------------------------------------------

    def _flat_partitions(self) -> list[torch.Tensor]:
        """This process's flat fp32 partitions: AdamW's actual parameters under ZeRO."""
        if self.stage == 3:
            return list(self.zero.fp32_partitioned_groups_flat)
        return list(self.zero.single_partition_of_fp32_groups)

    def _link_moments(self) -> None:
        # ZeRO-1/2 link each parameter to its slice of the AdamW moments once, after the first step, when
        # only the first group's state exists (DeepSpeed 0.19.8, several param groups): link again now.
        if self.stage < 3:
            self.zero._hp_optimizer_states_linked = False
            self.zero._lazy_init_hp_params_optimizer_state()

    def _moment_keys(self) -> tuple[list[str], torch.Tensor | None]:
        """(AdamW's per-element state keys, its step count); ([], None) before the first step."""
        state = self.optimizer.state.get(self._flat_partitions()[0]) or {}
        keys = [k for k, v in state.items() if torch.is_tensor(v) and v.dim() == 1]
        return keys, (state["step"].detach().clone().cpu() if "step" in state else None)

    def gather_state(self) -> tuple[dict, dict]:
        """(trainable fp32 weights, AdamW state) in the one-process layout, on rank 0 ({} elsewhere).

        A collective: every process must call it. Tensors are gathered one parameter at a time.
        """
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        main = dist.get_rank() == 0
        keys, step = self._moment_keys()
        if step is not None:
            self._link_moments()
        weights, state = {}, {}
        for index, p in enumerate(self.params):
            shape = getattr(p, "ds_shape", p.shape)  # ZeRO-3 leaves an empty tensor and keeps the shape here
            full = safe_get_full_fp32_param(p).detach().reshape(shape)
            slots = {key: safe_get_full_optimizer_state(p, key).detach().reshape(shape) for key in keys}
            if main:
                weights[self.name_of[id(p)]] = full.cpu().clone()
                if step is not None:
                    state[index] = {"step": step.clone(), **{k: v.cpu().clone() for k, v in slots.items()}}
        if not main:
            return {}, {}
        groups, start = [], 0
        for group, size in zip(self.optimizer.param_groups, self.group_sizes):
            settings = {k: v for k, v in group.items() if k != "params"}  # lr, betas, weight_decay, ...
            groups.append({**settings, "params": list(range(start, start + size))})
            start += size
        return weights, {"state": state, "param_groups": groups}

    def restore(self, weights: dict[str, torch.Tensor], optimizer_state: dict) -> None:
        """Load one-process weights and AdamW state; each process keeps its partitions of them.

        Every process reads the checkpoint itself, so nothing is broadcast.
        """
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        saved = optimizer_state.get("state") or {}
        if saved:
            first = next(iter(saved.values()))
            keys = [k for k, v in first.items() if k != "step" and torch.is_tensor(v)]
            for flat in self._flat_partitions():
                # AdamW creates its state at the first step; create it now so the loaded moments have a home.
                if not self.optimizer.state.get(flat):
                    self.optimizer.state[flat] = {"step": first["step"].detach().clone().to(torch.float32),
                                                  **{k: torch.zeros_like(flat) for k in keys}}
                else:
                    self.optimizer.state[flat]["step"] = first["step"].detach().clone().to(torch.float32)
            self._link_moments()
        for index, p in enumerate(self.params):
            value = weights[self.name_of[id(p)]]
            safe_set_full_fp32_param(p, value)
            self._set_working_copy(p, value)
            for key, slot in (saved.get(index) or {}).items():
                if key != "step":
                    safe_set_full_optimizer_state(p, slot, key)
        # The schedule's LR lives in the param groups, which the one-process path restores with the optimizer.
        for group, saved_group in zip(self.optimizer.param_groups, optimizer_state.get("param_groups") or []):
            group.update({k: v for k, v in saved_group.items() if k != "params"})

    def _set_working_copy(self, p: torch.nn.Parameter, value: torch.Tensor) -> None:
        """The model's own copy of a weight (what the forward uses), next to ZeRO's fp32 master."""
        with torch.no_grad():
            if self.stage < 3:  # ZeRO-1/2: every process holds the whole weight
                p.copy_(value.to(p.dtype))
                return
            import deepspeed

            # ZeRO-3: gather, let rank 0 write, and DeepSpeed partitions rank 0's value again on exit.
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if dist.get_rank() == 0:
                    p.copy_(value.to(p.dtype))

    def gather_weights(self, trainable_only: bool) -> dict[str, torch.Tensor] | None:
        """ZeRO-3: the full state dict for save_pretrained, on rank 0 ({} elsewhere); a collective.

        None under ZeRO-1/2, whose model holds its whole weights on every process.
        """
        if self.stage < 3:
            return None
        full = self.engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=trainable_only)
        if full is None:
            return {}
        # A tied weight comes back under both names; keep the one the model lists, as a one-process save does.
        kept = {n for n, _ in self.model.named_parameters()}
        aliases = {n for n, _ in self.model.named_parameters(remove_duplicate=False)} - kept
        out = {k[len(_MODEL_PREFIX):]: v for k, v in full.items() if k.startswith(_MODEL_PREFIX)}
        return {n: t for n, t in out.items() if n not in aliases}
