"""DeepSpeed ZeRO on two gloo processes follows the same trajectory as one process without it.

The translation of the DeepSpeed JSON is tested in test_deepspeed_config.py, which needs no deepspeed.
"""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

from safetensors.torch import load_file
from tiny_runs import tiny_config
from two_processes import compare_with_single, max_delta, rows, torchrun

from whetstone.train.dispatch import train

ROOT = Path(__file__).resolve().parents[1]
ZERO2 = str(ROOT / "configs" / "ds_zero2.json")
ZERO3 = str(ROOT / "configs" / "ds_zero3.json")


def _torchrun(run_dir, settings: list[str], resume: bool = False, entry: tuple = ("-m", "whetstone")) -> None:
    # DS_ACCELERATOR: DeepSpeed's CPU backend even where a GPU is visible (gloo, like the reference).
    torchrun(run_dir, settings, resume, entry, env={"DS_ACCELERATOR": "cpu"})


def _common(tiny_model_dir, qa_file, method):
    return [f"model={tiny_model_dir}", f"data.train={qa_file}", f"method.name={method}", "train.max_steps=10",
            "train.lr=1e-3", "train.warmup=0.0", "train.log_every=1", "method.dropout=0.0",
            "data.eval_fraction=0.125", "eval.every=5", "train.max_grad_norm=0.05"]  # 0.05: clipping acts


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_zero_two_processes_x4_equal_one_process_x8(tmp_path, tiny_model_dir, qa_file, method, stage):
    # ZeRO-3 partitions the weights too; the tied LM head is read outside its module (the chunked head).
    common = _common(tiny_model_dir, qa_file, method)
    single = tmp_path / "single"
    train(tiny_config(tiny_model_dir, qa_file, *common[2:], "train.batch_size=8"), single, progress=False)
    engine = tmp_path / f"zero{stage}"
    _torchrun(engine, common + ["train.batch_size=4", f"train.deepspeed={ZERO2 if stage == 2 else ZERO3}"])
    print(f"\nzero-{stage} {method}: {compare_with_single(single, engine, method)}")


def test_zero2_checkpoint_resumes_on_one_process_and_on_two(tmp_path, tiny_model_dir, qa_file):
    """Written by 2 ZeRO-2 processes at step 5; resumed on 1 process without DeepSpeed, on 2 under ZeRO-2
    and on 2 under ZeRO-3: each ends on the uninterrupted 1-process trajectory."""
    # grad_accum 2: DeepSpeed must neither divide the loss by it again nor reduce before the step's last micro-batch.
    common = [f"model={tiny_model_dir}", f"data.train={qa_file}", "train.max_steps=10", "train.lr=1e-3",
              "train.warmup=0.0", "train.log_every=1", "train.global_batch_size=8", "train.grad_accum=2",
              "train.checkpoint_every=5", "train.keep_checkpoints=5", "train.max_grad_norm=0.05"]
    reference = tmp_path / "reference"
    train(tiny_config(tiny_model_dir, qa_file, *common[2:]), reference, progress=False)
    run = tmp_path / "run"
    _torchrun(run, common + [f"train.deepspeed={ZERO2}"])
    full_run = rows(run)
    # As if the 2-process job had died right after its step-5 checkpoint:
    shutil.rmtree(run / "checkpoints" / "step-0000010")
    shutil.rmtree(run / "adapter")
    (run / "checkpoints" / "latest").write_text("step-0000005")
    again, zero3 = tmp_path / "again", tmp_path / "zero3"
    shutil.copytree(run, again)
    shutil.copytree(run, zero3)
    config = (zero3 / "config.yaml").read_text()
    assert ZERO2 in config
    (zero3 / "config.yaml").write_text(config.replace(ZERO2, ZERO3))  # the same checkpoint, another ZeRO stage

    summary = train(None, run, resume=True, progress=False)  # one process, no engine: the same files load
    _torchrun(again, [], resume=True)  # two processes: the engine loads the one-process files into its partitions
    _torchrun(zero3, [], resume=True)
    assert summary["steps"] == 10 and json.loads((again / "summary.json").read_text())["steps"] == 10
    reference_rows = rows(reference)
    loss_deltas = []
    for logged in (full_run, rows(run), rows(again), rows(zero3)):
        assert len(logged) == 10
        loss_deltas.append(max(abs(x["loss"] - y["loss"]) for x, y in zip(reference_rows, logged)))
        assert max(abs(x["grad_norm"] - y["grad_norm"]) for x, y in zip(reference_rows, logged)) < 1e-4
    final = load_file(str(reference / "adapter/adapter_model.safetensors"))
    one = max_delta(final, load_file(str(run / "adapter/adapter_model.safetensors")))
    two = max_delta(final, load_file(str(again / "adapter/adapter_model.safetensors")))
    three = max_delta(final, load_file(str(zero3 / "adapter/adapter_model.safetensors")))
    print(f"\nzero-2 accum 2: max loss delta {loss_deltas[0]:.2e} uninterrupted; the step-5 checkpoint resumed "
          f"on 1 process: loss {loss_deltas[1]:.2e}, final adapter {one:.2e}; on 2 with ZeRO-2: loss "
          f"{loss_deltas[2]:.2e}, final adapter {two:.2e}; on 2 with ZeRO-3: loss {loss_deltas[3]:.2e}, "
          f"final adapter {three:.2e}")
    assert max(loss_deltas) < 1e-5
    assert one < 1e-5 and two < 1e-5 and three < 1e-5


