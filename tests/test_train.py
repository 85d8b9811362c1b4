"""The loop's invariants on a tiny model: accumulation, resume, the run directory, the loss."""

import json

import pytest
import torch
from tiny_runs import latest_trainable, tiny_config

from whetstone.errors import WhetstoneError
from whetstone.train.dispatch import train


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_batch_8x1_equals_2x4(tmp_path, tiny_model_dir, qa_file, method):
    runs = {}
    for batch, accum in ((8, 1), (2, 4)):
        config = tiny_config(tiny_model_dir, qa_file, f"method.name={method}", "train.max_steps=4",
                             f"train.batch_size={batch}", f"train.grad_accum={accum}")
        runs[(batch, accum)] = tmp_path / f"b{batch}x{accum}"
        train(config, runs[(batch, accum)], progress=False)
    a, b = runs[(8, 1)], runs[(2, 4)]
    assert _losses(a) == pytest.approx(_losses(b), abs=1e-5)
    assert len(_losses(a)) == 4
    wa, wb = latest_trainable(a), latest_trainable(b)
    assert wa.keys() == wb.keys() and len(wa) > 0
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0)


# lora-grouped: data.group_by_length at 2 x 4 (8 of the 32 examples per step: the run stops mid-epoch 1 and
# resumes into epoch 2), where each step's examples are sorted before they are split into micro-batches.
@pytest.mark.parametrize("method, extra", [("lora", ()), ("full", ()),
                                           ("lora", ("train.batch_size=2", "train.grad_accum=4",
                                                     "data.group_by_length=true"))],
                         ids=["lora", "full", "lora-grouped"])
def test_resumed_run_is_bitwise_equal_to_uninterrupted(tmp_path, tiny_model_dir, qa_file, method, extra):
    overrides = (f"method.name={method}", "train.max_steps=6", "train.batch_size=4", "method.dropout=0.1",
                 "train.checkpoint_every=100", *extra)
    straight = tmp_path / "straight"
    train(tiny_config(tiny_model_dir, qa_file, *overrides), straight, progress=False)

    stopped = tmp_path / "stopped"
    summary = train(tiny_config(tiny_model_dir, qa_file, *overrides), stopped, progress=False,
                    on_step=lambda step, row: step == 3)
    assert summary["stopped_early"] and summary["steps"] == 3
    assert not (stopped / "adapter").exists() and not (stopped / "model").exists()
    resumed = train(None, stopped, resume=True, progress=False)
    assert resumed["steps"] == 6 and not resumed["stopped_early"]

    a, b = latest_trainable(straight), latest_trainable(stopped)
    assert all(torch.equal(a[n], b[n]) for n in a), "resumed weights differ from the uninterrupted run"
    assert _losses(straight) == _losses(stopped)  # metrics.jsonl has no duplicated or missing step


def test_run_directory_contract(tmp_path, tiny_model_dir, qa_file):
    run = tmp_path / "run"
    eval_file = qa_file  # any file works as eval here
    config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=3", f"data.eval={eval_file}", "eval.every=2")
    summary = train(config, run, progress=False)
    assert sorted(p.name for p in run.iterdir()) == [".whetstone-run", "adapter", "checkpoints", "config.yaml",
                                                     "metrics.jsonl", "report.html", "summary.json"]
    assert json.loads((run / ".whetstone-run").read_text())["kind"] == "run directory"  # what --overwrite checks
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert {"step", "loss", "lr", "tokens", "tokens_per_s", "elapsed_s"} <= row.keys()
    assert "eval_loss" in rows[1] and "eval_loss" in rows[2] and "eval_loss" not in rows[0]
    assert rows[0]["tokens"] < rows[1]["tokens"] < rows[2]["tokens"] == summary["tokens"]
    on_disk = json.loads((run / "summary.json").read_text())
    for key in ("train_loss", "eval_loss", "tokens", "tokens_per_s", "peak_memory_mb", "trainable_params",
                "total_params", "wall_s"):
        assert on_disk[key] is not None, key
    assert on_disk["trainable_params"] < on_disk["total_params"]
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "checkpoints" / "latest").read_text() == "step-0000003"


def test_tokens_count_real_tokens_only(tmp_path, tiny_model_dir, qa_file, tiny_tokenizer):
    from whetstone.data.dataset import load_splits, tokenize

    config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=4", "train.batch_size=8")
    summary = train(config, tmp_path / "run", progress=False)
    records, _, _ = load_splits(config.data, 0)
    train_set = tokenize(records, tiny_tokenizer, config.data)
    assert summary["tokens"] == sum(len(e.input_ids) for e in train_set.examples)  # 4 x 8 = all 32, no padding


def test_existing_run_directory_is_not_overwritten(tmp_path, tiny_model_dir, qa_file):
    config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=1")
    train(config, tmp_path / "run", progress=False)
    with pytest.raises(WhetstoneError, match="already exists. Pass --overwrite"):
        train(config, tmp_path / "run", progress=False)
    train(config, tmp_path / "run", progress=False, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(WhetstoneError, match="not a whetstone run directory"):
        train(config, tmp_path / "other", progress=False, overwrite=True)
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"


def test_loss_decreases_on_a_tiny_model(tmp_path, tiny_model_dir, qa_file):
    config = tiny_config(tiny_model_dir, qa_file, "method.name=full", "train.epochs=6", "train.batch_size=8",
                         "train.lr=3e-3")
    train(config, tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 24
    assert losses[-1] < 0.6 * losses[0]


def test_eval_fraction_holds_out_records(tmp_path, tiny_model_dir, qa_file):
    config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=1", "data.eval_fraction=0.25")
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["data"]["records"] == 24 and summary["data"]["eval_records"] == 8
    assert summary["eval_loss"] > 0


def test_sigint_writes_a_checkpoint_and_resume_finishes(tmp_path, tiny_model_dir, qa_file):
    """A real Ctrl-C to a real process: it stops at a step boundary, checkpoints, and resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    command = [sys.executable, "-m", "whetstone", "train", "--set", f"model={tiny_model_dir}",
               "--set", f"data.train={qa_file}", "--set", "train.max_steps=100000", "--set", "train.batch_size=2",
               "--set", "train.checkpoint_every=100000", "-o", str(run), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "whetstone train --resume" in out
    step = int((run / "checkpoints" / "latest").read_text().removeprefix("step-"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] and summary["steps"] == step >= 1


def test_max_minutes_stops_at_the_budget_and_finishes_the_run(tmp_path, tiny_model_dir, qa_file):
    # a budget smaller than any step: the first step reaches it, and the run ends as at its last step
    config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=50", "train.max_minutes=1e-9",
                         f"data.eval={qa_file}", "eval.every=100")
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["steps"] == 1 and summary["total_steps"] == 50
    assert summary["time_budget_reached"] is True and summary["stopped_early"] is False
    assert summary["eval_loss"] > 0  # the final evaluation ran
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()  # and the weights were saved
    # without a budget, the same config runs to max_steps and says the budget was not what stopped it
    config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=2")
    summary = train(config, tmp_path / "full", progress=False)
    assert summary["steps"] == 2 and summary["time_budget_reached"] is False
    with pytest.raises(WhetstoneError, match="train.max_minutes: got 0.0; must be positive"):
        tiny_config(tiny_model_dir, qa_file, "train.max_minutes=0")
