"""`whetstone eval`, `compare` and `audit` on the command line: exit codes, output, no tracebacks."""

import json
import os
import subprocess
import sys

import pytest

from whetstone.cli import main
from whetstone.config import ConfigError, load_config


def test_eval_json_reports_metrics_and_speed(lora_run, task_files, tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    code = main(["eval", "--run", str(lora_run), "--max-new-tokens", "16", "--json", "--answers", str(answers),
                 "--metrics", "loss", "rouge", "chrf", "bleu", "exact_match"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"] == str(task_files[1])  # the run's data.eval by default
    result = report["eval"]
    assert result["n"] == 8 and result["generated"] == 8 and result["examples_per_s"] > 0
    assert {"loss", "perplexity", "rougeL", "chrf", "bleu", "exact_match"} <= set(result)
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(rows) == 8 and rows[0]["reference"] == "24 plus 24 is 48."


def test_eval_text_output_with_shots(lora_run, task_files, capsys):
    code = main(["eval", "--run", str(lora_run), "--data", str(task_files[1]), "--limit", "4", "--shots", "2",
                 "--shot-selection", "similar", "--max-new-tokens", "12", "--metrics", "rouge"])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 records, 2-shot" in out and "rougeL" in out and "examples/s" in out


def test_ladder_and_forgetting_from_the_cli(lora_run, capsys, tmp_path, write_jsonl):
    probe = write_jsonl(tmp_path / "probe.jsonl", [{"text": "The quick brown fox jumps over the lazy dog."}] * 3)
    code = main(["eval", "--run", str(lora_run), "--ladder", "--shots", "2", "--max-new-tokens", "12",
                 "--metrics", "rouge", "--forgetting", "--probe", str(probe)])
    out = capsys.readouterr().out
    assert code == 0
    assert "zero-shot" in out and "2-shot" in out and "verdict: the tuned model beats" in out
    assert "forgetting: general text perplexity" in out


def test_compare_prints_side_by_side(lora_run, capsys):
    assert main(["compare", "--run", str(lora_run), "--n", "3", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert out.count("reference:") == 3 and "base  rougeL" in out and "tuned  rougeL" in out
    assert "mean rougeL: base" in out
    assert main(["compare", "--run", str(lora_run), "--n", "2", "--max-new-tokens", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and {"base", "tuned", "base_score", "tuned_score", "reference"} <= set(rows[0])


@pytest.mark.parametrize("argv, message", [
    (["eval", "--data", "nope.jsonl"], "nope.jsonl"),
    (["eval", "--ladder", "--data", "{data}"], "--ladder and --forgetting compare"),
    (["eval", "--run", "{run}", "--metrics", "rouge", "perplexity"], "--metrics: unknown perplexity"),
    (["eval", "--run", "{run}", "--limit", "0"], "--limit: got 0"),
    (["eval", "--model", "{model}", "--data", "{data}", "--shots", "2"], "--shots-from is required"),
    (["eval", "--run", "{run}", "--shots", "40"], "--shots 40"),
    (["eval", "--run", "{run}", "--ladder", "--shots", "0"], "would run zero-shot twice"),
    (["eval", "--run", "{run}", "--forgetting", "--probe", "nope.jsonl"], "nope.jsonl"),
    (["eval", "--run", "{tmp}"], "not a run directory"),
    (["compare", "--run", "{run}", "--metric", "accuracy"], "--metric: got 'accuracy'"),
    (["compare", "--model", "{model}", "--data", "{data}"], "needs one: pass --run"),
    (["audit", "--run", "{run}", "--threshold", "1.5"], "--threshold: got 1.5"),
    (["audit", "--run", "{tmp}"], "not a run directory"),
])
def test_usage_errors_exit_2_without_traceback(argv, message, lora_run, task_files, tiny_model_dir, tmp_path, capsys):
    values = {"run": str(lora_run), "data": str(task_files[1]), "model": str(tiny_model_dir), "tmp": str(tmp_path)}
    assert main([a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_bad_data_file_is_one_sentence_in_a_real_process(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": \n')
    result = subprocess.run([sys.executable, "-m", "whetstone", "eval", "--model", str(tiny_model_dir), "--data",
                             str(bad)], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            check=False)
    assert result.returncode != 0 and "bad.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_config_validates_eval_and_canary_fields(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=x.jsonl", "eval.metrics=[loss, rogue]", "data.canaries=-1",
                           "eval.forgetting_data=missing.jsonl", "eval.max_new_tokens=0"])
    text = str(info.value)
    assert "eval.metrics: got ['rogue']" in text and "data.canaries: got -1" in text
    assert "eval.forgetting_data: missing.jsonl does not exist" in text
    assert "eval.forgetting_data is set but eval.forgetting is false" in text
    assert "eval.max_new_tokens: got 0" in text
    probe = tmp_path / "p.jsonl"
    probe.write_text('{"text": "x"}\n')
    config = load_config(None, ["data.train=x.jsonl", "eval.metrics=[loss, rouge, accuracy]", "data.canaries=4",
                                "eval.forgetting=true", f"eval.forgetting_data={probe}"])
    assert config.eval.probe_files() == [str(probe)] and config.data.canaries == 4
