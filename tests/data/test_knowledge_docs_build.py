"""examples/knowledge_docs/build.py: the document sets of the knowledge-from-documents recipe (docs/knowledge.md).

No torch: the builder reads the standard library and the manual pages with `data synth`'s own readers."""

import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from whetstone.data.synth.chunks import read_chunks
from whetstone.data.synth.extract import TEMPLATES, extract_facts
from whetstone.data.synth.paraphrase import FRAMES

ROOT = Path(__file__).resolve().parents[2]
SETS = ("train_wording.jsonl", "paraphrase.jsonl", "heldout.jsonl", "eval.jsonl")
HAND_WRITTEN = ("paraphrase.jsonl", "heldout.jsonl", "eval.jsonl")


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("knowledge_docs_build", ROOT / "examples/knowledge_docs/build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def qa(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows]


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def synth_wording(question: str) -> bool:
    """Whether `data synth` can ask ``question``: some frame of paraphrase.py around some template of extract.py,
    whatever the subject (and attribute) it fills in."""
    for frame in FRAMES:
        for template in (t for family in TEMPLATES.values() for t in family):
            parts = re.split(r"\{[sa]\}", frame.format(q=template))
            if re.fullmatch(".+".join(re.escape(p) for p in parts), " ".join(question.split()), re.IGNORECASE):
                return True
    return False


def synth_pairs(docs: Path) -> set[tuple[str, str]]:
    """(subject, answer) of every fact the synthesiser's extraction reads off the documents."""
    return {(f.subject, f.answer) for path in sorted(docs.iterdir()) for c in read_chunks(str(path))
            for f in extract_facts(c)}


def test_stdlib_sets_hold_out_facts_no_document_states(build, tmp_path):
    assert build.main(["--kind", "stdlib", "--out", str(tmp_path / "a"), "--limit", "30"]) == 0
    assert build.main(["--kind", "stdlib", "--out", str(tmp_path / "b"), "--limit", "30"]) == 0
    out = tmp_path / "a" / "stdlib"
    assert tree(out) == tree(tmp_path / "b" / "stdlib")  # deterministic, documents included
    assert sorted(p.name for p in (out / "docs").iterdir()) == sorted(f"{m}.md" for m in build.STDLIB_MODULES)

    train_wording, paraphrase, heldout, dev = (qa(out / name) for name in SETS)
    assert len(train_wording) == len(paraphrase) == 30 and len(dev) == 30 and 0 < len(heldout) <= 30
    trained_names = [q.removeprefix("What does ").removesuffix(" do?") for q, _ in train_wording]
    heldout_names = [q.split(" the job that ")[1].split(" performs ")[0] for q, _ in heldout]
    assert not set(trained_names) & set(heldout_names) and not {a for _, a in train_wording} & {a for _, a in heldout}
    assert [a for _, a in train_wording] == [a for _, a in paraphrase] and dev == [
        (build.WORDINGS["stdlib"]["eval"].format(name=n), a) for n, (_, a) in zip(trained_names, train_wording)]

    text = "\n".join(p.read_text(encoding="utf-8") for p in (out / "docs").iterdir())
    for name, (_, answer) in zip(heldout_names, heldout):
        assert not re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text), name
        assert " ".join(answer.split()) not in " ".join(text.split()), name
    # Every trained fact is in the documents as the synthesiser reads them: its name, and the eval's answer verbatim.
    assert {(n, a) for n, (_, a) in zip(trained_names, train_wording)} <= synth_pairs(out / "docs")


def test_stdlib_facts_are_many_split_a_third_held_out_and_new_to_the_knowledge_base(build):
    importlib.import_module("stdlib_qa.build")  # the builder put examples/ on the path
    assert not set(build.STDLIB_MODULES) & set(importlib.import_module("stdlib_qa.build").MODULES)
    facts = build.stdlib_facts()
    trained, heldout = build.split(facts)
    assert 150 <= len(facts) <= 300 and 0.25 <= len(heldout) / len(facts) <= 0.42
    assert len({f.answer for f in facts}) == len(facts) and all(build.one_sentence(f.answer) for f in facts)
    assert build.split(list(reversed(facts))) == (trained, heldout)  # the order depends on the names alone


