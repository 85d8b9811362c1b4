"""Surviving what happens to long jobs: kill -9, a full disk, NaN, and pickle weights."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny_runs import latest_trainable, tiny_config

from whetstone.errors import WhetstoneError
from whetstone.train import checkpoint as checkpoint_module
from whetstone.train.dispatch import train

STEPS = 12


def _command(model_dir, data, run, *extra):
    sets = [f"model={model_dir}", f"data.train={data}", f"train.max_steps={STEPS}", "train.batch_size=2",
            "train.lr=1e-3", "train.warmup=0.0", "train.checkpoint_every=1", "train.keep_checkpoints=2",
            "train.log_every=1", "method.dropout=0.1", *extra]
    command = [sys.executable, "-m", "whetstone", "train", "-o", str(run), "--quiet"]
    for item in sets:
        command += ["--set", item]
    return command


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_model_dir):
    """The uninterrupted reference run, in a subprocess like the killed ones."""
    from tiny_runs import write_jsonl

    base = tmp_path_factory.mktemp("crash")
    rows = [{"prompt": f"Count to {i}.", "completion": " ".join(str(j) for j in range(i + 1))} for i in range(24)]
    data = write_jsonl(base / "data.jsonl", rows)
    run = base / "straight"
    subprocess.run(_command(tiny_model_dir, data, run), check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return data, latest_trainable(run)


# Kill points: after N metrics lines (mid-run), and inside a checkpoint write (the temp dir exists).
@pytest.mark.parametrize("kill_after_lines", [1, 4, 9])
def test_kill_9_then_resume_is_bitwise_equal(tmp_path, tiny_model_dir, straight_run, kill_after_lines):
    data, expected = straight_run
    run = tmp_path / "run"
    process = subprocess.Popen(_command(tiny_model_dir, data, run), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= kill_after_lines:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "adapter").exists()
    subprocess.run([sys.executable, "-m", "whetstone", "train", "--resume", str(run), "--quiet"], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    got = latest_trainable(run)
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))


def test_kill_9_inside_a_checkpoint_write(tmp_path, tiny_model_dir, straight_run):
    """A process killed while a checkpoint's temp dir is half written resumes from the previous one."""
    data, expected = straight_run
    run = tmp_path / "run"
    process = subprocess.Popen(_command(tiny_model_dir, data, run), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (run / "checkpoints").is_dir() and any(p.name.startswith(".tmp-step-0000003")
                                                   for p in (run / "checkpoints").iterdir()):
            break
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert (run / "checkpoints" / "latest").read_text() == "step-0000002"
    subprocess.run([sys.executable, "-m", "whetstone", "train", "--resume", str(run), "--quiet"], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    got = latest_trainable(run)
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, tiny_model_dir, qa_file, monkeypatch):
    config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=4", "train.checkpoint_every=2")
    real_save = checkpoint_module.save_file
    calls = {"n": 0}

    def failing_save(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        if "step-0000004" in filename:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", failing_save)
    run = tmp_path / "run"
    with pytest.raises(WhetstoneError, match="could not write checkpoint .*No space left on device.*previous checkpoint is intact"):
        train(config, run, progress=False)
    assert (run / "checkpoints" / "latest").read_text() == "step-0000002"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000002"]
    monkeypatch.setattr(checkpoint_module, "save_file", real_save)
    assert train(None, run, resume=True, progress=False)["steps"] == 4


def _poison(monkeypatch, at_step: int) -> None:
    """Make the SFT loss NaN on the `at_step`-th training forward."""
    import dataclasses

    from whetstone.objectives import OBJECTIVES
    from whetstone.objectives.sft import SFT, sft_loss

    calls = {"n": 0}

    def loss(model, batch, context=None):
        out = sft_loss(model, batch, context)
        if model.training:
            calls["n"] += 1
            if calls["n"] == at_step:
                out.loss_sum = out.loss_sum * float("nan")
        return out

    monkeypatch.setitem(OBJECTIVES, "sft", dataclasses.replace(SFT, loss=loss))  # the unpacked SFT: data.packing=false


def test_nan_stops_with_step_and_records(tmp_path, tiny_model_dir, qa_file, monkeypatch):
    _poison(monkeypatch, at_step=3)
    config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=5", "train.checkpoint_every=1",
                         "train.batch_size=2", "data.packing=false")
    with pytest.raises(WhetstoneError) as info:
        train(config, tmp_path / "run", progress=False)
    message = str(info.value)
    assert message.startswith("step 3: the loss (nan)")
    assert "qa.jsonl:" in message and "step-0000002" in message
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step-0000002"


def test_skip_nonfinite_skips_and_counts(tmp_path, tiny_model_dir, qa_file, monkeypatch):
    _poison(monkeypatch, at_step=2)
    config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=4", "train.skip_nonfinite=true",
                         "data.packing=false")
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["steps"] == 4 and summary["skipped_steps"] == 1
    weights = latest_trainable(tmp_path / "run")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_a_crash_while_truncating_metrics_keeps_every_row(tmp_path, monkeypatch):
    """Resuming rewrites metrics.jsonl without the rows after the checkpoint; dying mid-rewrite loses none."""
    from whetstone.train.run_dir import RunDirectory

    run = RunDirectory(tmp_path)
    run.metrics_path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 7)))
    original = run.metrics_path.read_text()

    def die(*args):
        raise OSError(errno.EIO, "killed mid-rename")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", die)
        with pytest.raises(OSError):
            run.truncate_metrics(4)
    assert run.metrics_path.read_text() == original
    run.truncate_metrics(4)
    assert [row["step"] for row in run.read_metrics()] == [1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
