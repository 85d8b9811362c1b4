"""The knowledge eval: gains from per-set scores, the CLI and the end-of-training hook, and the bundled builder.

The arithmetic is checked with a stub generator whose answers are written by hand, so every
per-set ROUGE-L and exact match is known in advance. The end-to-end tests use a tiny LoRA run
trained hard on arithmetic questions; there the references are other whetstone paths that must
agree: plain `eval --data` on each set, and the base model loaded without the adapter.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from whetstone.cli import main
from whetstone.config import ConfigError, load_config
from whetstone.errors import WhetstoneError
from whetstone.evaluate.harness import EvalOptions
from whetstone.evaluate.knowledge import load_sets, measure_knowledge, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def _chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


# ---- the arithmetic, with hand-written answers -------------------------------------------------------

REFERENCES = ["alpha bravo charlie delta", "echo foxtrot golf hotel", "india juliet kilo lima",
              "mike november oscar papa"]


def _stub_sets(tmp_path, write_jsonl) -> Path:
    for name in ("train_wording", "paraphrase", "heldout"):
        write_jsonl(tmp_path / f"{name}.jsonl", [_chat(f"{name} q{i}?", ref) for i, ref in enumerate(REFERENCES)])
    return tmp_path


class StubModel:
    """Answers each question from a table; 'zulu' shares no word with any reference."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers


def _stub_generate(model, tokenizer, conversations, max_new_tokens, batch_size=8):
    return [model.answers.get(c[-1]["content"], "zulu") for c in conversations]


def test_gains_are_the_differences_of_the_per_set_scores(tmp_path, write_jsonl, monkeypatch):
    monkeypatch.setattr("whetstone.evaluate.harness.generate_answers", _stub_generate)
    sets = load_sets(parse_spec(str(_stub_sets(tmp_path, write_jsonl))))
    tuned = StubModel({
        **{f"train_wording q{i}?": ref for i, ref in enumerate(REFERENCES)},  # all 4 right: 1.0
        "paraphrase q0?": REFERENCES[0], "paraphrase q1?": REFERENCES[1],  # 2 of 4 right: 0.5
        "heldout q0?": REFERENCES[0],  # 1 right, and q1 half: ROUGE-L (1 + 2/3) / 4, exact match 1/4
        "heldout q1?": "echo foxtrot",  # P 1, R 1/2: F 2/3
    })
    base = StubModel({"paraphrase q3?": REFERENCES[3]})  # nothing right on heldout: 0

    @contextlib.contextmanager
    def base_model():
        yield base

    report = measure_knowledge(tuned, None, sets, EvalOptions(max_new_tokens=4), base_model, "stub")
    scores = report.to_dict()
    assert scores["model"]["train_wording"] == {"rougeL": 1.0, "exact_match": 1.0}
    assert scores["model"]["paraphrase"] == {"rougeL": 0.5, "exact_match": 0.5}
    assert scores["model"]["heldout"] == {"rougeL": pytest.approx(5 / 12, abs=1e-6), "exact_match": 0.25}
    assert scores["base"]["heldout"] == {"rougeL": 0.0, "exact_match": 0.0}
    assert scores["base"]["paraphrase"] == {"rougeL": 0.25, "exact_match": 0.25}
    gains = report.gains()
    assert gains["rougeL"] == pytest.approx({"knowledge": 0.5 - 5 / 12, "wording_only": 0.5, "style": 5 / 12})
    assert gains["exact_match"] == pytest.approx({"knowledge": 0.25, "wording_only": 0.5, "style": 0.25})
    assert report.base_gains()["rougeL"] == pytest.approx({"knowledge": 0.25, "wording_only": -0.25})
    assert "base model, the control (rougeL, ~0 when the sets are alike): knowledge +25.0, wording-only -25.0" in (
        report.table())
    assert report.headline() == pytest.approx({"knowledge_knowledge_gain": 1 / 12, "knowledge_wording_only_gain": 0.5,
                                               "knowledge_style_gain": 5 / 12}, abs=1e-6)
    table = report.table()
    assert "gains (rougeL): knowledge +8.3, wording-only +50.0, style +41.7" in table
    assert "gains (exact_match): knowledge +25.0, wording-only +50.0, style +25.0" in table
    assert "  tuned  rougeL                100.0           50.0           41.7" in table
    rows = report.to_dict(answers=True)["answers"]["heldout"]
    assert rows[1] == {"answer": "echo foxtrot", "reference": REFERENCES[1], "base_answer": "zulu"}

    alone = measure_knowledge(tuned, None, sets, EvalOptions(max_new_tokens=4), None, "stub")
    assert alone.to_dict()["base"] is None and alone.to_dict()["base_gains"] is None
    assert alone.gains()["rougeL"]["style"] is None
    assert "style n/a" in alone.table() and "  model  rougeL" in alone.table()