# The SFT loss made NaN on one process's `at`-th training forward; the rest of whetstone's CLI as is.
_POISONED_CLI = """
import dataclasses, os, sys
from whetstone.objectives import OBJECTIVES
from whetstone.objectives.sft import SFT, sft_loss
calls = {"n": 0}
def loss(model, batch, context=None):
    out = sft_loss(model, batch, context)
    if model.training and os.environ.get("RANK") == "1":
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss_sum = out.loss_sum * float("nan")
    return out
OBJECTIVES["sft"] = dataclasses.replace(SFT, loss=loss)
from whetstone.cli import main
sys.exit(main())
"""


def test_zero2_skips_a_nonfinite_step_like_one_process(tmp_path, tiny_model_dir, qa_file, monkeypatch):
    """A NaN on ONE process poisons the reduced gradient: DeepSpeed skips the update on both, whetstone counts it,
    and the run goes on exactly as one process that skipped the same step."""
    from whetstone.objectives import OBJECTIVES
    from whetstone.objectives.sft import SFT, sft_loss

    calls = {"n": 0}

    def poisoned(model, batch, context=None):
        out = sft_loss(model, batch, context)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 2:
                out.loss_sum = out.loss_sum * float("nan")
        return out

    common = [f"model={tiny_model_dir}", f"data.train={qa_file}", "train.max_steps=5", "train.lr=1e-3",
              "train.warmup=0.0", "train.log_every=1", "method.dropout=0.0", "train.skip_nonfinite=true",
              "data.packing=false"]  # the poisoned loss is the registry's unpacked SFT
    with monkeypatch.context() as patch:
        patch.setitem(OBJECTIVES, "sft", dataclasses.replace(SFT, loss=poisoned))
        single = train(tiny_config(tiny_model_dir, qa_file, *common[2:], "train.batch_size=8"), tmp_path / "single",
                       progress=False)
    script = tmp_path / "poisoned_cli.py"
    script.write_text(_POISONED_CLI)
    engine = tmp_path / "zero2"
    _torchrun(engine, common + ["train.batch_size=4", f"train.deepspeed={ZERO2}"], entry=(str(script),))
    summary = json.loads((engine / "summary.json").read_text())
    assert single["skipped_steps"] == summary["skipped_steps"] == 1 and summary["steps"] == 5
    a, b = rows(tmp_path / "single"), rows(engine)
    assert math.isnan(a[1]["loss"]) and math.isnan(b[1]["loss"])  # step 2, on every process's log
    assert max(abs(x["loss"] - y["loss"]) for i, (x, y) in enumerate(zip(a, b)) if i != 1) < 1e-5
    delta = max_delta(load_file(str(tmp_path / "single/adapter/adapter_model.safetensors")),
                       load_file(str(engine / "adapter/adapter_model.safetensors")))
    print(f"\nzero-2 NaN on one process at step 2: skipped and counted; final adapter delta {delta:.2e}")
    assert delta < 1e-5
