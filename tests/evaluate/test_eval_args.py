"""`whetstone eval` checks every argument before it loads anything, and reports every problem in one error."""

import pytest

from whetstone.cli import build_parser, main
from whetstone.config import EVAL_METRICS, ConfigError
from whetstone.evaluate.commands import DEFAULT_SHOTS, check_eval_args

# A model that cannot load: an error naming it would mean eval got past its checks.
NO_MODEL = "no-such-model-dir"


def _eval_error(argv: list[str], capsys) -> str:
    assert main(["eval", "--model", NO_MODEL, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the eval command line is not well-formed, found the following errors:\n")
    assert err.count("error:") == 1 and "Traceback" not in err and NO_MODEL not in err
    return err


def _fake_run(path, config: str):
    path.mkdir()
    (path / "config.yaml").write_text(config)
    return path


def test_two_bad_numbers_are_reported_together(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    err = _eval_error(["--data", str(data), "--limit", "0", "--max-new-tokens", "-3"], capsys)
    assert "  - --limit: got 0; must be a positive integer." in err
    assert "  - --max-new-tokens: got -3; must be a positive integer." in err


def test_flags_without_their_mode_and_an_unknown_metric_are_reported_together(tmp_path, capsys):
    probe = tmp_path / "probe.jsonl"
    probe.write_text('{"text": "x"}\n')
    err = _eval_error(["--data", str(probe), "--probe", str(probe), "--no-base", "--shots", "-1",
                       "--metrics", "rouge", "perplexity"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("  - ")]
    assert lines == ["  - --probe names the forgetting probe; add --forgetting.",
                     "  - --no-base belongs to --knowledge; add --knowledge DIR.",
                     f"  - --metrics: unknown perplexity; choose from {', '.join(EVAL_METRICS)}.",
                     "  - --shots: got -1; give a number of solved examples, e.g. 3."]  # and no --shots-from


def test_missing_data_and_a_ladder_without_a_tuned_model_are_reported_together(capsys):
    err = _eval_error(["--ladder", "--batch-size", "0"], capsys)
    assert "--batch-size: got 0" in err
    assert "--ladder and --forgetting compare the base model with a fine-tuned one" in err
    assert "--data is required without --run" in err and "--shots-from is required without --run" in err


def test_answers_over_an_input_and_a_bad_limit_are_reported_together(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    err = _eval_error(["--data", str(data), "--answers", str(data), "--limit", "0"], capsys)
    assert "--limit: got 0" in err
    assert f"the output {data} is the input file; eval never modifies its input" in err
    assert f"{data} already exists; pass --overwrite" in err
    assert data.read_text() == '{"prompt": "a", "completion": "b"}\n'  # never written over


def test_a_classifier_run_and_a_ladder_of_zero_shots_are_reported_together(tmp_path, capsys):
    run = _fake_run(tmp_path / "clf", "objective: classify\ndata: {train: t.jsonl, eval: e.jsonl}\n")
    argv = ["eval", "--run", str(run), "--ladder", "--shots", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run} is a classifier" in err and "--ladder --shots 0 would run zero-shot twice" in err


def test_a_directory_that_is_no_run_is_reported_once(tmp_path, capsys):
    err = _eval_error(["--run", str(tmp_path), "--ladder", "--limit", "0"], capsys)
    assert err.count("not a run directory") == 1 and "--limit: got 0" in err


def test_good_arguments_resolve_the_run_data_and_the_ladder_shots(tmp_path):
    run = _fake_run(tmp_path / "run", "objective: sft\ndata: {train: t.jsonl, eval: e.jsonl}\n")
    args = build_parser().parse_args(["eval", "--run", str(run), "--ladder", "--metrics", "rouge"])
    inputs = check_eval_args(args)
    assert (inputs.data, inputs.shots_from, inputs.shots_k, inputs.metrics) == ("e.jsonl", "t.jsonl", DEFAULT_SHOTS,
                                                                                 ["rouge"])
    args = build_parser().parse_args(["eval", "--model", NO_MODEL, "--data", "d.jsonl", "--forgetting",
                                      "--adapter", "a"])
    inputs = check_eval_args(args)  # with --data given, --forgetting runs the metrics too; no shots
    assert (inputs.data, inputs.shots_k, inputs.shots_from, inputs.knowledge) == ("d.jsonl", 0, None, None)


def test_the_error_is_one_config_error_listing_each_problem(tmp_path):
    args = build_parser().parse_args(["eval", "--limit", "0", "--max-length", "0", "--data", "d.jsonl"])
    with pytest.raises(ConfigError) as info:
        check_eval_args(args)
    assert info.value.problems == ["--limit: got 0; must be a positive integer.",
                                   "--max-length: got 0; must be a positive integer."]