def test_spec_directory_files_and_errors(tmp_path, write_jsonl):
    root = _stub_sets(tmp_path, write_jsonl)
    other = write_jsonl(tmp_path / "other.jsonl", [_chat("q?", "a")])
    spec = parse_spec(f"{root},heldout={other}")
    assert spec.paths() == {"train_wording": str(root / "train_wording.jsonl"),
                            "paraphrase": str(root / "paraphrase.jsonl"), "heldout": str(other)}
    assert {name: len(rows) for name, rows in load_sets(spec, limit=2).items()} == {
        "train_wording": 2, "paraphrase": 2, "heldout": 1}
    with pytest.raises(WhetstoneError, match="unknown set 'held'"):
        parse_spec(f"{root},held={other}")
    with pytest.raises(WhetstoneError, match="--knowledge.train_wording: not set"):
        parse_spec(f"paraphrase={other},heldout={other}")
    with pytest.raises(WhetstoneError, match="does not exist"):
        parse_spec(str(tmp_path / "missing"))
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "a document"}])
    with pytest.raises(WhetstoneError, match="chat records"):
        load_sets(parse_spec(f"{root},heldout={texts}"))


def test_config_takes_a_directory_or_a_mapping_and_names_missing_files(tmp_path, write_jsonl, qa_file):
    root = _stub_sets(tmp_path, write_jsonl)
    config = load_config(None, [f"data.train={qa_file}", f"eval.knowledge={root}"])
    assert config.eval.knowledge_sets().paths()["heldout"] == str(root / "heldout.jsonl")
    config = load_config(None, [f"data.train={qa_file}", f"eval.knowledge={{dir: {root}, limit: 2, base: false}}"])
    assert config.eval.knowledge_sets().limit == 2 and not config.eval.knowledge_sets().base
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"data.train={qa_file}", f"eval.knowledge={{paraphrase: {root}/p.jsonl, limit: 0}}"])
    message = str(error.value)
    assert "eval.knowledge.train_wording: not set" in message and "p.jsonl does not exist" in message
    assert "eval.knowledge.limit: got 0" in message


# ---- end to end on a tiny LoRA run ---------------------------------------------------------------------

def _arithmetic(numbers, template: str) -> list[dict]:
    return [_chat(template.format(i=i), f"{i} plus {i} is {2 * i}.") for i in numbers]


@pytest.fixture(scope="module")
def knowledge_dir(tmp_path_factory, write_jsonl) -> Path:
    """The arithmetic facts 0..23 trained (task_files) as 'What is i plus i?'; 24..31 held out."""
    root = tmp_path_factory.mktemp("knowledge")
    write_jsonl(root / "train_wording.jsonl", _arithmetic(range(6), "What is {i} plus {i}?"))
    write_jsonl(root / "paraphrase.jsonl", _arithmetic(range(6), "Add {i} to {i}. What do you get?"))
    write_jsonl(root / "heldout.jsonl", _arithmetic(range(24, 30), "Add {i} to {i}. What do you get?"))
    return root


@pytest.fixture(scope="module")
def knowledge_run(train_run, tiny_model_dir, task_files, knowledge_dir) -> Path:
    """A LoRA run that measures the knowledge sets at the end of training."""
    return train_run("knowledge", tiny_model_dir, task_files[0], "method.name=lora", "method.r=8", "method.alpha=16",
                     "train.lr=5e-3", "train.epochs=30", "train.batch_size=4", "eval.max_new_tokens=12",
                     f"eval.knowledge={knowledge_dir}")


