"""`whetstone data synth` and `data paraphrase`: chunks with line spans, the extraction floor, the measured
grounding threshold, resuming, the three kinds of teacher, and the CLI."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import statistics
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from whetstone.cli import main
from whetstone.data.synth.chunks import read_chunks
from whetstone.data.synth.extract import Fact, extract_facts, wordings
from whetstone.data.synth.grounding import THRESHOLD, content_words, support
from whetstone.data.synth.paraphrase import paraphrase_file
from whetstone.data.synth.synth import SynthOptions, state_path, synthesize
from whetstone.data.synth.teacher import EndpointTeacher, load_teacher, parse_paraphrases, parse_qa
from whetstone.errors import WhetstoneError

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "examples" / "knowledge_base" / "docs.jsonl"
LS_PAGE = Path("/usr/share/man/man1/ls.1.gz")

MARKDOWN = """# Tool

Intro paragraph.

## Install

Run pip.
It works.

```sh
# not a heading
```
"""
HTML = """<html><head><title>Widget guide</title></head>
<body>
<h1>Widgets</h1>
<p>A widget is a small part
of a machine.</p>
<table>
<tr><th>Name</th><th>Colour</th></tr>
<tr><td>Gear</td><td>grey</td></tr>
</table>
<h2>Use</h2>
<dl><dt>spin</dt><dd>Turns the gear.</dd></dl>
</body></html>
"""
ROFF = r""".\" comment
.TH FROB 1 "2024" "frob 1.0" "User Commands"
.SH NAME
frob \- twiddle the \fBknobs\fR
.SH DESCRIPTION
.B frob
turns knobs.
.TP
.BR \-v ", " \-\-verbose
print each knob
.PP
Knobs are \(lqfun\(rq.
"""


def spans(path, **kwargs):
    return [(c.heading, c.line_start, c.line_end, c.text) for c in read_chunks(str(path), **kwargs)]


# ---------------------------------------------------------------------------
# Chunking.


def test_markdown_is_cut_at_headings_and_code_fences_hide_them(write):
    path = write("tool.md", MARKDOWN)
    assert spans(path) == [
        ("Tool", 3, 3, "Intro paragraph."),
        ("Tool > Install", 7, 12, "Run pip.\nIt works.\n\n```sh\n# not a heading\n```"),
    ]
    assert {c.title for c in read_chunks(path)} == {"Tool"}


def test_text_is_cut_into_paragraphs_packed_up_to_max_chars(write):
    path = write("notes.txt", "A b c.\nD e.\n\n\nSecond para.\n")
    assert spans(path) == [("", 1, 5, "A b c.\nD e.\n\nSecond para.")]
    assert spans(path, max_chars=10) == [("", 1, 2, "A b c.\nD e."), ("", 5, 5, "Second para.")]


def test_html_blocks_headings_tables_and_definition_lists(write):
    path = write("widgets.html", HTML)
    assert spans(path) == [
        ("Widgets", 4, 8, "A widget is a small part of a machine.\n\n| Name | Colour |\n| Gear | grey |"),
        ("Widgets > Use", 11, 11, "spin\n    Turns the gear."),
    ]
    assert {c.title for c in read_chunks(path)} == {"Widget guide"}


def test_jsonl_text_fields_span_their_record_line(write):
    rows = [{"text": "First doc.\n\nMore of it."}, {"other": 1}, {"text": "# H\n\nPara."}]
    path = write("docs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert spans(path) == [("", 1, 1, "First doc.\n\nMore of it."), ("H", 3, 3, "Para.")]
    with pytest.raises(WhetstoneError, match="no record with a text field 'body'"):
        spans(path, text_field="body")


def test_a_roff_manual_page_is_read_without_man(write):
    path = write("frob.1.gz", gzip.compress(ROFF.encode()))
    assert spans(path) == [
        ("NAME", 4, 4, "frob - twiddle the knobs"),
        ("DESCRIPTION", 6, 12, 'frob\nturns knobs.\n\n-v, --verbose\n    print each knob\n\nKnobs are "fun".'),
    ]
    assert {c.title for c in read_chunks(path)} == {"frob(1)"}


ASCIIDOCTOR_ROFF = r"""'\" t
.TH "FRO\-OB" "1" "2022-05-11" "util\-linux 2.38.1" "User Commands"
.de URL
\fI\\$2\fP <\\$1>\\$3
..
.if \n[.g] \{\
.  am URL
.    ad l
.  .
.\}
.SH "NAME"
fro-ob \- display and adjust the knobs
.SH "OPTIONS"
.sp
\fB\-p\fP, \fB\-\-pid\fP \fIpid\fP
.RS 4
Specifies the process.
.RE
.sp
.IP \(bu 2
Knobs turn.
"""


def test_asciidoctor_pages_blocks_ending_in_dot_space_dot_indented_bodies_and_bullets(write):
    """Asciidoctor's pages (util-linux) end `.am` blocks with ".  .", indent item bodies with .RS/.RE, and mark
    bullets `.IP \\(bu`; an argument's escapes reach unescape(), so the bullet is a bullet, not "(bu"."""
    path = write("fro-ob.1", ASCIIDOCTOR_ROFF)
    assert spans(path) == [
        ("NAME", 12, 12, "fro-ob - display and adjust the knobs"),
        ("OPTIONS", 15, 21, "-p, --pid pid\n    Specifies the process.\n\n\u2022\n    Knobs turn."),
    ]
    assert {c.title for c in read_chunks(path)} == {"fro-ob(1)"}
    facts = [f for c in read_chunks(path) for f in extract_facts(c)]
    assert facts == [Fact("what_does", "the fro-ob command", "display and adjust the knobs", rule="name"),
                     Fact("what_does", "the -p, --pid pid option of fro-ob", "Specifies the process.",
                          rule="definition")]


@pytest.mark.skipif(not LS_PAGE.exists(), reason="no ls(1) page on this machine")
def test_the_installed_ls_page():
    chunks = list(read_chunks(str(LS_PAGE)))
    assert (chunks[0].heading, chunks[0].text, chunks[0].title) == ("NAME", "ls - list directory contents", "ls(1)")
    facts = [f for c in chunks for f in extract_facts(c)]
    assert Fact("what_does", "the ls command", "list directory contents", rule="name") in facts
    assert Fact("what_does", "the -a, --all option of ls", "do not ignore entries starting with .",
                rule="definition") in facts


@pytest.mark.skipif(not LS_PAGE.exists() or not shutil.which("man") or not shutil.which("col"),
                    reason="needs man, col and the ls(1) page")
def test_a_page_rendered_by_man_reads_as_the_roff_does(tmp_path):
    rendered = subprocess.run(f"man -l {LS_PAGE} | col -b", shell=True, capture_output=True, text=True, check=True,
                              env={**os.environ, "MANWIDTH": "80"}).stdout
    path = tmp_path / "ls.txt"
    path.write_text(rendered)
    chunks = list(read_chunks(str(path)))
    assert (chunks[0].heading, chunks[0].text) == ("NAME", "ls - list directory contents")
    facts = {(f.subject, f.answer) for c in chunks for f in extract_facts(c)}
    assert ("the ls command", "list directory contents") in facts
    assert ("the -a, --all option of ls", "do not ignore entries starting with .") in facts


# ---------------------------------------------------------------------------
# Extraction.


def test_extraction_finds_each_shape_and_answers_verbatim(write):
    text = ("base64.b64encode\n    Encode the bytes-like object s\n    using Base64.\n\n"
            "| Option | Default |\n|---|---|\n| jobs | 4 |\n\n"
            "Cache: a folder of downloaded files.\n"
            "The pager is the program that shows text. It waits for a key. "
            "The reader returns one line at a time.")
    chunk = next(read_chunks(write("api.md", f"# API\n\n{text}\n")))
    assert extract_facts(chunk) == [
        Fact("what_does", "base64.b64encode", "Encode the bytes-like object s using Base64.", rule="definition"),
        Fact("attribute", "jobs", "4", attribute="default", rule="table"),
        Fact("what_is", "Cache", "a folder of downloaded files.", rule="colon"),
        Fact("what_is", "the pager", "The pager is the program that shows text.", rule="sentence"),
        Fact("what_does", "the reader", "The reader returns one line at a time.", rule="sentence"),
    ]
    frob = list(read_chunks(write("frob.1", ROFF)))
    assert [extract_facts(c) for c in frob] == [
        [Fact("what_does", "the frob command", "twiddle the knobs", rule="name")],
        [Fact("what_does", "frob", "frob turns knobs.", rule="sentence"),
         Fact("what_does", "the -v, --verbose option of frob", "print each knob", rule="definition")],
    ]


def test_extraction_skips_what_the_stdlib_audit_found_wrong(write):
    """examples/knowledge_docs/stdlib/synth_audit.md: a docstring opening with its signature, passive "is"
    sentences, and a capitalised word taken for a subject; and the "name() -- description" lines it missed."""
    text = ("gc.set_threshold\n    set_threshold(threshold0, [threshold1]) -> None\n\n"
            "    Sets the collection thresholds.\n\n"
            "enable() -- Enable automatic garbage collection.\n\n"
            "The value -2 is returned if capname is absent. Echoing of input characters is turned off. "
            "Subsequent calls to reset_prog_mode() will restore this mode. The key is used to sign requests. "
            "Importing this module enables line editing.")
    chunk = next(read_chunks(write("gc.md", f"# gc\n\n{text}\n")))
    assert extract_facts(chunk) == [
        Fact("what_does", "gc.set_threshold", "Sets the collection thresholds.", rule="definition"),
        Fact("what_does", "enable()", "Enable automatic garbage collection.", rule="dash"),
        Fact("what_is", "the key", "The key is used to sign requests.", rule="sentence"),
        Fact("what_does", "Importing this module", "Importing this module enables line editing.", rule="sentence"),
    ]


def test_template_wordings():
    fact = Fact("attribute", "jobs", "4", attribute="default")
    assert wordings(fact, 3) == ["What is the default of jobs?", "Give the default of jobs.",
                                 "For jobs, what is the default?"]
    assert wordings(Fact("what_does", "ls", "x"), 2) == ["What does ls do?", "What is ls used for?"]


# ---------------------------------------------------------------------------
# Grounding.


def test_the_measured_threshold_separates_right_answers_from_moved_ones():
    """The measurement behind grounding.THRESHOLD: extraction answers in their own chunk against the same answers
    in every other chunk of the knowledge-base documents."""
    chunks = list(read_chunks(str(DOCS)))
    facts = [(i, f) for i, c in enumerate(chunks) for f in extract_facts(c)]
    right = [support(f.answer, chunks[i].text) for i, f in facts]
    wrong = sorted(support(f.answer, chunks[j].text) for i, f in facts for j in range(len(chunks)) if j != i)
    assert (len(chunks), len(facts), len(wrong)) == (70, 214, 14766)
    assert min(right) == 1.0
    assert statistics.median(wrong) == 0.125 and wrong[int(0.99 * len(wrong))] == 0.625
    passing = {t: sum(w >= t for w in wrong) for t in (0.7, 0.8, 0.9)}
    assert passing == {0.7: 84, 0.8: 38, 0.9: 12}
    assert THRESHOLD == 0.8  # the lowest of these that lets fewer than 0.5% of the wrong pairs through
    assert passing[0.7] / len(wrong) > 0.005 > passing[0.8] / len(wrong)


def test_grounding_keeps_supported_answers_and_drops_the_rest():
    chunk = "The pager displays one screen of text at a time."
    assert content_words("Displays one screen at a time!") == ["display", "screen", "time"]
    assert support("It displays one screen at a time.", chunk) == 1.0
    assert support("Shows one page at a time.", chunk) == pytest.approx(1 / 3)  # show, page: not in the chunk
    assert support("Compresses files with gzip.", chunk) == 0.0
    assert support("Yes.", chunk) == 0.0  # no content word: never supported
    assert support("The pager displays text screens.", chunk) == 1.0  # screens -> screen


# ---------------------------------------------------------------------------
# The pipeline with a stub teacher.


class StubTeacher:
    """Answers the question prompt with the passage's first line, and rewords with two fixed frames."""

    name = "stub"

    def __init__(self, fail_at: int | None = None):
        self.fail_at, self.asked, self.reworded = fail_at, [], 0

    def complete(self, conversations, max_tokens):
        out = []
        for messages in conversations:
            prompt = messages[-1]["content"]
            if prompt.startswith("Rewrite this question"):
                self.reworded += 1
                question = prompt.split("Question: ", 1)[1]
                out.append(f"1. Could you tell me: {question}\n2. {question}\n3. ok")
                continue
            passage = prompt.split(":\n\n", 1)[1].split("\n\nWrite one question", 1)[0]
            self.asked.append(passage)
            if len(self.asked) == self.fail_at:
                raise RuntimeError("the teacher died")
            first = passage.splitlines()[0]
            out.append(f"Question: Tell me about {' '.join(first.split()[:4])}?\nAnswer: {first}")
        return out


def three_documents(tmp_path) -> list[str]:
    texts = {"a.md": "# Alpha\n\nThe alpha tool counts apples in baskets.\n",
             "b.txt": "Beta: a service that sorts letters by weight.\n",
             "c.md": "# Gamma\n\nThe gamma lamp is the light that burns green oil.\n"}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    return [str(tmp_path / name) for name in texts]


def lines_of(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_a_killed_run_resumes_without_redoing_finished_chunks(tmp_path):
    docs, out = three_documents(tmp_path), tmp_path / "out.jsonl"
    options = SynthOptions(wordings=3, batch_size=1)
    dying = StubTeacher(fail_at=2)
    with pytest.raises(RuntimeError, match="the teacher died"):
        synthesize(docs, str(out), dying, options, progress=False)
    first = lines_of(out)
    assert {r["source"]["file"] for r in first} == {docs[0]}
    with out.open("a") as handle:  # the half-written line of a chunk the kill interrupted
        handle.write('{"messages": [{"role": "user", "con')
    again = StubTeacher()
    report = synthesize(docs, str(out), again, options, progress=False)
    assert (report.chunks, report.resumed, report.processed) == (3, 1, 2)
    assert len(again.asked) == 2 and not any("alpha" in p for p in again.asked)  # chunk 1 not regenerated
    records = lines_of(out)
    assert records[: len(first)] == first
    keys = [(r["source"]["chunk"], r["source"]["origin"], r["messages"][1]["content"], r["source"]["wording"])
            for r in records]
    assert len(keys) == len(set(keys))
    assert [r["source"]["file"] for r in records] == [docs[0]] * 6 + [docs[1]] * 6 + [docs[2]] * 6
    # A resumed run writes what an uninterrupted one writes, and counts the same.
    whole = synthesize(docs, str(tmp_path / "whole.jsonl"), StubTeacher(), options, progress=False)
    assert lines_of(tmp_path / "whole.jsonl") == records
    assert whole.counts == report.counts
    assert dict(report.counts) == {"fact_bearing": 3, "teacher_calls": 3, "with_pair": 3, "pairs_extraction": 3,
                                   "pairs_teacher": 3, "wordings_template": 9, "wordings_teacher": 3,
                                   "paraphrase_lines_dropped": 6, "records": 18}
    # A finished output: a rerun asks the teacher nothing.
    idle = StubTeacher()
    assert synthesize(docs, str(out), idle, options, progress=False).processed == 0 and idle.asked == []
    with pytest.raises(WhetstoneError, match=r"other options \(wordings 3 -> 2\)"):
        synthesize(docs, str(out), StubTeacher(), SynthOptions(wordings=2, batch_size=1), progress=False)
    state_path(out).unlink()
    with pytest.raises(WhetstoneError, match="already exists; pass --overwrite"):
        synthesize(docs, str(out), StubTeacher(), options, progress=False)


def test_a_question_an_earlier_section_asked_is_not_asked_again_even_after_a_resume(tmp_path):
    boilerplate = "License GPLv3+: GNU GPL version 3 or later, free software.\n"
    docs = []
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.txt").write_text(f"The {name}x tool counts {name} apples in baskets.\n\n\n"
                                              + boilerplate)
        docs.append(str(tmp_path / f"{name}.txt"))
    out, options = tmp_path / "o.jsonl", SynthOptions(wordings=2, max_chars=60)
    synthesize(docs, str(out), None, dataclasses.replace(options, limit=3), progress=False)  # stopped part-way
    report = synthesize(docs, str(out), None, options, progress=False)  # goes on from chunk 4
    assert (report.resumed, report.processed) == (3, 3)
    questions = [r["messages"][0]["content"] for r in lines_of(out) if r["source"]["wording"] == 0]
    assert questions == ["What does the ax tool do?", "What is License GPLv3+?", "What does the bx tool do?",
                         "What does the cx tool do?"]
    assert (report.counts["pairs_extraction"], report.counts["dropped_repeated"]) == (4, 2)
    assert "2 extracted questions an earlier section already asked" in report.render(str(out))
    whole = synthesize(docs, str(tmp_path / "whole.jsonl"), None, options, progress=False)
    assert lines_of(tmp_path / "whole.jsonl") == lines_of(out) and whole.counts == report.counts


def test_records_carry_provenance_and_teacher_pairs_are_checked(tmp_path):
    docs = three_documents(tmp_path)
    synthesize(docs, str(tmp_path / "o.jsonl"), StubTeacher(), SynthOptions(wordings=2), progress=False)
    by_origin = {}
    for r in lines_of(tmp_path / "o.jsonl"):
        by_origin.setdefault(r["source"]["origin"], []).append(r)
    first = by_origin["extraction"][0]
    assert first["messages"] == [{"role": "user", "content": "What does the alpha tool do?"},
                                 {"role": "assistant", "content": "The alpha tool counts apples in baskets."}]
    assert first["source"] | {"chunk": None} == {"file": docs[0], "lines": [3, 3], "chunk": None, "heading": "Alpha",
                                                 "origin": "extraction", "wording": 0, "support": 1.0,
                                                 "rule": "sentence"}
    questions = [r["messages"][0]["content"] for r in by_origin["teacher"] if r["source"]["file"] == docs[0]]
    assert questions == ["Tell me about The alpha tool counts?", "Could you tell me: Tell me about The alpha tool "
                         "counts?"]


class BadTeacher(StubTeacher):
    """A wrong answer, an off-topic question, and a reply in no form, in turn."""

    def complete(self, conversations, max_tokens):
        replies = ["Question: Tell me about the alpha tool?\nAnswer: It paints the sky purple.",
                   "Question: What is the capital of France?\nAnswer: a service that sorts letters by weight",
                   "I cannot help with that."]
        return [replies[i % 3] for i in range(len(conversations))]


def test_ungrounded_off_topic_and_malformed_teacher_pairs_are_dropped_and_counted(tmp_path):
    report = synthesize(three_documents(tmp_path), str(tmp_path / "o.jsonl"), BadTeacher(), SynthOptions(),
                        progress=False)
    c = report.counts
    assert (c["dropped_ungrounded"], c["dropped_off_topic"], c["dropped_malformed"]) == (1, 1, 1)
    assert (c["pairs_teacher"], c["pairs_extraction"], c["with_pair"]) == (0, 3, 3)
    assert {r["source"]["origin"] for r in lines_of(tmp_path / "o.jsonl")} == {"extraction"}
    assert report.grounded_share == pytest.approx(3 / 5)


# ---------------------------------------------------------------------------
# Teachers.


def test_teacher_replies_are_parsed_or_refused():
    assert parse_qa("**Question:** What does ls do?\n**Answer:** It lists files.\n\nQuestion: more") == (
        "What does ls do?", "It lists files.")
    assert parse_qa("Question: How to use os.rename?\nAnswer: Question: How to use os.rename?") is None  # echoed
    assert parse_qa("Sure! Here is a question about ls.") is None
    kept, dropped = parse_paraphrases("1. What is `ls` for?\n2. What does it do?\n3) What does `ls` do?\n- Why",
                                      "What does `ls` do?")
    assert (kept, dropped) == (["What is `ls` for?"], 3)  # no name; the question itself; too short


class _Stub(BaseHTTPRequestHandler):
    seen: list = []

    def _send(self, payload):
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "stub-model", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers.get("Authorization"), body))
        text = "Question: Tell me about the alpha tool?\nAnswer: The alpha tool counts apples."
        self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    _Stub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    thread.join()
    server.server_close()


def test_the_endpoint_teacher_posts_chat_completions_with_the_key(stub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "s3cret")
    teacher = load_teacher(None, stub_server, "STUB_KEY")
    assert isinstance(teacher, EndpointTeacher) and teacher.model == "stub-model"
    report = synthesize(three_documents(tmp_path)[:1], str(tmp_path / "o.jsonl"), teacher, SynthOptions(wordings=2),
                        progress=False)
    assert report.counts["pairs_teacher"] == 1
    path, auth, body = _Stub.seen[0]
    assert (path, auth, body["model"], body["temperature"]) == ("/v1/chat/completions", "Bearer s3cret",
                                                                 "stub-model", 0)
    assert "The alpha tool counts apples in baskets." in body["messages"][0]["content"]
    monkeypatch.delenv("STUB_KEY")
    with pytest.raises(WhetstoneError, match="STUB_KEY: that environment variable is not set"):
        load_teacher(None, stub_server, "STUB_KEY")
    with pytest.raises(WhetstoneError, match="cannot reach it"):
        EndpointTeacher("http://127.0.0.1:9/v1", "m", timeout_s=2).complete([[{"role": "user", "content": "x"}]], 4)


def test_the_local_teacher_on_a_tiny_model_runs_the_pipeline(tiny_model_dir, tmp_path):
    teacher = load_teacher(str(tiny_model_dir))
    report = synthesize(three_documents(tmp_path), str(tmp_path / "o.jsonl"), teacher, SynthOptions(wordings=2),
                        progress=False)
    c = report.counts
    assert c["teacher_calls"] == c["fact_bearing"] == 3 and c["pairs_extraction"] == 3
    teacher_outcomes = (c["pairs_teacher"] + c["dropped_malformed"] + c["dropped_ungrounded"]
                        + c["dropped_off_topic"] + c["dropped_duplicate"])
    assert teacher_outcomes == 3  # a random model: each reply is kept or dropped for a counted reason
    assert c["records"] == 2 * (c["pairs_extraction"] + c["pairs_teacher"]) == len(lines_of(tmp_path / "o.jsonl"))


# ---------------------------------------------------------------------------
# data paraphrase.


def test_paraphrase_writes_n_wordings_with_the_answer_unchanged(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"What does `tool{i}` do?"},
                          {"role": "assistant", "content": f"It does thing {i}."}], "task": "qa"} for i in range(3)]
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
                              {"role": "user", "content": "more"}, {"role": "assistant", "content": "b"}]})
    source = tmp_path / "qa.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = StubTeacher()
    report = paraphrase_file(str(source), str(tmp_path / "p.jsonl"), 4, teacher)
    out = lines_of(tmp_path / "p.jsonl")
    assert (report.records_out, report.skipped, teacher.reworded) == (12, 1, 3)
    for i in range(3):
        mine = out[4 * i: 4 * i + 4]
        assert [r["messages"][0]["content"] for r in mine] == [
            f"What does `tool{i}` do?", f"Could you tell me: What does `tool{i}` do?",
            f"Question: What does `tool{i}` do?", f"I'd like to know: What does `tool{i}` do?"]
        assert {r["messages"][1]["content"] for r in mine} == {f"It does thing {i}."}
        assert [r["paraphrase"] for r in mine] == [{"of": f"{source}:{i + 1}", "wording": k, "origin": o}
                                                   for k, o in enumerate(("original", "teacher", "template",
                                                                          "template"))]
        assert {r["task"] for r in mine} == {"qa"}


