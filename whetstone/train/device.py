"""Device and precision: pick where to train, and refuse honestly what cannot run."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
from dataclasses import dataclass

import torch

from whetstone.config import RunConfig
from whetstone.errors import WhetstoneError
from whetstone.models.load import BASE_DTYPES


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
    """bf16 matmuls are only fast where the CPU has native bf16 instructions: (has them, the flag or why not)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False, "cannot read /proc/cpuinfo to check for bf16 instructions"
    for flag in ("avx512_bf16", "amx_bf16"):
        if flag in flags:
            return True, flag
    return False, "this CPU has neither avx512_bf16 nor amx_bf16"


@dataclass(frozen=True)
class Precision:
    """train.precision as resolved on this device: what was asked, what runs (fp32 | bf16), and why."""

    asked: str
    resolved: str
    why: str
    emulated: bool = False  # bf16 on a CPU without bf16 instructions: correct, but slower than fp32

    def describe(self) -> str:
        return f"precision: {self.resolved} (train.precision {self.asked}: {self.why})"


# Pins what `auto` resolves to on every machine (fp32 or bf16), for figures that must not depend on the CPU a
# run lands on: the test suite sets fp32, so its pinned losses hold with and without bf16 instructions.
PIN_AUTO = "WHETSTONE_AUTO_PRECISION"


def resolve_precision(device: torch.device, asked: str) -> Precision:
    """`auto` is bf16 autocast where the hardware computes bf16 natively (CUDA with bf16, CPUs with avx512_bf16
    or amx_bf16), fp32 elsewhere, unless WHETSTONE_AUTO_PRECISION pins it. An explicit bf16 runs wherever torch
    can emulate it, and says so."""
    pinned = os.environ.get(PIN_AUTO, "").strip()
    if asked == "auto" and pinned:
        if pinned not in ("fp32", "bf16"):
            raise WhetstoneError(f"{PIN_AUTO}: got {pinned!r}; set it to fp32 or bf16 (what train.precision auto "
                                 f"resolves to), or unset it.")
        resolved = resolve_precision(device, pinned)
        why = f"pinned to {pinned} by {PIN_AUTO}" + ("" if pinned == "fp32" else f"; {resolved.why}")
        return dataclasses.replace(resolved, asked=asked, why=why)
    if asked == "fp32":
        return Precision(asked, "fp32", "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(asked, "bf16", "this GPU computes bf16")
        if asked == "bf16":
            raise WhetstoneError("train.precision: bf16 was asked for, but this GPU does not support bf16; use "
                                 "train.precision=fp32 or auto.")
        return Precision(asked, "fp32", "this GPU does not compute bf16")
    if device.type == "cpu":
        native, why = cpu_supports_bf16()
        if native:
            return Precision(asked, "bf16", why)
        if asked == "auto":
            return Precision(asked, "fp32", why)
        # Emulated bf16 gives bf16's numbers at more than fp32's cost: useful to reproduce a bf16 run, never faster.
        return Precision(asked, "bf16", f"{why}: emulated, slower than fp32", emulated=True)
    if asked == "auto":  # mps: its bf16 support varies with the macOS version, so auto does not bet on it
        return Precision(asked, "fp32", f"auto uses bf16 only on CUDA and on CPUs with bf16 instructions, not "
                                        f"{device.type}")
    return Precision(asked, "bf16", f"asked for on {device.type}")


def announce_precision(precision: Precision, say) -> None:
    """One line for the run's log; a second, as a warning, when bf16 is emulated."""
    say(precision.describe())
    if precision.emulated:
        say("warning: train.precision bf16 runs emulated on this CPU, slower than fp32; train.precision auto (or "
            "fp32) trains in fp32 here.")


def autocast_context(device: torch.device, precision: Precision):
    """A context manager for the forward pass: bf16 autocast, or nothing for fp32."""
    if precision.resolved == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def base_dtype(config: RunConfig, precision: Precision) -> torch.dtype:
    """model.dtype resolved for training: the dtype the frozen base is loaded in.

    auto follows the compute: bf16 under bf16 autocast, fp32 otherwise, and always fp32 for method full, whose
    weights all train (fp32 master weights; config.py refuses full with an explicit bf16 or fp16 base).
    """
    asked = config.model.dtype
    if asked == "auto":
        return torch.bfloat16 if precision.resolved == "bf16" and config.method.name != "full" else torch.float32
    dtype = BASE_DTYPES[asked]
    if dtype != torch.float32 and precision.resolved == "fp32" and (
            config.method.name == "freeze" and not config.method.trains_nothing()):
        # Unfrozen blocks are fp32 between frozen low-precision ones: without autocast their matmuls cannot mix.
        raise WhetstoneError(
            f"model.dtype: {asked} with method freeze needs bf16 autocast (train.precision resolved to fp32 here: "
            f"{precision.why}), because the unfrozen blocks train in fp32 between {asked} ones. Set "
            f"train.precision: bf16, or model.dtype: fp32."
        )
    return dtype


def precision_entries(precision: Precision, dtype: torch.dtype) -> dict:
    """What summary.json records: the precision asked, resolved and why, and the base's dtype."""
    names = {v: k for k, v in BASE_DTYPES.items()}
    return {"precision": {"asked": precision.asked, "resolved": precision.resolved, "why": precision.why},
            "model_dtype": names[dtype]}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's own peak resident memory: VmHWM of /proc/self/status, else ru_maxrss.

    Not ru_maxrss first: Linux carries a parent's peak across fork and exec, so a run started by a
    large process (a notebook, a test runner, a benchmark) would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
