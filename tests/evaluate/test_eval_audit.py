"""Memorization audit on a tiny model: planted canaries trained for many epochs are exposed; others are not."""

import json

import pytest

from whetstone.cli import main
from whetstone.config import DataConfig
from whetstone.data.canaries import make_canaries
from whetstone.data.dataset import load_splits
from whetstone.evaluate.audit import EXPOSED_BITS, audit_run, measure_exposure, similarity
from whetstone.evaluate.pair import ModelPair


@pytest.fixture(scope="module")
def canary_run(train_run, tiny_model_dir, task_files):
    """Full fine-tune, 40 epochs over 24 task records and 2 planted canaries."""
    return train_run("canaries", tiny_model_dir, task_files[0], "method.name=full", "train.lr=3e-3",
                     "train.epochs=40", "train.batch_size=8", "data.canaries=2")


def test_canaries_are_planted_deterministically(task_files):
    cfg = DataConfig(train=str(task_files[0]), canaries=3)
    records, _, stats = load_splits(cfg, seed=5)
    planted = sorted((r for r in records if r.task == "canary"), key=lambda r: r.origin)  # canary:1, canary:2, ...
    secrets = [c.secret for c in make_canaries(3, seed=5)]
    assert len(records) == 24 + 3 and len(planted) == 3
    assert [r.messages[1].content.split()[-1].rstrip(".") for r in planted] == secrets
    assert load_splits(cfg, seed=5)[0] == records and make_canaries(3, seed=6) != make_canaries(3, seed=5)
    assert any("planted 3 canaries" in note for note in stats.notes)


def test_planted_canaries_are_exposed_and_unplanted_ones_are_not(canary_run):
    saved = json.loads((canary_run / "canaries.json").read_text())
    assert [c["secret"] for c in saved["canaries"]] == [c.secret for c in make_canaries(2, seed=0)]
    assert json.loads((canary_run / "summary.json").read_text())["canaries"] == 2

    report = audit_run(str(canary_run), n=24, max_new_tokens=24, batch_size=8)
    tuned, base = report.canaries["tuned"], report.canaries["base"]
    assert all(c["exposure"] >= EXPOSED_BITS for c in tuned)  # top 1% of 1,001
    assert all(c["exposure"] < EXPOSED_BITS for c in base)
    assert sum(c["exposure"] for c in tuned) > sum(c["exposure"] for c in base) + 8

    # Secrets of the same shape that were never planted: nothing special on the tuned model.
    pair = ModelPair.load(None, None, str(canary_run), "cpu")
    unplanted = measure_exposure(pair.tuned, pair.tokenizer, make_canaries(4, seed=123), "chat")
    assert all(c["exposure"] < EXPOSED_BITS for c in unplanted)
    assert sum(c["exposure"] for c in unplanted) / 4 < 3.0

    # The over-trained model also reproduces its training answers; the random base does not.
    assert report.extraction["tuned"].rate > 0.5 and report.extraction["base"].rate == 0.0
    assert report.memorizes and report.exposed == 2
    text = report.verdict()
    assert "the tuned model has memorized planted secrets" in text and "the base model 0.0%" in text


def test_audit_cli_strict_exit_code_and_json(canary_run, capsys):
    assert main(["audit", "--run", str(canary_run), "--n", "8", "--max-new-tokens", "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["memorizes"] is True and len(report["canaries"]["tuned"]) == 2
    assert main(["audit", "--run", str(canary_run), "--n", "8", "--max-new-tokens", "16", "--strict",
                 "--alternatives", "50"]) == 1
    assert "ranked first of 51" in capsys.readouterr().out


def test_audit_without_canaries_says_so(lora_run):
    report = audit_run(str(lora_run), n=10, max_new_tokens=16)
    assert report.canaries == {} and "none planted" in report.verdict()
    assert report.extraction["tuned"].n == 10


def test_similarity():
    assert similarity("a  b c", "a b c") == 1.0
    assert similarity("abcd", "abce") == pytest.approx(0.75)
    assert similarity("", "xyz") == 0.0