def test_end_of_training_knowledge_lands_in_the_summary_and_matches_the_cli(knowledge_run, knowledge_dir,
                                                                           tiny_model_dir, capsys):
    summary = json.loads((knowledge_run / "summary.json").read_text())
    trained = summary["knowledge"]
    assert trained["n"] == {"train_wording": 6, "paraphrase": 6, "heldout": 6}
    assert summary["knowledge_style_gain"] == trained["gains"]["rougeL"]["style"]
    saved = json.loads((knowledge_run / "knowledge.json").read_text())
    assert len(saved["answers"]["heldout"]) == 6 and {"answer", "reference", "base_answer"} <= set(
        saved["answers"]["heldout"][0])
    # The tuned model learnt the answers' form: on facts it never saw it beats its random base.
    assert trained["model"]["heldout"]["rougeL"] > trained["base"]["heldout"]["rougeL"] + 0.2

    # The same adapter, reloaded by `whetstone eval`: the same answers, the same figures.
    code = main(["eval", "--run", str(knowledge_run), "--knowledge", str(knowledge_dir), "--max-new-tokens", "12",
                 "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)["knowledge"]
    for which in ("model", "base"):
        for name in ("train_wording", "paraphrase", "heldout"):
            assert report[which][name] == pytest.approx(trained[which][name], abs=1e-6)
    for metric, gains in report["gains"].items():
        scores, base = report["model"], report["base"]
        assert gains["knowledge"] == pytest.approx(scores["paraphrase"][metric] - scores["heldout"][metric], abs=2e-6)
        assert gains["wording_only"] == pytest.approx(
            scores["train_wording"][metric] - scores["paraphrase"][metric], abs=2e-6)
        assert gains["style"] == pytest.approx(scores["heldout"][metric] - base["heldout"][metric], abs=2e-6)

    # References: plain eval of the run on one set, and of the base model without any adapter.
    for model_args, which in ((["--run", str(knowledge_run)], "model"), (["--model", str(tiny_model_dir)], "base")):
        code = main(["eval", *model_args, "--data", str(knowledge_dir / "heldout.jsonl"), "--metrics", "rouge",
                     "exact_match", "--max-new-tokens", "12", "--json"])
        assert code == 0
        plain = json.loads(capsys.readouterr().out)["eval"]
        assert (plain["rougeL"], plain["exact_match"]) == pytest.approx(
            (report[which]["heldout"]["rougeL"], report[which]["heldout"]["exact_match"]), abs=1e-6)


def test_cli_text_table_no_base_and_usage_errors(knowledge_run, knowledge_dir, capsys):
    code = main(["eval", "--run", str(knowledge_run), "--knowledge", str(knowledge_dir), "--no-base", "--limit", "2",
                 "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    assert code == 0
    assert "train_wording n=2, paraphrase n=2, heldout n=2" in out and "style n/a" in out
    assert "  model  rougeL" in out and not any(line.startswith("  base") for line in out.splitlines())
    assert json.loads((knowledge_run / "knowledge.json").read_text())["n"]["heldout"] == 2

    assert main(["eval", "--run", str(knowledge_run), "--no-base"]) == 2
    assert "--no-base belongs to --knowledge" in capsys.readouterr().err
    assert main(["eval", "--run", str(knowledge_run), "--knowledge", str(knowledge_dir / "nope")]) == 2
    err = capsys.readouterr().err
    assert "train_wording.jsonl does not exist" in err and "Traceback" not in err


# ---- the bundled example's builder -------------------------------------------------------------------

def _builder():
    spec = importlib.util.spec_from_file_location("knowledge_base_build", ROOT / "examples/knowledge_base/build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _qa(path: Path) -> list[tuple[str, str]]:
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in _rows(path)]


def test_builder_split_is_disjoint_stable_and_the_paraphrase_is_never_trained(tmp_path):
    build = _builder()
    build.main(["--out", str(tmp_path / "a")])
    build.main(["--out", str(tmp_path / "b")])
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["docs.jsonl", "eval.jsonl", "heldout.jsonl", "paraphrase.jsonl", "train.jsonl",
                     "train_wording.jsonl"]
    for name in files:  # stable under reruns, byte for byte
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    out = tmp_path / "a"
    trained, heldout = build.choose_facts()
    names = {name for name, _ in trained}
    assert not names & {name for name, _ in heldout}  # disjoint facts
    assert 180 <= len(trained) <= 260 and 100 <= len(heldout) <= 130  # ~2/3 : 1/3 of ~330 facts
    train = _qa(out / "train.jsonl")
    assert len(train) == len(build.TRAINING) * len(trained)  # every training wording, by default
    train_questions, train_answers = {q for q, _ in train}, {a for _, a in train}
    heldout_qa, paraphrase = _qa(out / "heldout.jsonl"), _qa(out / "paraphrase.jsonl")
    assert len(heldout_qa) >= 100 and not {a for _, a in heldout_qa} & train_answers  # no held-out fact is trained
    docs = "\n".join(r["text"] for r in _rows(out / "docs.jsonl"))
    assert not any(a in docs for _, a in heldout_qa) and all(a in docs for _, a in trained)

    # The paraphrase wording is another template family, and never a training question.
    assert [q for q, _ in paraphrase] == [build.PARAPHRASE.format(name=n) for n, _ in trained]
    assert not {q for q, _ in paraphrase} & train_questions
    assert not any(q.startswith(build.PARAPHRASE.split("{")[0]) for q in train_questions)
    assert "`" not in build.PARAPHRASE and all("`" in t for t in build.TRAINING)
    assert all(q.startswith(build.PARAPHRASE.split("{")[0]) for q, _ in heldout_qa)
    # train_wording re-asks every trained fact exactly as training did, in the same order as paraphrase.
    train_wording = _qa(out / "train_wording.jsonl")
    assert set(train_wording) <= set(train) and [a for _, a in train_wording] == [a for _, a in paraphrase]
    dev = _qa(out / "eval.jsonl")
    assert len(dev) == 64 and not {q for q, _ in dev} & (train_questions | {q for q, _ in paraphrase})


def test_shipped_example_is_what_the_builder_writes_and_data_check_passes(tmp_path, capsys):
    shipped = ROOT / "examples/knowledge_base"
    # As a user runs it, in a fresh process: under pytest some stdlib functions are swapped (sys.unraisablehook).
    subprocess.run([sys.executable, str(shipped / "build.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    if len(_rows(tmp_path / "paraphrase.jsonl")) == len(_rows(shipped / "paraphrase.jsonl")):  # same docstrings
        for name in ("train.jsonl", "docs.jsonl", "heldout.jsonl", "paraphrase.jsonl"):
            assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes()
    for name in ("train", "docs", "eval", "train_wording", "paraphrase", "heldout"):
        assert main(["data", "check", str(shipped / f"{name}.jsonl"), "--no-near-dedup"]) == 0
    assert main(["data", "check", str(shipped / "train.jsonl"), "--eval", str(shipped / "heldout.jsonl")]) == 0
    assert "0 exact, 0 near" in capsys.readouterr().out
    config = load_config(ROOT / "configs/knowledge_base.yaml", [])
    assert config.eval.knowledge_sets().paths()["heldout"] == "examples/knowledge_base/heldout.jsonl"


def test_short_answer_replay_is_right_stable_and_asks_nothing_the_probe_asks():
    """examples/self_replay/short_answers.py: the shipped file is what the script writes, every answer is right,
    no word it asks about is in the forgetting probe, and it never uses the probe's answer-length suffix."""
    spec = importlib.util.spec_from_file_location("short_answers", ROOT / "examples/self_replay/short_answers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not module.SOURCE.is_file():
        pytest.skip(f"{module.SOURCE} is not on this machine")
    built = module.records()
    assert built == _rows(ROOT / "examples/self_replay/short_answers.jsonl") == module.records()
    pairs = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in built]
    assert len(pairs) == 150 and len({q for q, _ in pairs}) == 150
    for question, answer in pairs:
        quoted = question.split('"')[1::2]
        if question.startswith("How many letters"):
            assert answer == str(len(quoted[0]))
        elif question.startswith("What is the first letter"):
            assert answer == quoted[0][0]
        elif question.startswith("What is the last letter"):
            assert answer == quoted[0][-1]
        elif question.startswith("Write the word"):
            assert answer == quoted[0].upper()
        else:
            assert question.startswith("Which comes first") and answer == min(quoted) and len(quoted) == 2
        assert len(answer.split()) == 1
    probe = _qa(ROOT / "examples/general_probe/qa.jsonl")
    probe_words = {w.strip("?.,").lower() for q, a in probe for w in f"{q} {a}".split()}
    assert not {w for q, _ in pairs for w in q.split('"')[1::2]} & probe_words
    assert not any("Answer in a few words" in q for q, _ in pairs)
    assert all(q.endswith("Answer in a few words.") for q, _ in probe)  # the suffix this file avoids
