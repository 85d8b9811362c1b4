"""`data clean`: what it drops and changes, its report, and that `check` afterwards finds none of it."""

from __future__ import annotations

import json
import os

import pytest
from datafiles import chat, write_rows
from test_data_check import planted_rows

from whetstone.data.check import check_file
from whetstone.data.clean import CleanOptions, InvalidRecords, clean_file
from whetstone.data.formats import load_records
from whetstone.errors import WhetstoneError

ALL = CleanOptions(dedup=True, near_dedup=True, redact_pii=True, drop_invalid=True, strip=True)


def report_lines(out) -> list[dict]:
    return [json.loads(line) for line in open(str(out) + ".report.jsonl", encoding="utf-8")]


def test_clean_then_check_finds_none_of_what_was_cleaned(tmp_path):
    source = write_rows(tmp_path / "train.jsonl", planted_rows())
    before = source.read_bytes()
    out = tmp_path / "clean.jsonl"
    summary = clean_file(str(source), str(out), ALL)
    assert source.read_bytes() == before  # the input is never modified
    assert (summary.read, summary.written) == (60, 55)
    assert summary.dropped == {"invalid": 2, "exact duplicates": 2, "near duplicates": 1}
    assert summary.redacted == {"EMAIL": 2, "PHONE": 1, "SECRET": 1}
    report = check_file(str(out))
    assert (report.problems, report.exact_duplicates, report.near_duplicates, report.pii) == ([], [], [], {})
    assert report.has_errors is False and report.warnings == 0


def test_report_lists_every_dropped_and_changed_record(tmp_path):
    source = write_rows(tmp_path / "train.jsonl", planted_rows())
    out = tmp_path / "clean.jsonl"
    clean_file(str(source), str(out), ALL)
    entries = [(e["origin"].rsplit(":", 1)[1], e["action"], e["reason"]) for e in report_lines(out)]
    assert entries == [
        ("10", "dropped", "exact duplicate of line 3"),
        ("12", "changed", "redacted PII"),
        (
            "15",
            "dropped",
            "invalid: field 'messages': has no 'assistant' turn, so there is nothing to train on; "
            "add the answer, or use format 'prompt' for prompts only",
        ),
        ("21", "dropped", "near duplicate of line 6 (Jaccard >= 0.9)"),
        ("31", "dropped", "exact duplicate of line 3"),
        ("41", "changed", "redacted PII"),
        ("45", "dropped", "invalid: field 'messages': expected a list of messages, got \"oops\" (a string)"),
        ("51", "changed", "redacted PII"),
    ]
    by_line = {e["origin"].rsplit(":", 1)[1]: e for e in report_lines(out)}
    assert by_line["41"]["redacted"] == {"PHONE": 1, "EMAIL": 1}
    cleaned = [json.loads(line) for line in out.read_text().splitlines()]
    assert cleaned[by_line["41"]["output_record"] - 1]["messages"][1]["content"] == "call [PHONE] or [EMAIL]"


def test_invalid_records_stop_the_run_unless_dropped(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", [{"text": "ok"}, {"text": ""}, {"text": 3}])
    out = tmp_path / "out.jsonl"
    with pytest.raises(InvalidRecords) as caught:
        clean_file(str(source), str(out), CleanOptions())
    assert [p.origin for p in caught.value.problems] == [f"{source}:2", f"{source}:3"]
    assert str(caught.value).endswith("Fix these records, or pass --drop-invalid to drop them.")
    assert caught.value.exit_code == 1
    assert os.listdir(tmp_path) == ["d.jsonl"]  # nothing written, no temporary files left


def test_strip_can_make_a_record_invalid(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", [{"text": "  padded  "}, {"text": "   "}])
    out = tmp_path / "out.jsonl"
    summary = clean_file(str(source), str(out), CleanOptions(strip=True, drop_invalid=True))
    assert [json.loads(x) for x in out.read_text().splitlines()] == [{"text": "padded"}]
    assert (summary.stripped, summary.dropped) == (1, {"invalid": 1})


def test_refuses_to_overwrite_without_the_flag_and_never_writes_its_input(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", [{"text": "a"}])
    out = write_rows(tmp_path / "out.jsonl", [{"text": "old"}])
    with pytest.raises(WhetstoneError, match=r"out\.jsonl already exists; pass --overwrite"):
        clean_file(str(source), str(out), CleanOptions())
    with pytest.raises(WhetstoneError, match="is the input file; clean never modifies its input"):
        clean_file(str(source), str(source), CleanOptions(overwrite=True))
    clean_file(str(source), str(out), CleanOptions(overwrite=True))
    assert out.read_text() == '{"text": "a"}\n'


@pytest.mark.parametrize("name", ["out.jsonl.gz", "out.json", "out.csv", "out.tsv.gz", "out.parquet"])
def test_every_output_format_reads_back_the_same_records(tmp_path, name):
    rows = [
        {"prompt": "p1", "completion": 'c, "1"\nend', "label": True, "task": "t"},
        {"prompt": "p2", "completion": "c2", "label": False, "task": "t"},
    ]
    source = write_rows(tmp_path / "d.jsonl", rows)
    out = tmp_path / name
    clean_file(str(source), str(out), CleanOptions())
    original, written = load_records(str(source)).records, load_records(str(out)).records
    assert [(r.kind, r.messages, r.completion, r.label, r.task) for r in written] == [
        (r.kind, r.messages, r.completion, r.label, r.task) for r in original
    ]


def test_chat_rows_survive_a_csv_round_trip(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", [chat('hi, "you"', "hello\nthere")])
    out = tmp_path / "out.csv"
    clean_file(str(source), str(out), CleanOptions())
    assert load_records(str(out)).records[0].messages == load_records(str(source)).records[0].messages


def test_unknown_output_extension_is_an_error(tmp_path):
    source = write_rows(tmp_path / "d.jsonl", [{"text": "a"}])
    with pytest.raises(WhetstoneError, match="cannot tell the output format of"):
        clean_file(str(source), str(tmp_path / "out.txt"), CleanOptions())


@pytest.mark.parametrize("near_dedup", [False, True])
def test_token_filters(tmp_path, near_dedup):
    from whetstone.data.check import count_tokens
    from whetstone.data.records import Record
    from whetstone.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    texts = ["hello", "hello " * 10, "hello " * 100]
    short, middle, long = (count_tokens(Record(kind="text", origin="x", text=t), tokenizer)[0] for t in texts)
    assert short < middle < long
    source = write_rows(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    out = tmp_path / "out.jsonl"
    options = CleanOptions(min_tokens=short + 1, max_tokens=long - 1, tokenizer=tokenizer, near_dedup=near_dedup)
    summary = clean_file(str(source), str(out), options)
    assert [json.loads(x) for x in out.read_text().splitlines()] == [{"text": "hello " * 10}]
    assert summary.dropped == {"too short": 1, "too long": 1}
    assert [e["reason"] for e in report_lines(out)] == [
        f"too short: {short} tokens < --min-tokens {short + 1}",
        f"too long: {long} tokens > --max-tokens {long - 1}",
    ]
