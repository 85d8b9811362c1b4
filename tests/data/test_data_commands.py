"""The `whetstone data` verbs through the real CLI: output and exit codes 0, 1 and 2."""

from __future__ import annotations

import json

import pytest
from datafiles import chat, write_rows

from whetstone.cli import main


@pytest.fixture
def good(tmp_path):
    return str(write_rows(tmp_path / "good.jsonl", [chat(f"q{i}", f"a{i}") for i in range(4)]))


@pytest.fixture
def bad(tmp_path):
    return str(write_rows(tmp_path / "bad.jsonl", [chat("q", "a"), {"messages": []}]))


def test_check_exit_0_when_clean(good, capsys):
    assert main(["data", "check", good]) == 0
    assert capsys.readouterr().out.rstrip().endswith("result: ok, no problems found.")


def test_check_exit_1_on_bad_records_and_json_output(bad, capsys):
    assert main(["data", "check", bad, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == [
        {
            "origin": f"{bad}:2",
            "field": "messages",
            "reason": "is an empty list; a conversation needs at least one message",
        }
    ]


def test_check_exit_1_on_a_train_eval_leak(good, tmp_path):
    leak = str(write_rows(tmp_path / "eval.jsonl", [chat("q2", "a2")]))
    assert main(["data", "check", good, "--eval", leak]) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "check", "missing/train.jsonl"], "error: data file not found: missing/train.jsonl"),
        (["data", "check", "GOOD", "--max-length", "64"], "error: --max-length needs --model"),
        (["data", "check", "GOOD", "--threshold", "1.5"], "error: --threshold must be a Jaccard similarity in (0, 1]"),
        (["data", "clean", "GOOD", "GOOD"], "error: the output GOOD is the input file; clean never modifies its input"),
        (["data", "clean", "GOOD", "OUT", "--max-tokens", "5"], "error: --min-tokens and --max-tokens need --model"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(good, tmp_path, capsys, argv, message):
    argv = [a.replace("GOOD", good).replace("OUT", str(tmp_path / "o.jsonl")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.replace("GOOD", good)) and "Traceback" not in err


def test_unknown_format_choice_is_an_argparse_usage_error(good, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["data", "check", good, "--format", "chatml"])
    assert caught.value.code == 2
    assert "argument --format: invalid choice: 'chatml'" in capsys.readouterr().err


def test_clean_exit_codes(bad, tmp_path, capsys):
    out = str(tmp_path / "out.jsonl")
    assert main(["data", "clean", bad, out]) == 1  # invalid records, and no --drop-invalid
    assert "pass --drop-invalid to drop them" in capsys.readouterr().err
    assert main(["data", "clean", bad, out, "--drop-invalid"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"read 2 rows from {bad}; wrote 1 to {out}",
        "dropped: 1 invalid",
    ]
    assert main(["data", "check", out]) == 0


def test_model_flag_loads_the_tokenizer_and_reports_tokens(good, monkeypatch, capsys):
    import whetstone.models
    from whetstone.models.tiny import build_tiny_tokenizer

    loaded = []
    monkeypatch.setattr(whetstone.models, "load_tokenizer", lambda spec: loaded.append(spec) or build_tiny_tokenizer())
    assert main(["data", "check", good, "--model", "tiny", "--max-length", "8", "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert loaded == ["tiny"]
    assert (tokens["count"], tokens["max_length"], tokens["truncated"]) == (4, 8, 4)
