"""FSDP (train.strategy: fsdp) on two gloo processes follows the same trajectory as one process."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tiny_runs import tiny_config
from whetstone.config import load_config
from whetstone.errors import WhetstoneError
from whetstone.train import distributed
from whetstone.train.loop import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(run_dir, settings: list[str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "-m", "whetstone", "train", "-o", str(run_dir), "--quiet"]
    for item in settings:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    first = result.stderr.find("Traceback")  # a worker's own error, not torchrun's summary of it
    assert result.returncode == 0, result.stderr[first:first + 4000] if first >= 0 else result.stderr[-3000:]


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _checkpoint(run):
    latest = (run / "checkpoints" / "latest").read_text()
    return run / "checkpoints" / latest


def _max_delta(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp_two_processes_x4_equal_one_process_x8(tmp_path, tiny_model_dir, qa_file, method):
    common = [f"model={tiny_model_dir}", f"data.train={qa_file}", f"method.name={method}", "train.max_steps=10",
              "train.lr=1e-3", "train.warmup=0.0", "train.log_every=1", "method.dropout=0.0",
              "data.eval_fraction=0.125", "eval.every=5"]  # eval calls the model, not the FSDP root
    single = tmp_path / "single"
    train(tiny_config(tiny_model_dir, qa_file, *common[2:], "train.batch_size=8"), single, progress=False)
    sharded = tmp_path / "fsdp"
    _torchrun(sharded, common + ["train.batch_size=4", "train.strategy=fsdp"])

    a, b = _rows(single), _rows(sharded)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 11))
    loss_delta = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
    norm_delta = max(abs(x["grad_norm"] - y["grad_norm"]) for x, y in zip(a, b))  # clipping saw the global norm
    assert loss_delta < 1e-5 and norm_delta < 1e-4, (loss_delta, norm_delta)
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    evals = [(x["eval_loss"], y["eval_loss"]) for x, y in zip(a, b) if "eval_loss" in x]
    assert len(evals) == 2 and max(abs(x - y) for x, y in evals) < 1e-5, evals

    # The checkpoint (gathered from the shards) and the optimizer state in it.
    ckpt_delta = _max_delta(load_file(str(_checkpoint(single) / "trainable.safetensors")),
                            load_file(str(_checkpoint(sharded) / "trainable.safetensors")))
    opt_a = torch.load(_checkpoint(single) / "optimizer.pt", weights_only=True)
    opt_b = torch.load(_checkpoint(sharded) / "optimizer.pt", weights_only=True)
    assert opt_a["state"].keys() == opt_b["state"].keys()
    assert [g["params"] for g in opt_a["param_groups"]] == [g["params"] for g in opt_b["param_groups"]]
    for i, slot in opt_a["state"].items():
        torch.testing.assert_close(slot["exp_avg"], opt_b["state"][i]["exp_avg"], atol=1e-5, rtol=0)
        assert float(slot["step"]) == float(opt_b["state"][i]["step"]) == 10

    # The final save is ordinary HF / PEFT safetensors with the same tensors.
    name = "adapter/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"
    final_delta = _max_delta(load_file(str(single / name)), load_file(str(sharded / name)))
    print(f"\nfsdp {method}: max loss delta {loss_delta:.2e}, grad-norm delta {norm_delta:.2e}, "
          f"checkpoint weights {ckpt_delta:.2e}, final {name} {final_delta:.2e}")
    assert ckpt_delta < 1e-5 and final_delta < 1e-5
    assert json.loads((sharded / "summary.json").read_text())["steps"] == 10


def test_fsdp_checkpoint_from_two_processes_resumes_on_one(tmp_path, tiny_model_dir, qa_file):
    common = [f"model={tiny_model_dir}", f"data.train={qa_file}", "train.max_steps=10", "train.lr=1e-3",
              "train.warmup=0.0", "train.log_every=1", "train.global_batch_size=8", "train.checkpoint_every=5",
              "train.keep_checkpoints=5"]
    reference = tmp_path / "reference"
    train(tiny_config(tiny_model_dir, qa_file, *common[2:]), reference, progress=False)
    run = tmp_path / "run"
    _torchrun(run, common + ["train.strategy=fsdp"])
    # As if the 2-process FSDP job had died right after its step-5 checkpoint:
    shutil.rmtree(run / "checkpoints" / "step-0000010")
    shutil.rmtree(run / "adapter")
    (run / "checkpoints" / "latest").write_text("step-0000005")
    summary = train(None, run, resume=True, progress=False)  # one process, no sharding: the same files load
    assert summary["steps"] == 10
    losses = [(x["loss"], y["loss"]) for x, y in zip(_rows(reference), _rows(run))]
    assert len(losses) == 10 and max(abs(x - y) for x, y in losses) < 1e-5, losses
    delta = _max_delta(load_file(str(reference / "adapter/adapter_model.safetensors")),
                       load_file(str(run / "adapter/adapter_model.safetensors")))
    print(f"\nfsdp 2 -> 1 resume: max loss delta {max(abs(x - y) for x, y in losses):.2e}, final adapter {delta:.2e}")
    assert delta < 1e-5


def test_fsdp_refuses_qlora_and_online_objectives(tiny_model_dir, qa_file):
    with pytest.raises(WhetstoneError) as info:
        load_config(None, [f"model={tiny_model_dir}", f"data.train={qa_file}", "method.name=qlora",
                           "train.strategy=fsdp", "eval.metrics=[loss,exact_match]"])
    message = str(info.value)
    assert "qlora with train.strategy fsdp" in message and "method lora" in message
    assert "exact_match" in message and "whetstone eval --run" in message


def test_accelerate_fsdp_environment_selects_fsdp(monkeypatch, tiny_model_dir, qa_file):
    config = tiny_config(tiny_model_dir, qa_file)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.resolve_strategy(config) == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.resolve_strategy(config) == "fsdp"
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing to shard, the plain path
    assert distributed.resolve_strategy(config) == "single"
    monkeypatch.setenv("WORLD_SIZE", "2")
    qlora = tiny_config(tiny_model_dir, qa_file, "method.name=qlora")  # valid on its own; not under accelerate's FSDP
    with pytest.raises(WhetstoneError, match="qlora with train.strategy fsdp"):
        distributed.resolve_strategy(qlora)