def test_hand_written_wordings_are_none_the_synthesiser_produces(build):
    for kind, wording in build.WORDINGS.items():
        for name in ("asyncio.sleep", "ls", "git-fetch"):
            assert synth_wording(wording["train_wording"].format(name=name)), (kind, "the check must see these")
            assert not synth_wording(wording["paraphrase"].format(name=name)), (kind, wording["paraphrase"])
            assert not synth_wording(wording["eval"].format(name=name)), (kind, wording["eval"])
        assert len({wording["train_wording"], wording["paraphrase"], wording["eval"]}) == 3
    assert build.WORDINGS["man"]["paraphrase"] != build.WORDINGS["stdlib"]["paraphrase"]


@pytest.mark.parametrize("kind", ["stdlib", "man"])
def test_committed_sets_ask_every_question_in_its_intended_wording(build, kind):
    out = ROOT / "examples/knowledge_docs" / kind
    for name in SETS:
        questions = [q for q, _ in qa(out / name)]
        assert questions and all(synth_wording(q) == (name == "train_wording.jsonl") for q in questions), name


def test_unseen_drops_held_out_facts_a_document_states_or_a_trained_fact_nearly_repeats(build, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "m.md").write_text("# m\n\nm.kept\n    Close the door.\n\nSee also m.named for more.\n\n"
                               "It can open the window.\n")
    trained = [build.Fact("m.kept", "Close the door."), build.Fact("m.other", "Return the length of the queue.")]
    heldout = [build.Fact("m.named", "Paint the fence."), build.Fact("m.window", "open the window."),
               build.Fact("m.near", "Return the length of the given queue."), build.Fact("m.new", "Feed the cat.")]
    assert [f.name for f in build.unseen(heldout, trained, docs, names=True)] == ["m.new"]
    assert [f.name for f in build.unseen(heldout, trained, docs, names=False)] == ["m.named", "m.new"]


def test_man_kind_skips_with_a_sentence_where_there_are_no_pages(build, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "MAN_DIR", tmp_path / "no-man-pages")
    assert build.main(["--kind", "man", "--out", str(tmp_path / "out")]) == 1
    assert f"man: skipped: no section-1 manual pages in {tmp_path / 'no-man-pages'}" in capsys.readouterr().err
    assert build.main(["--out", str(tmp_path / "out"), "--limit", "3"]) == 0  # both kinds: stdlib still builds
    assert "man: skipped" in capsys.readouterr().err
    assert (tmp_path / "out/stdlib/heldout.jsonl").is_file() and not (tmp_path / "out/man").exists()


def test_man_sets_hold_out_pages_and_answer_with_the_name_line(build, tmp_path):
    why = build.man_available()
    if why:
        pytest.skip(f"man kind: {why}")
    assert build.main(["--kind", "man", "--out", str(tmp_path / "a"), "--limit", "8"]) == 0
    assert build.main(["--kind", "man", "--out", str(tmp_path / "b"), "--limit", "8"]) == 0
    out = tmp_path / "a" / "man"
    assert tree(out) == tree(tmp_path / "b" / "man")

    train_wording, paraphrase, heldout, dev = (qa(out / name) for name in SETS)
    assert len(train_wording) == 8 and 0 < len(heldout) <= 8
    trained = [q.removeprefix("What does the ").removesuffix(" command do?") for q, _ in train_wording]
    held = [q.split(" the role of the ")[1].split(" utility ")[0] for q, _ in heldout]
    assert sorted(p.name for p in (out / "docs").iterdir()) == sorted(f"{c}.1" for c in trained)  # one page each
    assert not set(trained) & set(held) and [a for _, a in paraphrase] == [a for _, a in train_wording]
    text = " ".join(c.text.lower() for p in (out / "docs").iterdir() for c in read_chunks(str(p)))
    assert not any(" ".join(a.lower().split()) in " ".join(text.split()) for _, a in heldout)
    # The answer is the page's NAME description, read as `data synth` reads it.
    pairs = synth_pairs(out / "docs")
    assert all((f"the {c} command", a) in pairs for c, (_, a) in zip(trained, train_wording))
    assert all(3 <= len(a.split()) <= 20 for _, a in train_wording + heldout)
