"""Resumable checkpoints, written so that a crash never leaves a broken one behind.

A checkpoint is a directory `checkpoints/step-000123/` holding:

    trainable.safetensors   the parameters that train (adapters only, for LoRA)
    optimizer.pt            AdamW state (tensors only; loaded with weights_only=True)
    rng.safetensors         torch CPU (and CUDA) generator states
    state.json              step, tokens, scheduler, Python and NumPy RNG, data position

It is written to a temporary directory, fsync'd and renamed into place; only then
is `checkpoints/latest` switched to it (also fsync'd). Older checkpoints beyond `keep` are removed.
A checkpoint counts only when all four files are there and state.json parses (`is_complete`);
resume falls back to the newest such one when `latest` is lost or names one that is not.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from whetstone.errors import WhetstoneError


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    tokens: int = 0  # real (non-padding) tokens trained on so far
    supervised_tokens: int = 0
    tokens_read: int = 0  # real tokens through the model: fewer than `tokens` where share_prompt reads a prefix once
    train_seconds: float = 0.0  # time spent in training steps, across resumes
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient (train.skip_nonfinite)
    extra: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)  # the inputs trained on (train/fingerprint.py)
    accepted_changes: list = field(default_factory=list)  # input changes a resume was told to accept


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(path)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    plain = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, plain


def _set_rng_state(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # named_parameters() lists a tied tensor once, which safetensors requires.
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(directory: Path, model, optimizer, scheduler, state: TrainState, keep: int,
                    full_state: tuple[dict, dict] | None = None) -> Path:
    """`full_state`: (trainable weights, optimizer state) already gathered from FSDP shards; by default
    they are read from `model` and `optimizer`."""
    weights, optimizer_state = full_state or (trainable_state(model), optimizer.state_dict())
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:07d}"
    final = directory / name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=directory))
    try:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        rng_tensors, rng_plain = _rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        payload = {"train_state": asdict(state), "scheduler": scheduler.state_dict(), "rng": rng_plain}
        (tmp / "state.json").write_text(json.dumps(payload))
        _fsync_tree(tmp)
        if final.exists():  # the same step saved twice (e.g. interrupted right after a save)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(directory)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WhetstoneError(
            f"could not write checkpoint {final}: {exc.strerror or exc}. The previous checkpoint is intact; "
            f"free some disk space and resume with `whetstone train --resume {directory.parent}`."
        ) from None
    pointer_tmp = directory / ".latest.tmp"
    with open(pointer_tmp, "w") as f:
        f.write(name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer_tmp, directory / "latest")
    _fsync_dir(directory)  # the rename itself: without this a power cut can bring back the old pointer, or none
    _prune(directory, keep)
    return final


def _prune(directory: Path, keep: int) -> None:
    steps = step_directories(directory)
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in directory.glob(".tmp-*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)


CHECKPOINT_FILES = ("state.json", "trainable.safetensors", "optimizer.pt", "rng.safetensors")


def is_complete(path: Path) -> bool:
    """Whether `path` is a checkpoint resume can load: every file present, state.json readable JSON."""
    if not all((path / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        payload = json.loads((path / "state.json").read_bytes())
    except (OSError, ValueError):  # ValueError: bad JSON, or bytes that are not UTF-8 (a NUL-filled file)
        return False
    return isinstance(payload, dict) and "train_state" in payload


def pointed_checkpoint(directory: Path) -> str | None:
    """The name `checkpoints/latest` holds, or None when it is missing or unreadable."""
    try:
        name = (directory / "latest").read_bytes().decode().strip()
    except (OSError, ValueError):
        return None
    return name if name.startswith("step-") and "/" not in name else None


def step_directories(directory: Path) -> list[Path]:
    """The `step-*` directories under `directory`, oldest first (by step number, not name)."""
    steps = [p for p in directory.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(steps, key=lambda p: int(p.name[5:]))


def latest_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint `latest` names; else the newest complete one; None when there is none."""
    name = pointed_checkpoint(directory)
    if name is not None and is_complete(directory / name):
        return directory / name
    return next((p for p in reversed(step_directories(directory)) if is_complete(p)), None)


def load_checkpoint(path: Path, model, optimizer, scheduler, restore=None) -> TrainState:
    """`restore(weights, optimizer_state)` loads full tensors into a sharded (FSDP) model and optimizer."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or set(weights) - set(params):
        raise WhetstoneError(
            f"checkpoint {path} does not match this model and method ({len(missing)} trainable tensors missing); "
            f"was the config changed since the run started?"
        )
    optimizer_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    if restore is not None:
        restore(weights, optimizer_state)
    else:
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(optimizer_state)
    payload = json.loads((path / "state.json").read_text())
    scheduler.load_state_dict(payload["scheduler"])
    _set_rng_state(load_file(str(path / "rng.safetensors")), payload["rng"])
    return TrainState(**payload["train_state"])


class StopSignal:
    """Ctrl-C or SIGTERM ask the loop to stop at the next step boundary and checkpoint.

    A second Ctrl-C interrupts at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
              f"(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