# ---------------------------------------------------------------------------
# The CLI.


def test_cli_synth_end_to_end_with_a_data_check(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    for path in three_documents(tmp_path):
        shutil.move(path, folder)
    (folder / "frob.1").write_text(ROFF)
    (folder / ".hidden.md").write_text("The hidden file is never read.\n")
    out = tmp_path / "qa.jsonl"
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"messages": [{"role": "user", "content": "What does the alpha tool do?"}, {
        "role": "assistant", "content": "The alpha tool counts apples in baskets."}]}) + "\n")
    code = main(["data", "synth", str(folder), "-o", str(out), "--teacher", "none", "--wordings", "2",
                 "--eval", str(eval_file)])
    printed = capsys.readouterr().out
    assert "5 chunks from 4 documents" in printed and "6 from extraction, 0 from the teacher (none)" in printed
    assert "train/eval overlap with" in printed and "1 exact" in printed
    assert code == 1  # the eval leak is an error, as in `data check`
    records = lines_of(out)
    assert len(records) == 12 and {Path(r["source"]["file"]).name for r in records} == {"a.md", "b.txt", "c.md",
                                                                                       "frob.1"}


def test_cli_bad_input_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "a.md").write_text("# A\n\nThe alpha tool counts apples.\n")
    cases = [
        (["data", "synth", str(tmp_path / "missing.md"), "-o", str(tmp_path / "o.jsonl")], "missing.md does not exist"),
        (["data", "synth", str(tmp_path / "a.md"), "-o", str(tmp_path / "o.jsonl"), "--wordings", "0"],
         "--wordings must be between 1 and 8"),
        (["data", "synth", str(tmp_path / "a.md"), "-o", str(tmp_path / "o.csv")], "write to a .jsonl file"),
        (["data", "paraphrase", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "p.jsonl")], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("error:") == 1
