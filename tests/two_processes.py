"""Shared by the multi-process tests (DDP, FSDP, DeepSpeed): launch 2 gloo processes, compare with 1.

Not a conftest: tests import what they use (`from two_processes import torchrun, rows`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny_runs import latest_checkpoint, latest_trainable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(run_dir, settings: list[str], resume: bool = False, entry: tuple = ("-m", "whetstone"),
             env: dict | None = None) -> None:
    """`whetstone train` (or `entry`) on 2 processes under torchrun, with `--set` for each setting."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), *entry, "train", "--quiet"]
    command += ["--resume", str(run_dir)] if resume else ["-o", str(run_dir)]
    for item in settings:
        command += ["--set", item]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    first = result.stderr.find("Traceback")  # a worker's own error, not torchrun's summary of it
    assert result.returncode == 0, result.stderr[first:first + 4000] if first >= 0 else result.stderr[-3000:]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def max_delta(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def compare_with_single(single: Path, other: Path, method: str, steps: int = 10) -> str:
    """Assert a multi-process run followed the one-process run; return the measured deltas as a sentence.

    Compared: losses and gradient norms of every step, tokens, eval losses, the checkpoint's weights
    and AdamW state (moments and step), and the final adapter/ or model/ safetensors.
    """
    a, b = rows(single), rows(other)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, steps + 1))
    loss_delta = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
    norm_delta = max(abs(x["grad_norm"] - y["grad_norm"]) for x, y in zip(a, b))  # clipping saw the global norm
    assert loss_delta < 1e-5 and norm_delta < 1e-4, (loss_delta, norm_delta)
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]  # rank 0 logs every process's tokens
    evals = [(x["eval_loss"], y["eval_loss"]) for x, y in zip(a, b) if "eval_loss" in x]
    assert all(abs(x - y) < 1e-5 for x, y in evals), evals

    # The checkpoint, gathered into the one-process layout, and the optimizer state in it.
    ckpt_delta = max_delta(latest_trainable(single), latest_trainable(other))
    opt_a = torch.load(latest_checkpoint(single) / "optimizer.pt", weights_only=True)
    opt_b = torch.load(latest_checkpoint(other) / "optimizer.pt", weights_only=True)
    assert opt_a["state"].keys() == opt_b["state"].keys()
    assert [g["params"] for g in opt_a["param_groups"]] == [g["params"] for g in opt_b["param_groups"]]
    assert [g["weight_decay"] for g in opt_a["param_groups"]] == [g["weight_decay"] for g in opt_b["param_groups"]]
    moment_delta = 0.0
    for i, slot in opt_a["state"].items():
        assert slot.keys() == opt_b["state"][i].keys()
        for key in ("exp_avg", "exp_avg_sq"):
            moment_delta = max(moment_delta, float((slot[key] - opt_b["state"][i][key]).abs().max()))
        assert float(slot["step"]) == float(opt_b["state"][i]["step"]) == steps
    assert moment_delta < 1e-5

    # The final save is ordinary HF / PEFT safetensors with the same tensors.
    name = "adapter/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"
    final_delta = max_delta(load_file(str(single / name)), load_file(str(other / name)))
    assert ckpt_delta < 1e-5 and final_delta < 1e-5
    assert json.loads((other / "summary.json").read_text())["steps"] == steps  # only rank 0 wrote
    return (f"max loss delta {loss_delta:.2e}, grad-norm delta {norm_delta:.2e}, checkpoint weights {ckpt_delta:.2e}, "
            f"AdamW moments {moment_delta:.2e}, final {name} {final_delta:.2e}")
