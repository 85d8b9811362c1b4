"""Device and precision: pick where to train, and refuse honestly what cannot run."""

from __future__ import annotations

import contextlib

import torch

from whetstone.errors import WhetstoneError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise WhetstoneError("train.device: cuda was asked for, but torch sees no CUDA GPU; use train.device=auto or cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise WhetstoneError("train.device: mps was asked for, but this machine has no Apple GPU; use train.device=auto.")
    return torch.device(name)


def cpu_supports_bf16() -> tuple[bool, str]:
    """bf16 matmuls are only fast where the CPU has native bf16 instructions."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False, "cannot read /proc/cpuinfo to check for bf16 instructions"
    for flag in ("avx512_bf16", "amx_bf16"):
        if flag in flags:
            return True, flag
    return False, "this CPU has neither avx512_bf16 nor amx_bf16, so bf16 would be emulated and slower than fp32"


def autocast_context(device: torch.device, precision: str):
    """A context manager for the forward pass: bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise WhetstoneError("train.precision: bf16 was asked for, but this GPU does not support bf16; use fp32.")
    if device.type == "cpu":
        ok, why = cpu_supports_bf16()
        if not ok:
            raise WhetstoneError(f"train.precision: bf16 refused: {why}. Use train.precision=fp32.")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
