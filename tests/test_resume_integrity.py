"""Resume proves it continues the same run: same inputs, a complete checkpoint, and metrics it can read."""

import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_runs import latest_trainable, tiny_config, write_jsonl

from whetstone.cli import main
from whetstone.errors import WhetstoneError
from whetstone.train import checkpoint as checkpoint_module
from whetstone.train.fingerprint import weights_file_digest
from whetstone.train.dispatch import train

STEPS, STOP = 6, 3
OVERRIDES = (f"train.max_steps={STEPS}", "train.batch_size=4", "method.dropout=0.1", "train.checkpoint_every=1",
             "train.keep_checkpoints=2")


def _rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(32)]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "qa.jsonl", _rows())


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir, data_file) -> dict:
    """The final trainable weights of the uninterrupted run."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_config(tiny_model_dir, data_file, *OVERRIDES), run, progress=False)
    return latest_trainable(run)


def _stopped(run, model_dir, data) -> None:
    """The same run, stopped after step STOP (checkpoints step-2 and step-3 are kept)."""
    summary = train(tiny_config(model_dir, data, *OVERRIDES), run, progress=False,
                    on_step=lambda step, row: step == STOP)
    assert summary["stopped_early"] and summary["steps"] == STOP


def _steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------
# Changed inputs.


def test_resume_on_edited_data_is_refused_naming_the_file_and_accepted_with_the_flag(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", _rows())
    run = tmp_path / "run"
    _stopped(run, tiny_model_dir, data)
    old = _sha(data)
    data.write_text(data.read_text().replace("What is 5 plus", "What is five plus"))
    metrics = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()

    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume ") and "Traceback" not in err and err.count("\n") == 1
    assert f"data file {data} (sha256 {old[:12]} -> sha256 {_sha(data)[:12]})" in err
    assert f"whetstone train --resume {run} --accept-changes" in err
    assert (run / "metrics.jsonl").read_bytes() == metrics  # the refusal touched nothing

    assert main(["train", "--resume", str(run), "--quiet", "--accept-changes"]) == 0
    out = capsys.readouterr().out
    assert f"--accept-changes: resuming {run} from step-0000003 on changed inputs: data file {data}" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == STEPS
    assert summary["accepted_changes"] == [{"step": STOP, "changes": {"data": [
        f"data file {data} (sha256 {old[:12]} -> sha256 {_sha(data)[:12]})"]}}]
    state = json.loads((checkpoint_module.latest_checkpoint(run / "checkpoints") / "state.json").read_text())
    assert state["train_state"]["fingerprint"]["data"] == {f"data file {data}": _sha(data)}  # the new inputs


def test_resume_on_a_changed_base_model_is_refused(tmp_path, tiny_model_dir, data_file):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")  # copy2: the copy keeps the mtimes
    run = tmp_path / "run"
    _stopped(run, model, data_file)
    weights = load_file(str(model / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01  # same names, shapes and dtypes: a fine-tune saved over the base
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    changed = rf"model {model}/model\.safetensors \(sha256 \w{{12}} -> sha256 \w{{12}}\)"
    with pytest.raises(WhetstoneError, match=rf"the base model changed since step-0000003 was written: {changed}"):
        train(None, run, resume=True, progress=False)


def test_a_retyped_weight_file_is_caught_by_its_header_though_size_and_mtime_are_restored(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(4, dtype=torch.float32)}, str(path))
    stat = path.stat()
    before = weights_file_digest(path)
    save_file({"w": torch.zeros(4, dtype=torch.int32)}, str(path))  # same byte count, another dtype
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert weights_file_digest(path) != before


# ---------------------------------------------------------------------------
# What a crash leaves behind.


@pytest.mark.parametrize("tail", [b'{"step": 4, "loss": 1.2', b"\x00" * 300], ids=["torn", "nul-filled"])
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, tiny_model_dir, data_file, straight, tail,
                                                            capsys):
    run = tmp_path / "run"
    _stopped(run, tiny_model_dir, data_file)
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(tail)
    capsys.readouterr()
    assert train(None, run, resume=True, progress=False)["steps"] == STEPS
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {run / 'metrics.jsonl'}: dropped unreadable line {STOP + 1} (cut short by a crash?)"]
    assert _steps(run) == list(range(1, STEPS + 1))
    got = latest_trainable(run)
    assert all(torch.equal(straight[n], got[n]) for n in straight)


def test_the_report_drops_a_torn_metrics_line_with_a_warning(tmp_path, capsys):
    from whetstone.report.page import build_report

    (tmp_path / "config.yaml").write_text("model: {name: tiny}\n")
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    build_report(tmp_path)
    assert capsys.readouterr().err == (f"warning: {tmp_path / 'metrics.jsonl'}: dropped unreadable line 2 "
                                       f"(cut short by a crash?)\n")


def _delete(checkpoints):
    (checkpoints / "latest").unlink()


def _garble(checkpoints):
    (checkpoints / "latest").write_bytes(b"\x00" * 12)


def _break_newest(checkpoints):
    (checkpoints / "step-0000003" / "optimizer.pt").unlink()  # `latest` still names it


@pytest.mark.parametrize("damage, resumed_at", [(_delete, 3), (_garble, 3), (_break_newest, 2)],
                         ids=["deleted", "garbled", "names-an-incomplete-one"])
def test_a_lost_latest_pointer_resumes_from_the_newest_complete_checkpoint(tmp_path, tiny_model_dir, data_file,
                                                                           straight, damage, resumed_at, capsys):
    run = tmp_path / "run"
    _stopped(run, tiny_model_dir, data_file)
    kept = (run / "metrics.jsonl").read_text().splitlines()[:resumed_at]
    damage(run / "checkpoints")
    capsys.readouterr()
    assert train(None, run, resume=True, progress=False)["steps"] == STEPS
    out, err = capsys.readouterr()
    assert f"resumed from {run / 'checkpoints' / f'step-{resumed_at:07d}'} at step {resumed_at}" in out
    assert "resuming from the newest complete one" in err
    assert (run / "metrics.jsonl").read_text().splitlines()[:resumed_at] == kept  # not started again from step 0
    assert _steps(run) == list(range(1, STEPS + 1))
    got = latest_trainable(run)
    assert all(torch.equal(straight[n], got[n]) for n in straight)


def _no_checkpoints(checkpoints):
    shutil.rmtree(checkpoints)


def _none_complete(checkpoints):
    for step in checkpoints.glob("step-*"):
        (step / "trainable.safetensors").unlink()


@pytest.mark.parametrize("damage, reason", [
    (_no_checkpoints, r"metrics\.jsonl logged steps up to 3, so the checkpoint of step 1 \(train\.checkpoint_every\) "
                      r"was written, but .*/checkpoints holds none now"),
    (_none_complete, r"none of its 2 checkpoints is complete \(step-0000002 lacks trainable\.safetensors; "
                     r"step-0000003 lacks trainable\.safetensors\)"),
], ids=["no-checkpoint", "none-complete"])
def test_logged_steps_without_a_usable_checkpoint_are_refused_not_restarted(tmp_path, tiny_model_dir, data_file,
                                                                           damage, reason):
    run = tmp_path / "run"
    _stopped(run, tiny_model_dir, data_file)
    damage(run / "checkpoints")
    metrics = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(WhetstoneError, match=reason):
        train(None, run, resume=True, progress=False)
    assert (run / "metrics.jsonl").read_bytes() == metrics
    assert not (run / "adapter").exists()


def test_a_run_stopped_before_its_first_checkpoint_starts_again_and_says_so(tmp_path, tiny_model_dir, data_file,
                                                                            straight, capsys):
    """Step s is logged before it is checkpointed: rows up to the first checkpoint step prove no loss."""
    run = tmp_path / "run"
    _stopped(run, tiny_model_dir, data_file)
    shutil.rmtree(run / "checkpoints")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # killed after logging step 1, before checkpointing it
    capsys.readouterr()
    assert train(None, run, resume=True, progress=False)["steps"] == STEPS
    assert (f"{run} stopped before its first checkpoint (step 1); starting again from step 0, so the rows of "
            f"metrics.jsonl up to step 1 are logged again") in capsys.readouterr().out
    assert _steps(run) == list(range(1, STEPS + 1))
    got = latest_trainable(run)
    assert all(torch.equal(straight[n], got[n]) for n in straight)


def test_the_latest_pointer_and_its_rename_are_fsynced(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    directory = tmp_path.resolve() / "checkpoints"  # as /proc/self/fd names it
    checkpoint_module.save_checkpoint(directory, model, optimizer, scheduler, checkpoint_module.TrainState(step=1), 2)
    swap = events.index(("replace", str(directory / "latest")))
    assert ("fsync", str(directory / ".latest.tmp")) in events[:swap]
    assert ("fsync", str(directory)) in events[swap:]


# ---------------------------------------------------------------------------
# The online loop (ppo, grpo) starts through the same checks.

REWARD = "def short(prompts, completions, references):\n    return [-len(c) / 10 for c in completions]\n"


def test_online_resume_on_edited_prompts_is_refused_and_accepted_with_the_flag(tmp_path, tiny_model_dir):
    from whetstone.config import load_config

    (tmp_path / "reward.py").write_text(REWARD)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {i}.", "reference": "yes"} for i in range(8)])
    config = load_config(None, ["objective=grpo", f"model={tiny_model_dir}", f"data.train={prompts}",
                                f"objective.reward=[{{function: '{tmp_path / 'reward.py'}:short'}}]",
                                "objective.max_new_tokens=4", "objective.rollout_batch_size=4",
                                "objective.num_generations=2", "train.batch_size=8", "train.max_steps=3",
                                "train.warmup=0.0", "eval.every=1000"])
    run = tmp_path / "run"
    assert train(config, run, progress=False, on_step=lambda step, row: step == 1)["stopped_early"]
    prompts.write_text(prompts.read_text().replace("Say 3.", "Say three."))
    with pytest.raises(WhetstoneError, match=rf"the training data changed since step-0000001 was written: "
                                             rf"data file {prompts} \(sha256"):
        train(None, run, resume=True, progress=False)
    summary = train(None, run, resume=True, progress=False, accept_changes=True)
    assert summary["steps"] == 3 and summary["accepted_changes"][0]["changes"]["data"][0].startswith(
        f"data file {prompts} (sha256")

