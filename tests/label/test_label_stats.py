"""Agreement (Cohen's kappa against a hand-computed value), position bias and win rates."""

import json

import pytest
from labelkit import write_tasks

from whetstone.cli import main
from whetstone.label.stats import cohen_kappa, summarize
from whetstone.label.store import LabelStore, read_events, read_tasks, shown_order


def judge_as(store: LabelStore, annotator: str, task_id: str, category: str, **extra) -> None:
    """Judge so that `category` (an answer id, "tie" or "skip") is the outcome, whichever side it is shown on."""
    if category in ("tie", "skip"):
        choice = category
    else:
        choice = "AB"[shown_order(store.by_id[task_id], annotator).index(category)]
    store.judge(annotator, task_id, choice, extra.pop("ratings", {}), extra.pop("ideal", None), None)


# Ten tasks both judged, categories by answer id:
ANN = ["m0", "m0", "m0", "m0", "m0", "m1", "m1", "m1", "tie", "tie"]
BOB = ["m0", "m0", "m0", "m0", "m1", "m1", "m1", "tie", "tie", "m0"]
# By hand: agree on 1-4, 6, 7, 9, so p_o = 7/10. Both use m0 5x, m1 3x, tie 2x, so
# p_e = (5*5 + 3*3 + 2*2) / 10^2 = 0.38, and kappa = (0.7 - 0.38) / (1 - 0.38) = 0.32 / 0.62.
KAPPA = 0.32 / 0.62


def test_cohen_kappa_matches_the_hand_computed_value():
    assert cohen_kappa(ANN, BOB) == pytest.approx(KAPPA, abs=1e-12)
    assert cohen_kappa(ANN, ANN) == 1.0
    # Independent raters with the same marginals: p_o = p_e = 0.5, kappa 0.
    assert cohen_kappa(["x", "x", "y", "y"], ["x", "y", "x", "y"]) == 0.0
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None  # p_e = 1: undefined, not 1
    assert cohen_kappa([], []) is None


@pytest.fixture
def two_annotators(tmp_path):
    tasks = read_tasks(write_tasks(tmp_path / "tasks.jsonl", n=13))
    store = LabelStore(tasks, tmp_path / "labels.jsonl")
    for i, (a, b) in enumerate(zip(ANN, BOB)):
        judge_as(store, "ann", f"t{i}", a)
        judge_as(store, "bob", f"t{i}", b)
    judge_as(store, "ann", "t10", "m0")
    judge_as(store, "bob", "t10", "skip")  # skips are left out of agreement
    judge_as(store, "ann", "t11", "m1")  # only one of them: left out
    judge_as(store, "bob", "t12", "m1")
    store.undo("bob")  # ... and withdrawn
    judge_as(store, "bob", "t12", "m0", ratings={"A": 4, "B": 2})
    store.close()
    return tmp_path / "labels.jsonl"


def test_stats_of_a_two_annotator_log(two_annotators, capsys):
    summary = summarize(read_events(two_annotators))
    (agreement,) = summary["agreement"]
    assert agreement["annotators"] == ["ann", "bob"] and agreement["tasks"] == 10
    assert agreement["observed"] == pytest.approx(0.7) and agreement["kappa"] == pytest.approx(KAPPA)
    ann, bob = summary["annotators"]["ann"], summary["annotators"]["bob"]
    assert (ann["judged"], ann["tie"], ann["skip"], ann["undos"]) == (12, 2, 0, 0)
    assert (bob["judged"], bob["tie"], bob["skip"], bob["undos"], bob["ratings"]) == (12, 2, 1, 1, 2)
    # picks_left: the share of decided judgements that went to side A, from the log's own sides.
    lines = [e for e in read_events(two_annotators) if e["event"] == "judgement" and e["annotator"] == "ann"]
    assert ann["picks_left"] == pytest.approx(sum(e["choice"] == "A" for e in lines) / (ann["A"] + ann["B"]))
    # Sources: m0 is model-x, m1 model-y in every task; wins are counted per judgement.
    decided = ANN + BOB + ["m0", "m1", "m0"]
    x = summary["sources"]["model-x"]
    assert (x["wins"], x["losses"], x["ties"]) == (decided.count("m0"), decided.count("m1"), decided.count("tie"))
    assert summary["sources"]["model-y"]["wins"] == x["losses"]

    assert main(["label", "stats", str(two_annotators)]) == 0
    out = capsys.readouterr().out
    assert f"ann / bob: 10 tasks, observed 0.700, kappa {KAPPA:.3f}" in out
    assert main(["label", "stats", str(two_annotators), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["agreement"][0]["kappa"] == pytest.approx(KAPPA)


def test_stats_names_a_bad_log_line(tmp_path, capsys):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"event": "judgement", "id": "1", "annotator": "a", "task": "t0", "choice": "A"}\n'
                      "not json\n{}\n")
    assert main(["label", "stats", str(labels)]) == 2
    assert f"{labels}:2: not a JSON label event" in capsys.readouterr().err
    assert main(["label", "stats", str(tmp_path / "missing.jsonl")]) == 2
