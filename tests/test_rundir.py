"""RunDir: the run directory's names, its config read back from any working directory, summary and metrics."""

import json

import pytest
from tiny_runs import tiny_config, write_jsonl

from whetstone.config import ConfigError, config_from_dict, load_config, read_yaml
from whetstone.errors import WhetstoneError
from whetstone.rundir import RUN, RunDir, resolve_paths
from whetstone.train.fingerprint import fingerprint_changes, resolved_fingerprint


def test_names_and_paths(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.config_path == tmp_path / "r" / "config.yaml"
    assert run.metrics_path == tmp_path / "r" / "metrics.jsonl"
    assert run.summary_path == tmp_path / "r" / "summary.json"
    assert run.samples_path == tmp_path / "r" / "samples.jsonl"
    assert run.report_path == tmp_path / "r" / "report.html"
    assert run.checkpoints == tmp_path / "r" / "checkpoints"
    assert (run.adapter_dir, run.model_dir, run.merged_dir, run.stages_dir) == tuple(
        tmp_path / "r" / name for name in ("adapter", "model", "merged", "stages"))
    assert run.file(RunDir.LINEAGE) == tmp_path / "r" / "lineage.json"
    # What `train --overwrite` may replace holds every name a run writes.
    for name in (RunDir.CONFIG, RunDir.METRICS, RunDir.SUMMARY, RunDir.SAMPLES, RunDir.REPORT, RunDir.TRACKERS,
                 RunDir.CANARIES, RunDir.KNOWLEDGE, RunDir.STAGES_JSON, RunDir.STAGES_MD, RunDir.LINEAGE,
                 RunDir.MARKER, RunDir.CHECKPOINTS, RunDir.ADAPTER, RunDir.MODEL, RunDir.MERGED, RunDir.STAGES,
                 RunDir.EXPORT):
        assert name in RUN.entries
    assert RUN.marker == ".whetstone-run"


def test_weights_dir_is_the_adapter_only_when_it_holds_one(tmp_path):
    run = RunDir(tmp_path)
    run.adapter_dir.mkdir()
    assert run.weights_dir == tmp_path / "model"  # an empty adapter/ is not an adapter
    (run.adapter_dir / "adapter_config.json").write_text("{}")
    assert run.weights_dir == tmp_path / "adapter"


def test_a_directory_without_config_is_refused_with_a_sentence(tmp_path):
    assert not RunDir.is_run(tmp_path)
    with pytest.raises(WhetstoneError, match=rf"^--resume {tmp_path}: not a run directory \(no config.yaml in it\)"):
        RunDir.open(tmp_path, flag="--resume")
    with pytest.raises(WhetstoneError, match=rf"^--run {tmp_path}: not a run directory"):
        RunDir.open(tmp_path)
    (tmp_path / "config.yaml").write_text("{}\n")
    assert RunDir.is_run(tmp_path) and RunDir.open(tmp_path).path == tmp_path


def test_summary_is_none_until_written(tmp_path):
    run = RunDir(tmp_path)
    assert run.summary() is None
    run.write_json(RunDir.SUMMARY, {"steps": 3, "train_loss": 1.5})
    assert run.summary() == {"steps": 3, "train_loss": 1.5}
    assert (tmp_path / "summary.json").read_text() == json.dumps({"steps": 3, "train_loss": 1.5}, indent=2) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left


def test_torn_metrics_lines_are_dropped_with_a_warning(tmp_path, capsys):
    run = RunDir(tmp_path)
    assert run.metrics() == []
    run.metrics_path.write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n\x00\x00\x00\n{"step": 3, "lo')
    assert run.metrics() == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert "dropped unreadable line 3, 4" in capsys.readouterr().err


def _workdir(tmp_path, monkeypatch):
    """A working directory holding data, a probe file and a reward function, all named relatively."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    write_jsonl(work / "data" / "train.jsonl", [{"prompt": "a", "completion": "b"}])
    write_jsonl(work / "data" / "probe.jsonl", [{"text": "hello"}])
    (work / "rewards.py").write_text("def choice(prompts, completions, references):\n    return [0.0]\n")
    monkeypatch.chdir(work)
    return work


def test_config_reads_back_from_another_working_directory(tmp_path, monkeypatch):
    work = _workdir(tmp_path, monkeypatch)
    config = load_config(None, ["data.train=data/train.jsonl", "eval.forgetting=true",
                                "eval.forgetting_data=data/probe.jsonl", "model=HuggingFaceTB/SmolLM2-135M"])
    run = RunDir.create("runs/r1", config, overwrite=False)
    assert json.loads(run.marker_path.read_text())["workdir"] == str(work.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    raw_path = work / "runs" / "r1" / "config.yaml"
    with pytest.raises(ConfigError, match="eval.forgetting_data: data/probe.jsonl does not exist"):
        config_from_dict(read_yaml(raw_path), str(raw_path))  # what reading it without the workdir did
    reopened = RunDir(work / "runs" / "r1")
    raw = reopened.raw_config()
    assert raw["data"]["train"] == str(work.resolve() / "data" / "train.jsonl")
    assert raw["eval"]["forgetting_data"] == str(work.resolve() / "data" / "probe.jsonl")
    assert raw["model"]["name"] == "HuggingFaceTB/SmolLM2-135M"  # a hub id names nothing on disk
    loaded = reopened.config()
    assert loaded.data.train == str(work.resolve() / "data" / "train.jsonl")
    assert loaded.eval.forgetting_data == str(work.resolve() / "data" / "probe.jsonl")


def test_resolve_paths_rewrites_only_relative_paths_that_exist(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text("")
    (tmp_path / "rewards.py").write_text("")
    tree = {"train": "data/x.jsonl", "gone": "data/missing.jsonl", "hub": "Org/Model", "word": "sft",
            "fn": "rewards.py:choice", "module": "mypackage.rewards:choice", "absolute": "/etc/hostname",
            "list": [{"run": "data"}, 0.5, True, None], "dotted": "./data/x.jsonl"}
    assert resolve_paths(tree, tmp_path) == {
        "train": str(tmp_path / "data" / "x.jsonl"), "gone": "data/missing.jsonl", "hub": "Org/Model",
        "word": "sft", "fn": f"{tmp_path / 'rewards.py'}:choice", "module": "mypackage.rewards:choice",
        "absolute": "/etc/hostname", "list": [{"run": "data"}, 0.5, True, None],  # a bare word: no "/" or "."
        "dotted": str(tmp_path / "data" / "x.jsonl"),
    }


def test_a_run_without_a_recorded_workdir_reads_back_unchanged(tmp_path, monkeypatch):
    _workdir(tmp_path, monkeypatch)
    run = RunDir.create("runs/old", load_config(None, ["data.train=data/train.jsonl"]), overwrite=False)
    run.marker_path.write_text(json.dumps({"kind": "run directory"}))  # as written before markers held it
    assert run.workdir is None
    assert run.raw_config()["data"]["train"] == "data/train.jsonl"


def test_a_reward_function_and_run_resolve(tmp_path, monkeypatch):
    work = _workdir(tmp_path, monkeypatch)
    (work / "runs" / "rm").mkdir(parents=True)
    config = load_config(None, ["data.train=data/train.jsonl", "objective.name=grpo",
                                "objective.reward=[{function: 'rewards.py:choice'}, {run: runs/rm}]"])
    RunDir.create("runs/r2", config, overwrite=False)
    monkeypatch.chdir(tmp_path)
    rewards = RunDir(work / "runs" / "r2").raw_config()["objective"]["reward"]
    assert rewards[0]["function"] == f"{work.resolve() / 'rewards.py'}:choice"
    assert rewards[1]["run"] == str(work.resolve() / "runs" / "rm")


def test_a_recorded_fingerprint_compares_equal_once_its_paths_resolve(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.jsonl").write_text("")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    recorded = {"data": {"data file data/x.jsonl": "abc"}, "model": {"model m/config.json": "d1"},
                "config": {"data.train": "data/x.jsonl", "train.seed": 0}}
    current = {"data": {f"data file {tmp_path}/data/x.jsonl": "abc"},
               "model": {f"model {tmp_path}/m/config.json": "d1"},
               "config": {"data.train": f"{tmp_path}/data/x.jsonl", "train.seed": 0}}
    assert set(fingerprint_changes(recorded, current)) == {"data", "model", "config"}  # compared as spelled
    resolved = resolved_fingerprint(recorded, lambda tree: resolve_paths(tree, tmp_path))
    assert fingerprint_changes(resolved, current) == {}
    changed = dict(current, data={f"data file {tmp_path}/data/x.jsonl": "abd"})
    assert list(fingerprint_changes(resolved, changed)) == ["data"]


def test_resume_from_another_working_directory(tmp_path, monkeypatch, tiny_model_dir, qa_file):
    """A run started in one directory with relative data and model paths resumes from another, as the same run."""
    from tiny_runs import latest_trainable

    from whetstone.train.dispatch import train

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "qa.jsonl").write_bytes(qa_file.read_bytes())
    (work / "models").mkdir()
    (work / "models" / "tiny").symlink_to(tiny_model_dir)
    monkeypatch.chdir(work)
    overrides = ("train.max_steps=4", "train.batch_size=4", "train.checkpoint_every=2")
    straight = train(tiny_config("models/tiny", "data/qa.jsonl", *overrides), "runs/straight", progress=False)
    stopped = train(tiny_config("models/tiny", "data/qa.jsonl", *overrides), "runs/r", progress=False,
                    on_step=lambda step, row: step == 2)
    assert stopped["stopped_early"] and stopped["steps"] == 2

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resumed = train(None, work / "runs" / "r", resume=True, progress=False)
    assert resumed["steps"] == 4 and not resumed["stopped_early"]
    losses = [row["loss"] for row in RunDir(work / "runs" / "r").metrics()]
    assert losses == [row["loss"] for row in RunDir(work / "runs" / "straight").metrics()] and len(losses) == 4
    a, b = latest_trainable(work / "runs" / "straight"), latest_trainable(work / "runs" / "r")
    assert a.keys() == b.keys() and all((a[n] == b[n]).all() for n in a)
    assert straight["steps"] == 4
