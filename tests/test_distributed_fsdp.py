"""FSDP (train.strategy: fsdp) on two gloo processes follows the same trajectory as one process."""

import shutil

import pytest
from safetensors.torch import load_file
from tiny_runs import tiny_config
from two_processes import compare_with_single, max_delta, rows, torchrun

from whetstone.config import load_config
from whetstone.errors import WhetstoneError
from whetstone.train import distributed
from whetstone.train.dispatch import train


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp_two_processes_x4_equal_one_process_x8(tmp_path, tiny_model_dir, qa_file, method):
    common = [f"model={tiny_model_dir}", f"data.train={qa_file}", f"method.name={method}", "train.max_steps=10",
              "train.lr=1e-3", "train.warmup=0.0", "train.log_every=1", "method.dropout=0.0",
              "data.eval_fraction=0.125", "eval.every=5"]  # eval calls the model, not the FSDP root
    single = tmp_path / "single"
    train(tiny_config(tiny_model_dir, qa_file, *common[2:], "train.batch_size=8"), single, progress=False)
    sharded = tmp_path / "fsdp"
    torchrun(sharded, common + ["train.batch_size=4", "train.strategy=fsdp"])
    print(f"\nfsdp {method}: {compare_with_single(single, sharded, method)}")


def test_fsdp_checkpoint_from_two_processes_resumes_on_one(tmp_path, tiny_model_dir, qa_file):
    common = [f"model={tiny_model_dir}", f"data.train={qa_file}", "train.max_steps=10", "train.lr=1e-3",
              "train.warmup=0.0", "train.log_every=1", "train.global_batch_size=8", "train.checkpoint_every=5",
              "train.keep_checkpoints=5"]
    reference = tmp_path / "reference"
    train(tiny_config(tiny_model_dir, qa_file, *common[2:]), reference, progress=False)
    run = tmp_path / "run"
    torchrun(run, common + ["train.strategy=fsdp"])
    # As if the 2-process FSDP job had died right after its step-5 checkpoint:
    shutil.rmtree(run / "checkpoints" / "step-0000010")
    shutil.rmtree(run / "adapter")
    (run / "checkpoints" / "latest").write_text("step-0000005")
    summary = train(None, run, resume=True, progress=False)  # one process, no sharding: the same files load
    assert summary["steps"] == 10
    losses = [(x["loss"], y["loss"]) for x, y in zip(rows(reference), rows(run))]
    assert len(losses) == 10 and max(abs(x - y) for x, y in losses) < 1e-5, losses
    delta = max_delta(load_file(str(reference / "adapter/adapter_model.safetensors")),
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
