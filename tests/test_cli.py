"""The command line: exit codes, one-paragraph errors, no tracebacks for user mistakes."""

import json
import os
import subprocess
import sys

import pytest

from whetstone.cli import main


def test_bad_config_lists_every_problem_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("method: {name: lora, r: 0}\ntrain: {lr: -1}\n")
    assert main(["train", str(path), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "not well-formed, found the following errors" in err
    assert "method.r: got 0" in err and "train.lr: got -1.0" in err and "data.train: missing" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_missing_data_file_is_an_error_not_a_traceback(tmp_path, tiny_model_dir):
    result = subprocess.run(
        [sys.executable, "-m", "whetstone", "train", "--set", f"model={tiny_model_dir}",
         "--set", "data.train=nope.jsonl", "-o", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    assert "nope.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_bad_records_stop_training_with_file_and_line(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "a", "completion": "b"})
    data.write_text(good + "\n" + '{"prompt": "a", "completion": ' + "\n" + good + "\n")
    code = main(["train", "--set", f"model={tiny_model_dir}", "--set", f"data.train={data}", "-o",
                 str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and f"{data}:2" in err and "Traceback" not in err
    assert "data.on_error=skip" in err


def test_train_then_generate_from_the_run(tmp_path, tiny_model_dir, qa_file, capsys):
    run = tmp_path / "run"
    code = main(["train", "--set", f"model={tiny_model_dir}", "--set", f"data.train={qa_file}",
                 "--set", "train.max_steps=2", "-o", str(run), "--quiet"])
    assert code == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    capsys.readouterr()
    assert main(["generate", "--run", str(run), "--max-new-tokens", "4", "What is 2 plus 2?"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # one answer (a random tiny model's may be empty)
    assert main(["train", "--resume", str(run), "--set", "train.lr=1"]) == 2  # --resume uses the run's config


def test_usage_error_is_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--no-such-flag"])
    assert info.value.code == 2


def test_on_error_skip_trains_on_the_valid_records_and_counts_the_rest(tmp_path, tiny_model_dir, qa_file, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(qa_file.read_text() + '{"messages": [{"role": "user", "content": "no answer"}]}\n' + "{oops\n")
    code = main(["train", "--set", f"model={tiny_model_dir}", "--set", f"data.train={data}", "--set",
                 "data.on_error=skip", "--set", "train.max_steps=1", "-o", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["records"] == 32 and summary["data"]["skipped_invalid"] == 2
    assert "skipped 2 invalid records" in capsys.readouterr().out


def test_chat_reads_turns_until_an_empty_line(tmp_path, tiny_model_dir, qa_file):
    run = tmp_path / "run"
    assert main(["train", "--set", f"model={tiny_model_dir}", "--set", f"data.train={qa_file}",
                 "--set", "train.max_steps=1", "-o", str(run), "--quiet"]) == 0
    result = subprocess.run([sys.executable, "-m", "whetstone", "chat", "--run", str(run), "--max-new-tokens", "3"],
                            input="What is 1 plus 1?\n/reset\nAnd 2 plus 2?\n\n", capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model> ") == 2 and "Traceback" not in result.stderr
