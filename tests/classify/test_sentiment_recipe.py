"""The sentiment recipes (configs/sentiment_*.yaml) end to end on the embedded model, truncated to a few steps."""

import json
from pathlib import Path

import pytest

from whetstone.cli import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "sentiment"


def _head(name: str, n: int, tmp_path: Path) -> Path:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()[:n]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sentiment_head_and_generative_recipes_run_and_compare(tmp_path, capsys):
    train, evaluate = _head("train.jsonl", 16, tmp_path), _head("eval.jsonl", 12, tmp_path)
    sft_train, sft_eval = _head("sft_train.jsonl", 16, tmp_path), _head("sft_eval.jsonl", 8, tmp_path)
    short = ["--set", "train.max_steps=2", "--set", "train.batch_size=8", "--quiet"]
    assert main(["train", str(ROOT / "configs/sentiment_head.yaml"), "-o", str(tmp_path / "head"), *short,
                 "--set", f"data.train={train}", "--set", f"data.eval={evaluate}",
                 "--set", "objective.labels=[negative, neutral, positive]"]) == 0
    summary = json.loads((tmp_path / "head" / "summary.json").read_text())
    assert summary["final_eval"]["n"] == 12
    assert summary["final_eval"]["confusion_matrix"]["labels"] == ["negative", "neutral", "positive"]
    assert main(["train", str(ROOT / "configs/sentiment_generative.yaml"), "-o", str(tmp_path / "gen"), *short,
                 "--set", f"data.train={sft_train}", "--set", f"data.eval={sft_eval}"]) == 0
    capsys.readouterr()
    assert main(["predict", "--run", str(tmp_path / "head"), "--run", str(tmp_path / "gen"),
                 "--data", str(evaluate), "--json"]) == 0
    head, generative = json.loads(capsys.readouterr().out)
    assert (head["kind"], generative["kind"]) == ("head", "generative")
    assert head["accuracy"] == pytest.approx(summary["final_eval"]["accuracy"])
    assert generative["n"] == 12 and sum(map(sum, generative["confusion_matrix"]["matrix"])) == 12
