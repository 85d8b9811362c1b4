"""`data.augment: {paraphrase: N}`: the reworded file training reads, its cache (a hit never loads the teacher,
a kill leaves nothing to hit), the run's augment.json, the config's checks, and resume on the reworded data."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from tiny_runs import latest_checkpoint, tiny_config, write_jsonl

from whetstone.config import AUGMENT_MAX_WORDINGS, AugmentConfig, ConfigError, load_config
from whetstone.data import augment
from whetstone.data.augment import augment_dir, augment_for_run, cache_key, teacher_identity
from whetstone.data.synth.paraphrase import FRAMES, MAX_WORDINGS
from whetstone.errors import WhetstoneError
from whetstone.rundir import RunDir
from whetstone.train.dispatch import train


class StubTeacher:
    """Rewords each question once usably ("Could you tell me: Q") and once not ("ok", dropped); counts calls."""

    name = "stub"

    def __init__(self, fail_at_call: int | None = None):
        self.calls, self.fail_at_call = 0, fail_at_call

    def complete(self, conversations, max_tokens):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt  # as Ctrl-C half-way through
        return [f"1. Could you tell me: {c[-1]['content'].split('Question: ', 1)[1]}\n2. ok" for c in conversations]


def _qa_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What does tool{i} count?"},
                          {"role": "assistant", "content": f"tool{i} counts {i} apples."}]} for i in range(n)]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """An empty user cache per test: $WHETSTONE_CACHE."""
    monkeypatch.setenv("WHETSTONE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _teach_with(monkeypatch, teacher) -> list:
    """Make data.augment load ``teacher`` (None: loading any teacher fails the test); returns the specs asked for."""
    asked = []

    def load(spec, url=None, key_env=None, batch_size=8):
        asked.append(spec)
        if teacher is None:
            raise AssertionError("a cache hit must not load the teacher")
        return teacher

    monkeypatch.setattr(augment, "load_teacher", load)
    return asked


def _config(tmp_path, train_file, *overrides):
    return load_config(None, [f"model={tmp_path}", f"data.train={train_file}", *overrides])


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ---------------------------------------------------------------------------
# The config.


def test_the_config_bound_is_the_number_of_template_frames():
    assert AUGMENT_MAX_WORDINGS == MAX_WORDINGS == len(FRAMES)


def test_bad_augment_settings_are_listed_in_one_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=[{path: a.jsonl}, {path: b.jsonl}]", "data.eval_fraction=0.1",
                           "data.format=alpaca", "data.augment={paraphrase: 9, teacher: templates, "
                           "teacher_url: 'http://127.0.0.1:8000/v1'}"])
    problems = info.value.problems
    assert "data.augment.paraphrase: got 9; give the wordings of each question, 2 to 8" in problems[0]
    assert any("data.train is a list of sources; augment rewords one file" in p for p in problems)
    assert any("data.augment with data.eval_fraction 0.1" in p for p in problems)
    assert any("data.augment with data.format 'alpaca'" in p and "set data.format: auto or messages" in p
               for p in problems)
    assert any("teacher 'templates' asks for no model, teacher_url for an endpoint" in p for p in problems)
    assert len(problems) == 5

    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=a.jsonl", "data.augment={paraphrase: 1, teacher_key_env: KEY}"])
    assert info.value.problems == [
        "data.augment.paraphrase: got 1; give the wordings of each question, 2 to 8 (1 is the data as it is: remove "
        "data.augment).",
        "data.augment.teacher_key_env names the key of teacher_url; set teacher_url too."]

    config = load_config(None, ["data.train=a.jsonl", "data.augment={paraphrase: 4}"])
    assert (config.data.augment.paraphrase, config.data.augment.teacher) == (4, None)  # the embedded model


# ---------------------------------------------------------------------------
# The cache, without training.


def test_a_cache_hit_never_loads_the_teacher_and_a_changed_file_or_n_misses(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "qa.jsonl", _qa_rows(3))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    teacher = StubTeacher()
    asked = _teach_with(monkeypatch, teacher)
    config = _config(tmp_path, data, "data.augment={paraphrase: 3, teacher: some/teacher}")
    first = augment_for_run(config, run)
    made = json.loads(run.file(RunDir.AUGMENT).read_text())
    assert (asked, teacher.calls, made["cache_hit"]) == (["some/teacher"], 1, False)

    _teach_with(monkeypatch, None)
    second = augment_for_run(config, run)
    hit = json.loads(run.file(RunDir.AUGMENT).read_text())
    assert hit["cache_hit"] is True and second.data.train == first.data.train == hit["cache"]
    assert {k: v for k, v in hit.items() if k not in ("cache_hit", "seconds")} == \
        {k: v for k, v in made.items() if k not in ("cache_hit", "seconds")}

    asked = _teach_with(monkeypatch, StubTeacher())
    four = augment_for_run(_config(tmp_path, data, "data.augment={paraphrase: 4, teacher: some/teacher}"), run)
    data.write_text(data.read_text().replace("tool0", "tool9"))
    edited = augment_for_run(config, run)
    assert asked == ["some/teacher", "some/teacher"]  # both missed
    assert len({first.data.train, four.data.train, edited.data.train}) == 3
    assert len(_rows(four.data.train)) == 3 * 4
    assert sorted(p.name for p in augment_dir().iterdir()) == sorted(
        f"{Path(c.data.train).stem}{suffix}" for c in (first, four, edited) for suffix in (".json", ".jsonl"))


def test_a_run_killed_while_rewording_leaves_nothing_a_later_run_would_take_for_the_cache(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "qa.jsonl", _qa_rows(20))  # three teacher calls of 8 questions
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    config = _config(tmp_path, data, "data.augment={paraphrase: 2, teacher: some/teacher}")
    _teach_with(monkeypatch, StubTeacher(fail_at_call=2))
    with pytest.raises(KeyboardInterrupt):
        augment_for_run(config, run)
    assert list(augment_dir().iterdir()) == []  # the first batch's rows were written, then removed
    assert not run.file(RunDir.AUGMENT).exists()

    teacher = StubTeacher()
    _teach_with(monkeypatch, teacher)
    augment_for_run(config, run)
    assert teacher.calls == 3 and json.loads(run.file(RunDir.AUGMENT).read_text())["records_out"] == 40


def test_the_teacher_identity_follows_the_files_of_a_local_model_and_a_run(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x" * 10)
    spec = AugmentConfig(teacher=str(model))
    before = teacher_identity(spec)
    (model / "model.safetensors").write_bytes(b"y" * 11)  # a fine-tune saved over it
    assert teacher_identity(spec) != before and teacher_identity(spec).startswith("model directory ")

    run = RunDir(tmp_path / "run")
    run.adapter_dir.mkdir(parents=True)
    run.config_path.write_text("model: x\n")
    (run.adapter_dir / "adapter_config.json").write_text("{}")
    (run.adapter_dir / "adapter_model.safetensors").write_bytes(b"a")
    spec = AugmentConfig(teacher=str(run.path))
    before = teacher_identity(spec)
    (run.adapter_dir / "adapter_model.safetensors").write_bytes(b"ab")  # the run trained on
    assert teacher_identity(spec) != before and teacher_identity(spec).startswith("run ")

    assert teacher_identity(AugmentConfig(teacher="templates")) == "templates"
    assert teacher_identity(AugmentConfig()).startswith("embedded smollm2-135m-instruct")
    url = AugmentConfig(teacher="m", teacher_url="http://h:1/v1/")
    assert teacher_identity(url) == "endpoint http://h:1/v1 model m"
    data = write_jsonl(tmp_path / "qa.jsonl", _qa_rows(1))
    keys = {cache_key(data, n, who) for n in (2, 3) for who in ("templates", "endpoint x")}
    assert len(keys) == 4 and all(len(k) == 64 for k in keys)


def test_several_processes_read_the_cache_but_do_not_make_it(tmp_path):
    data = write_jsonl(tmp_path / "qa.jsonl", _qa_rows(2))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    config = _config(tmp_path, data, "data.augment={paraphrase: 2, teacher: templates}")
    with pytest.raises(WhetstoneError, match=r"data.augment: the reworded .*qa.jsonl is not in the cache .* of "
                                             r"process 1, and only one process makes it. Start this config once on "
                                             r"one process"):
        augment_for_run(config, run, rank=1, world_size=2)
    made = augment_for_run(config, run)  # one process
    run.file(RunDir.AUGMENT).unlink()
    assert augment_for_run(config, run, rank=1, world_size=2).data.train == made.data.train
    assert not run.file(RunDir.AUGMENT).exists()  # only the main process writes it


def test_data_without_a_question_and_answer_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": "Plain prose, no question."}] * 3)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    config = _config(tmp_path, data, "data.augment={paraphrase: 2, teacher: templates}")
    with pytest.raises(WhetstoneError, match=r"data.augment: none of the 3 records of .*text.jsonl is one question "
                                             r"and its answer"):
        augment_for_run(config, run)
    assert list(augment_dir().iterdir()) == []
    with pytest.raises(WhetstoneError, match=r"data.train .*missing.jsonl: no such file"):
        augment_for_run(_config(tmp_path, tmp_path / "missing.jsonl", "data.augment={paraphrase: 2}"), run)


# ---------------------------------------------------------------------------
# Training on it.


def test_a_run_trains_on_every_wording_and_reports_it(tmp_path, tiny_model_dir, monkeypatch, capsys):
    rows = _qa_rows(4) + [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye"}]}]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    teacher = StubTeacher()
    _teach_with(monkeypatch, teacher)
    run = tmp_path / "run"
    summary = train(tiny_config(tiny_model_dir, data, "train.max_steps=2", "train.batch_size=4",
                                f"data.augment={{paraphrase: 3, teacher: {tiny_model_dir}}}"), run, progress=False)
    report = json.loads((run / "augment.json").read_text())
    cached = Path(report["cache"])
    assert report == {"source": str(data), "paraphrase": 3, "teacher": "stub", "cache": str(cached),
                      "cache_hit": False, "records_in": 5, "records_out": 12, "skipped": 1,
                      "wordings": {"original": 4, "teacher": 4, "template": 4}, "teacher_lines_dropped": 4,
                      "paraphrase_s": report["paraphrase_s"], "seconds": report["seconds"]}
    key = cache_key(data, 3, teacher_identity(AugmentConfig(paraphrase=3, teacher=str(tiny_model_dir))))
    assert cached == augment_dir() / f"{key}.jsonl"
    assert summary["data"]["records"] == 12  # what the loop trained on: 4 questions x 3 wordings, not the 5 rows
    wordings = [(r["paraphrase"]["of"], r["messages"][0]["content"], r["messages"][1]["content"])
                for r in _rows(cached)]
    first = f"{data}:1"  # the origin of the file's first record
    assert wordings[:3] == [(first, "What does tool0 count?", "tool0 counts 0 apples."),
                            (first, "Could you tell me: What does tool0 count?", "tool0 counts 0 apples."),
                            (first, "Question: What does tool0 count?", "tool0 counts 0 apples.")]
    assert [r["paraphrase"]["origin"] for r in _rows(cached)] == ["original", "teacher", "template"] * 4
    out = capsys.readouterr().out
    assert re.search(re.escape(f"augment: {data}: 4 questions x 3 wordings -> 12 records (teacher stub: 4 wordings, "
                               f"template 4, 4 teacher lines dropped; left out 1 not one question and answer); "
                               f"reworded in ") + r"\d+\.\d s: " + re.escape(f"{cached}\n"), out)
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())["train_state"]
    assert state["fingerprint"]["data"] == {f"data file {cached}": hashlib.sha256(cached.read_bytes()).hexdigest()}
    assert (run / "config.yaml").read_text().count(f"train: {data}") == 1  # the user's config, as written


def test_resume_trains_on_the_same_reworded_data_and_refuses_other_wordings(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "qa.jsonl", _qa_rows(6))
    run = tmp_path / "run"
    config = tiny_config(tiny_model_dir, data, "train.max_steps=3", "train.batch_size=4", "train.checkpoint_every=1",
                         "data.augment={paraphrase: 2, teacher: templates}")
    stopped = train(config, run, progress=False, on_step=lambda step, row: step == 1)
    assert stopped["stopped_early"] and stopped["steps"] == 1
    resumed = train(None, run, resume=True, progress=False)
    assert resumed["steps"] == 3 and resumed["data"]["records"] == 12
    assert json.loads((run / "augment.json").read_text())["cache_hit"] is True

    # The same key, other rows (as a teacher that answers differently when the cache is made again): refused.
    cached = Path(json.loads((run / "augment.json").read_text())["cache"])
    cached.write_text(cached.read_text().replace("Question: ", "Q: "))
    with pytest.raises(WhetstoneError, match=rf"the training data changed since step-0000003 was written: data file "
                                             rf"{cached} \(sha256 \w{{12}} -> sha256 \w{{12}}\)"):
        train(None, run, resume=True, progress=False)
