"""Export: preference / kto / sft rows as documented, readable by the data formats, and trainable."""

import json

import pytest
from labelkit import write_tasks
from test_label_stats import judge_as

from whetstone.cli import main
from whetstone.data.formats import load_records
from whetstone.errors import WhetstoneError
from whetstone.label.export import export_labels
from whetstone.label.store import LabelStore, read_tasks


@pytest.fixture
def log(tmp_path):
    """Three annotators; each task is a case of the export rules."""
    store = LabelStore(read_tasks(write_tasks(tmp_path / "tasks.jsonl", n=8)), tmp_path / "labels.jsonl")
    votes = {
        "t0": {"ann": "m0", "bob": "m0", "cy": "m0"},  # unanimous: m0 chosen
        "t1": {"ann": "m1", "bob": "m1", "cy": "tie"},  # majority m1 (multi-turn prompt)
        "t2": {"ann": "m0", "bob": "m1"},  # split vote: no pair
        "t3": {"ann": "tie", "bob": "tie", "cy": "m0"},  # tie wins: no pair
        "t4": {"ann": "skip", "bob": "skip"},  # skipped by all: no pair
        "t5": {"ann": "m0", "bob": "skip"},  # the skip does not vote: m0 chosen
    }
    for task, by in votes.items():
        for annotator, category in by.items():
            judge_as(store, annotator, task, category)
    # Ratings (by side; judge_as maps them through the annotator's own order).
    from whetstone.label.store import shown_order

    def sides(task, annotator, m0, m1):
        a, _ = shown_order(store.by_id[task], annotator)
        return {"A": m0, "B": m1} if a == "m0" else {"A": m1, "B": m0}

    judge_as(store, "ann", "t6", "tie", ratings=sides("t6", "ann", 5, 3), ideal="The ideal answer 6.")
    judge_as(store, "bob", "t6", "tie", ratings=sides("t6", "bob", 4, 1), ideal="The ideal answer 6.")
    judge_as(store, "ann", "t7", "skip", ideal="Ideal for a skipped task.")
    store.close()
    return tmp_path / "labels.jsonl"


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_preference_export_counts_votes_and_drops_ties_skips_and_splits(log, tmp_path):
    result = export_labels(log, "preference", tmp_path / "pairs.jsonl")
    rows = _rows(result.path)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("good answer 0", "bad answer 0"), ("bad answer 1", "good answer 1"), ("good answer 5", "bad answer 5")]
    assert rows[0]["prompt"] == "Question 0: say something nice."  # one user turn: a plain string
    assert [m["role"] for m in rows[1]["prompt"]] == ["system", "user", "assistant", "user"]
    assert dict(result.dropped) == {"split vote": 1, "tie": 2, "skipped": 2}  # t3 and t6 are ties; t4 and t7 skips
    records = load_records(str(result.path)).records
    assert [r.kind for r in records] == ["preference"] * 3
    assert records[1].chosen[0].content == "bad answer 1" and records[1].messages[0].role == "system"
    # Only ann: her t2 vote decides it now.
    only_ann = _rows(export_labels(log, "preference", tmp_path / "ann.jsonl", ["ann"]).path)
    assert ("good answer 2", "bad answer 2") in [(r["chosen"], r["rejected"]) for r in only_ann]


def test_kto_export_uses_mean_ratings_then_pairwise_records(log, tmp_path):
    result = export_labels(log, "kto", tmp_path / "kto.jsonl")
    labels = {r["completion"]: r["label"] for r in _rows(result.path)}
    # t6 rated: m0 by 5 and 4 (mean 4.5 >= 4: desirable), m1 by 3 and 1 (mean 2 <= 2: undesirable).
    assert labels["good answer 6"] is True and labels["bad answer 6"] is False
    # Unrated: wins vs losses over the votes (t0: 3-0, t1: m1 2-0, t5: 1-0; t2 is 1-1; t3 1-0 for m0).
    assert labels["good answer 0"] is True and labels["bad answer 0"] is False
    assert labels["bad answer 1"] is True and labels["good answer 1"] is False
    assert labels["good answer 3"] is True and labels["bad answer 3"] is False
    assert "good answer 2" not in labels and "bad answer 4" not in labels and "good answer 7" not in labels
    records = load_records(str(result.path)).records
    assert {r.kind for r in records} == {"feedback"} and len(records) == len(labels)


