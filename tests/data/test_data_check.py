"""`data check`: planted problems, duplicates, leaks and PII are found with exact counts and lines."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from datafiles import chat, jsonl_bytes, write_rows

from whetstone.data.check import check_file, count_tokens
from whetstone.data.records import Message, Record

VOCAB = [f"word{i}" for i in range(3000)]


def planted_rows() -> list[dict]:
    """60 chat rows (line = index + 1) with known duplicates, PII and bad records."""
    rng = random.Random(0)
    rows = [chat(" ".join(rng.choice(VOCAB) for _ in range(40)), f"answer {i}") for i in range(60)]
    rows[9] = rows[2]  # line 10 = line 3, exact
    rows[30] = rows[2]  # line 31 = line 3, exact
    near = rows[5]["messages"][0]["content"].rsplit(" ", 1)[0] + " CHANGED"
    rows[20] = chat(near, "answer 5")  # line 21 ~ line 6
    rows[11]["messages"][0]["content"] += " mail me at ann.lee@example.org"  # line 12: EMAIL
    rows[40]["messages"][1]["content"] = "call +1 415 555 0100 or ann@x.io"  # line 41: PHONE, EMAIL
    rows[50]["messages"][0]["content"] = "my key is ghp_abcdefghijklmnopqrstuvwxyz0123456789"  # line 51: SECRET
    rows[14] = {"messages": [{"role": "user", "content": "q"}]}  # line 15: no assistant turn
    rows[44] = {"messages": "oops"}  # line 45: wrong type
    return rows


@pytest.fixture
def planted(tmp_path) -> Path:
    return write_rows(tmp_path / "train.jsonl", planted_rows())


def test_planted_findings_have_exact_counts_and_lines(planted):
    report = check_file(str(planted))
    assert (report.rows, report.valid) == (60, 58)
    assert [(p.origin, p.field) for p in report.problems] == [
        (f"{planted}:15", "messages"),
        (f"{planted}:45", "messages"),
    ]
    assert report.exact_duplicates == [[3, 10, 31]]
    assert report.near_duplicates == [[6, 21]]
    assert {k: (s.count, s.lines) for k, s in report.pii.items()} == {
        "EMAIL": (2, [12, 41]),
        "PHONE": (1, [41]),
        "SECRET": (1, [51]),
    }
    assert report.pii["EMAIL"].previews == ["an***@***.org", "an***@***.io"]
    assert report.kinds == {"chat": 58}
    assert report.has_errors  # the two bad records
    assert report.warnings == 2 + 1 + 4  # redundant exact copies, near copies, PII findings


def test_clean_file_has_no_errors_unless_strict(tmp_path):
    rows = [chat(f"question {i}", f"answer {i}") for i in range(5)] + [chat("question 0", "answer 0")]
    path = write_rows(tmp_path / "d.jsonl", rows)
    assert check_file(str(path)).has_errors is False
    assert check_file(str(path), strict=True).has_errors is True
    assert check_file(str(path), near_dedup=False).near_duplicates is None


def test_train_eval_overlap_exact_and_near(tmp_path, planted):
    rows = planted_rows()
    eval_rows = [
        rows[3],  # exact copy of train line 4
        chat(rows[7]["messages"][0]["content"].rsplit(" ", 1)[0] + " EDITED", "answer 7"),  # near train line 8
        chat("an unrelated question", "an unrelated answer"),
        rows[2],  # exact copy of train line 3 (which has copies on lines 10 and 31)
    ]
    eval_path = write_rows(tmp_path / "eval.jsonl", eval_rows)
    report = check_file(str(planted), eval_path=str(eval_path))
    assert report.overlap_exact == [(1, 4), (4, 3)]
    assert report.overlap_near == [(2, [8])]
    assert report.leaks == 3


def test_labels_and_tasks_are_counted(tmp_path):
    rows = [{"text": f"t{i}", "label": "pos" if i % 3 else "neg", "task": "sentiment"} for i in range(9)]
    report = check_file(str(write_rows(tmp_path / "d.jsonl", rows)))
    assert report.labels == {"pos": 6, "neg": 3}
    assert report.tasks == {"sentiment": 9}
    assert "labels: pos 6 (66.7%), neg 3 (33.3%)" in report.render()


def test_report_dict_is_json_and_complete(planted):
    data = json.loads(json.dumps(check_file(str(planted)).to_dict()))
    assert data["problems"][0] == {
        "origin": f"{planted}:15",
        "field": "messages",
        "reason": "has no 'assistant' turn, so there is nothing to train on; add the answer, "
        "or use format 'prompt' for prompts only",
    }
    assert data["exact_duplicates"] == [[3, 10, 31]]
    assert data["pii"]["SECRET"] == {"count": 1, "lines": [51], "previews": ["ghp_*** (40 chars)"]}
    assert data["has_errors"] is True and data["tokens"] is None and data["eval"] is None


def test_render_names_lines_and_never_pii_values(planted):
    text = check_file(str(planted)).render()
    assert "exact duplicates: 1 group, 2 redundant records\n  lines 3, 10, 31" in text
    assert "near duplicates (Jaccard >= 0.9): 1 group, 1 redundant record\n  lines 6, 21" in text
    assert "  EMAIL 2 in lines 12, 41 (e.g. an***@***.org, an***@***.io)" in text
    assert "ann.lee@example.org" not in text and "ghp_abcdefghijklmnopqrstuvwxyz0123456789" not in text
    assert text.endswith(
        "result: ERRORS: 2 problems in 2 records; plus 7 warnings (duplicates, PII). To fix: fix the records "
        "listed, or drop them with `whetstone data clean --drop-invalid`."
    )


def test_truncated_gzip_is_reported_with_what_was_read(tmp_path):
    data = gzip.compress(jsonl_bytes([{"text": f"row {i} " * 30} for i in range(300)]))
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    report = check_file(str(path))
    assert report.fatal is not None and "truncated or corrupt after line" in report.fatal
    assert 0 < report.valid < 300 and report.has_errors


def test_check_does_not_import_torch_or_transformers(planted):
    code = (
        "import sys; from whetstone.data.check import check_file; "
        f"r = check_file({str(planted)!r}); "
        "assert r.valid == 58; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# Token statistics, against render_record computed directly.


@pytest.fixture(scope="module")
def tokenizer():
    from whetstone.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


def test_token_statistics_match_render_record(tmp_path, tokenizer):
    from whetstone.data.render import render_record

    # About 25 to 70 tokens each; max_length 64 truncates the longest few inside their answers.
    rows = [chat("hello " * (n // 4 + 1), "world " * (n % 7 + 1)) for n in range(40)]
    rows.append(chat("question " * 300, "ok"))  # its answer lies wholly past max_length
    path = write_rows(tmp_path / "d.jsonl", rows)
    report = check_file(str(path), tokenizer=tokenizer, max_length=64)
    records = [
        Record(
            kind="chat",
            origin="x",
            messages=(Message("user", r["messages"][0]["content"]), Message("assistant", r["messages"][1]["content"])),
        )
        for r in rows
    ]
    rendered = [render_record(r, tokenizer, 64) for r in records]
    assert 2 <= sum(x.truncated for x in rendered) <= 10
    lengths = sorted(x.n_full_tokens for x in rendered)
    t = report.tokens
    assert (t.count, t.min, t.max) == (41, lengths[0], lengths[-1])
    assert (t.p50, t.p90, t.p99) == (lengths[20], lengths[36], lengths[40])
    assert t.truncated == sum(x.truncated for x in rendered)
    assert t.lost_supervision == sum(x.truncated and x.n_supervised == 0 for x in rendered) == 1


def test_preference_counts_its_longer_side(tokenizer):
    from whetstone.data.render import render_record

    prompt = (Message("user", "Which is better?"),)
    record = Record(
        kind="preference",
        origin="x",
        messages=prompt,
        chosen=(Message("assistant", "short"),),
        rejected=(Message("assistant", "much longer " * 20),),
    )
    longer = render_record(Record(kind="chat", origin="x", messages=prompt + record.rejected), tokenizer, None)
    assert count_tokens(record, tokenizer) == (longer.n_full_tokens, False, False)
    n, truncated, lost = count_tokens(record, tokenizer, max_length=longer.n_full_tokens - 1)
    assert (n, truncated, lost) == (longer.n_full_tokens, True, False)
