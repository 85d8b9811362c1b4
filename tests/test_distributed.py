"""Two gloo processes under torchrun follow the same trajectory as one process."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tiny_runs import tiny_config
from whetstone.train.loop import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run):
    latest = (run / "checkpoints" / "latest").read_text()
    return load_file(str(run / "checkpoints" / latest / "trainable.safetensors"))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_processes_x4_equal_one_process_x8(tmp_path, tiny_model_dir, qa_file, method):
    common = [f"model={tiny_model_dir}", f"data.train={qa_file}", f"method.name={method}", "train.max_steps=10",
              "train.lr=1e-3", "train.warmup=0.0", "train.log_every=1", "method.dropout=0.0"]
    single = tmp_path / "single"
    train(tiny_config(tiny_model_dir, qa_file, *common[2:], "train.batch_size=8"), single, progress=False)

    double = tmp_path / "double"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "-m", "whetstone", "train", "-o", str(double), "--quiet",
               "--set", "train.batch_size=4"]
    for item in common:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]

    a, b = _rows(single), _rows(double)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 11))
    deltas = [abs(x["loss"] - y["loss"]) for x, y in zip(a, b)]
    assert max(deltas) < 1e-5, deltas
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]  # rank 0 logs every process's tokens
    wa, wb = _weights(single), _weights(double)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0)
    # Only rank 0 wrote: one metrics line per step, one summary.
    assert json.loads((double / "summary.json").read_text())["steps"] == 10


def test_checkpoint_from_two_processes_resumes_on_one(tmp_path, tiny_model_dir, qa_file):
    common = [f"model={tiny_model_dir}", f"data.train={qa_file}", "train.max_steps=10", "train.lr=1e-3",
              "train.warmup=0.0", "train.global_batch_size=8", "train.checkpoint_every=5", "train.keep_checkpoints=5"]
    reference = tmp_path / "reference"
    train(tiny_config(tiny_model_dir, qa_file, *common[2:]), reference, progress=False)

    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "-m", "whetstone", "train", "-o", str(run), "--quiet"]
    for item in common:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    # As if the 2-process job had died right after its step-5 checkpoint:
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-0000010")
    shutil.rmtree(run / "adapter")
    (run / "checkpoints" / "latest").write_text("step-0000005")
    summary = train(None, run, resume=True, progress=False)  # one process now, 8 examples per micro-batch
    assert summary["steps"] == 10
    wa, wb = _weights(reference), _weights(run)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0)
