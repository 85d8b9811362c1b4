"""eval scores a generated answer without its reasoning, and keeps the reasoning beside it.

Generation is replaced by replies written here, so every score is known in advance: each reasoning
block names the reference, so scoring it with the answer would change exact match.
"""

import importlib.resources
import json

import pytest
from tiny_runs import write_jsonl

from whetstone.cli import main
from whetstone.data.formats import load_records
from whetstone.evaluate.harness import EvalOptions, evaluate

TEMPLATES = importlib.resources.files("trl") / "chat_templates"
QUESTIONS = ["What is 2 plus 2?", "What is 3 plus 3?", "What is 4 plus 4?", "What is 5 plus 5?"]
REFERENCES = ["4", "6", "8", "10"]
# question -> what the model writes: right, wrong (its reasoning holds the reference), no reasoning, empty block
REPLIES = {
    QUESTIONS[0]: "<think>\nTwo and two: 4.\n</think>\n\n4",
    QUESTIONS[1]: "<think>\nThe answer is 6, but I will say 7.\n</think>\n\n7",
    QUESTIONS[2]: "8",
    QUESTIONS[3]: "<think>\n\n</think>\n\n11",
}


@pytest.fixture
def qa_file(tmp_path):
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in zip(QUESTIONS, REFERENCES)]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


@pytest.fixture
def replies(monkeypatch):
    """Generation answers each conversation from REPLIES (or the table given)."""
    def use(table: dict[str, str] = REPLIES):
        def generate(model, tokenizer, conversations, max_new_tokens, batch_size=8):
            return [table[c[-1]["content"]] for c in conversations]

        monkeypatch.setattr("whetstone.evaluate.harness.generate_answers", generate)

    return use


def test_the_answer_is_scored_without_its_reasoning(qa_file, replies, tiny_tokenizer):
    replies()
    result = evaluate(None, tiny_tokenizer, load_records(str(qa_file)).records, EvalOptions(metrics=["exact_match"]))
    assert result.answers == ["4", "7", "8", "11"]
    assert result.reasoning == ["Two and two: 4.", "The answer is 6, but I will say 7.", None, None]
    assert result.metrics["exact_match"] == 0.5  # 2 of 4; with the reasoning in, none would match exactly


def test_a_template_that_opens_think_has_replies_start_inside_it(qa_file, replies, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(tiny_tokenizer, "chat_template", (TEMPLATES / "deepseek_r1_distill.jinja").read_text())
    replies({QUESTIONS[0]: "Two and two.\n</think>\n\n4", QUESTIONS[1]: "6", QUESTIONS[2]: "Still thinking about 8",
             QUESTIONS[3]: "Five and five.</think>10"})
    result = evaluate(None, tiny_tokenizer, load_records(str(qa_file)).records, EvalOptions(metrics=["exact_match"]))
    # "6" has no </think>: the prompt opened the block, so the model never left it (max_new_tokens cut it).
    assert result.answers == ["4", "", "", "10"]
    assert result.reasoning == ["Two and two.", "6", "Still thinking about 8", "Five and five."]
    assert result.metrics["exact_match"] == 0.5


def test_the_answers_file_carries_the_reasoning(qa_file, replies, tiny_model_dir, tmp_path, capsys):
    replies()
    out = tmp_path / "answers.jsonl"
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(qa_file), "--metrics", "exact_match",
                 "--answers", str(out), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["eval"]["exact_match"] == 0.5
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in row.items() if k != "origin"} for row in rows] == [
        {"answer": "4", "reference": "4", "reasoning": "Two and two: 4."},
        {"answer": "7", "reference": "6", "reasoning": "The answer is 6, but I will say 7."},
        {"answer": "8", "reference": "8"},
        {"answer": "11", "reference": "10"}]
