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
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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


def engine_config(ds: dict, cfg: TrainConfig, micro_batch: int, world_size: int, source: str = "train.deepspeed") -> dict:
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
    wanted = cfg.precision == "bf16"
    if bf16.get("enabled", "auto") == "auto":
        bf16["enabled"] = wanted
        out["bf16"] = bf16
    elif bool(bf16["enabled"]) != wanted:
        problems.append(f"bf16.enabled is {bf16['enabled']} but train.precision is {cfg.precision}; set "
                        f"bf16.enabled to \"auto\".")
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(f"zero_optimization.stage is {stage!r}; DeepSpeed ZeRO has stages 0 to 3.")
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
