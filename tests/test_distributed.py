"""Two gloo processes under torchrun follow the same trajectory as one process."""

import shutil

import pytest
import torch
from tiny_runs import latest_trainable, tiny_config
from two_processes import compare_with_single, torchrun

from whetstone.train.dispatch import train


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_processes_x4_equal_one_process_x8(tmp_path, tiny_model_dir, qa_file, method):
    common = [f"model={tiny_model_dir}", f"data.train={qa_file}", f"method.name={method}", "train.max_steps=10",
              "train.lr=1e-3", "train.warmup=0.0", "train.log_every=1", "method.dropout=0.0"]
    single = tmp_path / "single"
    train(tiny_config(tiny_model_dir, qa_file, *common[2:], "train.batch_size=8"), single, progress=False)
    double = tmp_path / "double"
    torchrun(double, common + ["train.batch_size=4"])
    print(f"\nddp {method}: {compare_with_single(single, double, method)}")


def test_checkpoint_from_two_processes_resumes_on_one(tmp_path, tiny_model_dir, qa_file):
    common = [f"model={tiny_model_dir}", f"data.train={qa_file}", "train.max_steps=10", "train.lr=1e-3",
              "train.warmup=0.0", "train.global_batch_size=8", "train.checkpoint_every=5", "train.keep_checkpoints=5"]
    reference = tmp_path / "reference"
    train(tiny_config(tiny_model_dir, qa_file, *common[2:]), reference, progress=False)

    run = tmp_path / "run"
    torchrun(run, common)
    # As if the 2-process job had died right after its step-5 checkpoint:
    shutil.rmtree(run / "checkpoints" / "step-0000010")
    shutil.rmtree(run / "adapter")
    (run / "checkpoints" / "latest").write_text("step-0000005")
    summary = train(None, run, resume=True, progress=False)  # one process now, 8 examples per micro-batch
    assert summary["steps"] == 10
    wa, wb = latest_trainable(reference), latest_trainable(run)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0)
