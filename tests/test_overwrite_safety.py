"""train --overwrite replaces only a run whetstone wrote; no command writes over the file it reads."""

import json
from pathlib import Path

import pytest
import yaml
from tiny_runs import tiny_config

from whetstone.cli import main
from whetstone.config import load_config
from whetstone.errors import WhetstoneError
from whetstone.train.dispatch import train


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pipeline_config(tmp_path, tiny_model_dir, qa_file):
    raw = {"model": str(tiny_model_dir), "train": {"max_steps": 1, "batch_size": 4},
           "stages": [{"name": "a", "data": {"train": str(qa_file)}}, {"name": "b", "data": {"train": str(qa_file)}}]}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    return load_config(tmp_path / "pipeline.yaml")


@pytest.mark.parametrize("pipeline", [False, True])
@pytest.mark.parametrize("run_file", ["config.yaml", "metrics.jsonl", "summary.json"])
def test_overwrite_refuses_a_project_that_looks_like_a_run(tmp_path, tiny_model_dir, qa_file, run_file, pipeline):
    config = pipeline_config(tmp_path, tiny_model_dir, qa_file) if pipeline else tiny_config(tiny_model_dir, qa_file)
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\n")
    (project / "src" / "app.py").write_text("print('hi')\n")
    for name in {"config.yaml", run_file}:  # config.yaml alone, or the shape of a run from before markers
        (project / name).write_text("{}\n")
    before = snapshot(project)
    with pytest.raises(WhetstoneError, match="--overwrite refused: .*project (is not a whetstone run directory|"
                                             "holds pyproject.toml, src)"):
        train(config, project, progress=False, overwrite=True)
    assert snapshot(project) == before


def test_overwrite_replaces_a_run_whetstone_wrote_and_keeps_what_it_did_not(tmp_path, tiny_model_dir, qa_file):
    config = tiny_config(tiny_model_dir, qa_file, "train.max_steps=1")
    run = tmp_path / "run"
    train(config, run, progress=False)
    assert json.loads((run / ".whetstone-run").read_text())["kind"] == "run directory"
    (run / "metrics.jsonl").write_text("stale\n")
    train(config, run, progress=False, overwrite=True)
    assert "stale" not in (run / "metrics.jsonl").read_text() and (run / ".whetstone-run").is_file()
    (run / ".whetstone-run").unlink()  # a run written before the marker existed is still a run
    train(config, run, progress=False, overwrite=True)
    (run / "notes.md").write_text("my observations")
    with pytest.raises(WhetstoneError, match=r"holds notes\.md, which whetstone did not write"):
        train(config, run, progress=False, overwrite=True)
    assert (run / "notes.md").read_text() == "my observations" and (run / "adapter").is_dir()
    (run / "notes.md").unlink()
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(WhetstoneError, match="link is a symbolic link; name the directory it points to"):
        train(config, tmp_path / "link", progress=False, overwrite=True)
    assert (run / "adapter").is_dir() and (tmp_path / "link").is_symlink()


@pytest.mark.parametrize("where", [".", "..", "~"])
def test_train_into_the_current_parent_or_home_directory_is_refused(tmp_path, tiny_model_dir, qa_file, monkeypatch,
                                                                     where):
    home, work = tmp_path / "home", tmp_path / "home" / "project"
    work.mkdir(parents=True)
    (work / "config.yaml").write_text("{}\n")
    (work / "metrics.jsonl").write_text("{}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    config = tiny_config(tiny_model_dir, qa_file)
    for overwrite in (False, True):
        with pytest.raises(WhetstoneError, match="that is (the current directory|a directory above|your home)"):
            train(config, home if where == "~" else Path(where), progress=False, overwrite=overwrite)
    assert sorted(snapshot(home)) == ["project/config.yaml", "project/metrics.jsonl"]


def test_cli_train_into_the_current_directory_is_one_sentence(tmp_path, tiny_model_dir, qa_file, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--set", f"model={tiny_model_dir}", "--set", f"data.train={qa_file}", "-o", ".", "--overwrite",
            "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "-o .: that is the current directory" in err and "Traceback" not in err
    assert qa_file.is_file()


def test_label_prepare_and_data_replay_never_write_over_their_input(tmp_path, tiny_model_dir, capsys):
    from whetstone.label.prepare import Source, prepare

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Say hi."}\n')
    with pytest.raises(WhetstoneError, match="is the input file; label prepare never modifies its input"):
        prepare(str(prompts), tmp_path / "." / "prompts.jsonl", Source(model=str(tiny_model_dir)), overwrite=True,
                progress=False)
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"messages": [{"role": "user", "content": "Say hi."}]}\n')
    (tmp_path / "alias.jsonl").symlink_to(requests)
    assert main(["data", "replay", str(tmp_path / "alias.jsonl"), "--requests", str(requests), "--overwrite",
                 "--model", "/nonexistent"]) == 2
    assert "is the input file; data replay never modifies its input" in capsys.readouterr().err
    assert prompts.read_text() == '{"prompt": "Say hi."}\n' and requests.read_text().startswith('{"messages"')


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_predict_and_eval_outputs_never_replace_an_input_or_an_unasked_file(tmp_path, tiny_model_dir, capsys,
                                                                           command):
    data = tmp_path / "cls.jsonl"
    data.write_text("".join(json.dumps({"text": f"number {i}", "label": "even" if i % 2 == 0 else "odd"}) + "\n"
                            for i in range(4)))
    original = data.read_text()
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n")
    flag = {"predict": "-o", "eval": "--answers"}[command]
    argv = [command, "--model", str(tiny_model_dir), "--data", str(data)] + \
        (["--metrics", "accuracy", "--max-new-tokens", "2"] if command == "eval" else [])

    assert main(argv + [flag, str(out)]) == 2
    assert f"{out} already exists; pass --overwrite" in capsys.readouterr().err
    assert main(argv + [flag, str(tmp_path / "." / "cls.jsonl"), "--overwrite"]) == 2
    assert f"is the input file; {command} never modifies its input" in capsys.readouterr().err
    assert (data.read_text(), out.read_text()) == (original, "keep me\n")

    assert main(argv + [flag, str(out), "--overwrite"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["origin"] for row in rows] == [f"{data}:{i}" for i in range(1, 5)]