def test_sft_export_takes_every_distinct_ideal_answer(log, tmp_path):
    rows = _rows(export_labels(log, "sft", tmp_path / "sft.jsonl").path)
    assert [r["messages"][-1] for r in rows] == [{"role": "assistant", "content": "The ideal answer 6."},
                                                 {"role": "assistant", "content": "Ideal for a skipped task."}]
    assert rows[0]["messages"][0] == {"role": "user", "content": "Question 6: say something nice."}
    assert {r.kind for r in load_records(str(tmp_path / "sft.jsonl")).records} == {"chat"}


def test_exported_files_pass_data_check_and_errors_are_sentences(log, tmp_path, capsys):
    for kind in ("preference", "kto", "sft"):
        out = tmp_path / f"{kind}.jsonl"
        assert main(["label", "export", str(log), "--as", kind, "-o", str(out)]) == 0
        assert main(["data", "check", str(out), "--no-near-dedup"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    assert main(["label", "export", str(log), "--as", "sft", "-o", str(tmp_path / "x.csv")]) == 2
    assert "*.jsonl" in capsys.readouterr().err
    assert main(["label", "export", str(log), "--as", "sft", "-o", str(tmp_path / "y.jsonl"),
                 "--annotator", "zed"]) == 2
    assert "zed: no judgements" in capsys.readouterr().err
    with pytest.raises(WhetstoneError, match="no sft rows to export"):
        export_labels(log, "sft", tmp_path / "none.jsonl", ["cy"])  # cy wrote no ideal answer
    assert not (tmp_path / "none.jsonl").exists()


def test_export_never_writes_over_the_label_log(log, tmp_path, capsys):
    before = log.read_bytes()
    with pytest.raises(WhetstoneError, match="is the input file; label export never modifies its input"):
        export_labels(log, "sft", log, overwrite=True)
    alias = tmp_path / "same.jsonl"
    alias.symlink_to(log)  # another name for the same file
    assert main(["label", "export", str(log), "--as", "sft", "-o", str(alias), "--overwrite"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert log.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_export_replaces_an_existing_file_only_with_overwrite(log, tmp_path, capsys):
    out = tmp_path / "sft.jsonl"
    out.write_text("my hand-written rows\n")
    assert main(["label", "export", str(log), "--as", "sft", "-o", str(out)]) == 2
    assert "sft.jsonl already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "my hand-written rows\n"
    assert main(["label", "export", str(log), "--as", "sft", "-o", str(out), "--overwrite"]) == 0
    assert len(_rows(out)) == 2


def test_exported_preferences_train_a_reward_model(tmp_path, tiny_model_dir):
    """The loop's point: labels -> export -> `whetstone train` with objective reward."""
    store = LabelStore(read_tasks(write_tasks(tmp_path / "tasks.jsonl", n=24)), tmp_path / "labels.jsonl")
    for i in range(24):  # the annotator prefers the "good" answer: a rule the tiny model can learn
        judge_as(store, "ann", f"t{i}", "m0")
    store.close()
    pairs = tmp_path / "pairs.jsonl"
    assert main(["label", "export", str(tmp_path / "labels.jsonl"), "--as", "preference", "-o", str(pairs)]) == 0
    run = tmp_path / "rm"
    assert main(["train", "--quiet", "-o", str(run), "--set", "objective=reward", "--set", f"model={tiny_model_dir}",
                 "--set", f"data.train={pairs}", "--set", "method.name=full", "--set", "train.lr=1e-3",
                 "--set", "train.warmup=0.0", "--set", "train.max_steps=12", "--set", "train.batch_size=8",
                 "--set", "train.log_every=1", "--set", "eval.every=1000"]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 12 and metrics[0]["loss"] == pytest.approx(0.693, abs=0.15)  # -log sigmoid(~0)
    from whetstone.objectives.reward import load_reward_model

    records = load_records(str(pairs)).records
    rm = load_reward_model(run)
    chosen = rm.score([r.messages for r in records], [r.chosen for r in records])
    rejected = rm.score([r.messages for r in records], [r.rejected for r in records])
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(records) >= 0.9
