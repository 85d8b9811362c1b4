"""Readers: every file type, origins, streaming edge cases, and file-level errors."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from datafiles import jsonl_bytes, write_rows

from whetstone.data.formats import load_records
from whetstone.data.readers import Row, iter_rows, resolve_source
from whetstone.data.records import Message
from whetstone.errors import Problem, WhetstoneError

# Alpaca rows: flat string fields, so the CSV cells hold raw newlines and quotes.
ROWS = [
    {"instruction": "What is 2+2?", "input": "", "output": "4"},
    {"instruction": "Name a colour.", "input": "One word.", "output": 'Teal, like the sea,\nand "quoted".'},
    {"instruction": "é ü 中文", "input": "", "output": "ok"},
]
EXPECTED = [
    (Message("user", "What is 2+2?"), Message("assistant", "4")),
    (Message("user", "Name a colour.\n\nOne word."), Message("assistant", 'Teal, like the sea,\nand "quoted".')),
    (Message("user", "é ü 中文"), Message("assistant", "ok")),
]


@pytest.mark.parametrize(
    "name, origins",
    [
        ("d.jsonl", ["1", "2", "3"]),
        ("d.jsonl.gz", ["1", "2", "3"]),
        ("d.ndjson", ["1", "2", "3"]),
        ("d.json", ["item 1", "item 2", "item 3"]),
        ("d.json.gz", ["item 1", "item 2", "item 3"]),
        # CSV rows start on physical lines 2, 3 and 5: row 2 has a newline in a quoted cell.
        ("d.csv", ["2", "3", "5"]),
        ("d.csv.gz", ["2", "3", "5"]),
        ("d.tsv", ["2", "3", "5"]),
        ("d.parquet", ["row 1", "row 2", "row 3"]),
        ("d.parquet.gz", ["row 1", "row 2", "row 3"]),
    ],
)
def test_every_file_type_gives_the_same_records(tmp_path, name, origins):
    path = write_rows(tmp_path / name, ROWS)
    result = load_records(str(path))
    assert result.format == "alpaca"
    assert result.explanation == "detected 'alpaca' from fields 'instruction', 'output'"
    assert [r.messages for r in result.records] == EXPECTED
    assert [r.origin for r in result.records] == [f"{path}:{o}" for o in origins]
    assert (result.problems, result.skipped) == ([], 0)


def test_jsonl_line_numbers_count_blank_lines_and_survive_a_bad_byte(write):
    good = json.dumps({"text": "a"}).encode()
    path = write("d.jsonl", b"\xef\xbb\xbf" + good + b"\n\n" + b'{"text": "\xff"}\n' + good + b"\r\n")
    items = list(iter_rows(path))
    assert items == [
        Row(f"{path}:1", 1, {"text": "a"}),
        Problem(f"{path}:3", None, "invalid UTF-8 at byte 11 of the line; re-save the file as UTF-8"),
        Row(f"{path}:4", 4, {"text": "a"}),
    ]


def test_truncated_last_line_says_the_file_may_be_truncated(write):
    path = write("d.jsonl", '{"text": "a"}\n{"text": "b')
    problem = list(iter_rows(path))[1]
    assert problem == Problem(
        f"{path}:2",
        None,
        "invalid JSON at column 10: Unterminated string starting at; the line ends before the JSON value does "
        "(it is the last line and has no newline: the file may be truncated)",
    )


def test_truncated_gzip_stops_with_an_error_naming_the_line(tmp_path):
    data = gzip.compress(jsonl_bytes([{"text": f"row {i} " * 20} for i in range(200)]))
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WhetstoneError, match=r"d\.jsonl\.gz: the file is truncated or corrupt after line \d+"):
        list(iter_rows(str(path)))


def test_a_file_that_is_not_gzip_is_a_clean_error(write):
    path = write("d.jsonl.gz", '{"text": "a"}\n')
    with pytest.raises(WhetstoneError, match="truncated or corrupt after line 0"):
        list(iter_rows(path))


def test_a_line_past_the_record_limit_stops_with_the_file_line_and_knob(write, monkeypatch):
    monkeypatch.setenv("WHETSTONE_MAX_RECORD_BYTES", "100")
    at_limit = json.dumps({"text": "a" * 86}).encode() + b"\n"  # exactly 100 bytes with its newline
    path = write("d.jsonl", at_limit + json.dumps({"text": "b" * 5000}).encode() + b"\n")
    items = iter_rows(path)
    assert next(items) == Row(f"{path}:1", 1, {"text": "a" * 86})
    with pytest.raises(WhetstoneError, match=r"d\.jsonl:2: the record is longer than 100 bytes.*"
                                             r"WHETSTONE_MAX_RECORD_BYTES=400"):
        next(items)


def test_a_csv_line_past_the_record_limit_is_an_error_not_a_read(write, monkeypatch):
    monkeypatch.setenv("WHETSTONE_MAX_RECORD_BYTES", "64")
    path = write("d.csv", "text,label\nshort,a\n" + "x" * 10_000 + ",b\n")
    with pytest.raises(WhetstoneError, match=r"d\.csv:3: the record is longer than 64 bytes"):
        list(iter_rows(path))


def test_a_json_array_element_past_the_record_limit_names_its_line(write, monkeypatch):
    monkeypatch.setenv("WHETSTONE_MAX_RECORD_BYTES", "50")
    path = write("d.json", '[\n  {"text": "a"},\n  {"text": "' + "b" * 200 + '"}\n]')
    with pytest.raises(WhetstoneError, match=r"d\.json:3 \(array element 2\): the record is longer than 50 bytes"):
        list(iter_rows(path))


@pytest.mark.parametrize("name", ["bomb.jsonl.gz", "bomb.json.gz", "bomb.csv.gz", "bomb.parquet.gz"])
def test_a_gzip_bomb_ends_in_a_sentence(tmp_path, monkeypatch, name):
    monkeypatch.setenv("WHETSTONE_MAX_GZIP_RATIO", "10")
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"[" + b" " * 1_000_000))  # ~1 KiB that inflates a thousandfold
    with pytest.raises(WhetstoneError, match=rf"{name}: the file inflates to more than \d+ bytes, over 10 times its "
                                             r"compressed size.*WHETSTONE_MAX_GZIP_RATIO=100"):
        list(iter_rows(str(path)))


def test_a_gzip_within_the_ratio_reads_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("WHETSTONE_MAX_GZIP_RATIO", "10")
    rows = [{"text": f"row {i} has its own words {i * 7919 % 1000}"} for i in range(50)]
    path = write_rows(tmp_path / "d.jsonl.gz", rows)
    assert [item.data for item in iter_rows(str(path))] == rows


def test_a_limit_that_is_not_a_number_is_a_sentence(write, monkeypatch):
    monkeypatch.setenv("WHETSTONE_MAX_RECORD_BYTES", "64MB")
    path = write("d.jsonl", '{"text": "a"}\n')
    with pytest.raises(WhetstoneError, match=r"\$WHETSTONE_MAX_RECORD_BYTES is '64MB'; give a positive whole number"):
        list(iter_rows(path))


def test_json_array_syntax_error_names_the_element_and_line(write):
    path = write("d.json", '[\n  {"text": "a"},\n  {"text": "b",}\n]')
    items = iter_rows(path)
    assert next(items) == Row(f"{path}:item 1", 1, {"text": "a"})
    with pytest.raises(WhetstoneError, match=r"d\.json:3: invalid JSON in array element 2: Expecting property name"):
        next(items)


def test_json_array_elements_that_are_not_objects_are_row_problems(write):
    path = write("d.json", '[{"text": "a"}, 3, "x"]')
    assert list(iter_rows(path))[1:] == [
        Problem(f"{path}:item 2", None, "expected a JSON object {...}, got a number"),
        Problem(f"{path}:item 3", None, "expected a JSON object {...}, got a string"),
    ]


def test_json_file_that_is_really_json_lines_is_read_as_lines(write):
    path = write("d.json", '{"text": "a"}\n{"text": "b"}\n')
    assert [r.origin for r in iter_rows(path)] == [f"{path}:1", f"{path}:2"]


def test_csv_row_with_wrong_cell_count_and_unclosed_quote(write):
    path = write("d.csv", 'text,label\nfine,pos\ntoo,many,cells\n"open quote,neg\nlast,pos\n')
    items = list(iter_rows(path))
    assert items[0] == Row(f"{path}:2", 2, {"text": "fine", "label": "pos"}, untyped=True)
    assert items[1] == Problem(
        f"{path}:3",
        None,
        "row has 3 cells but the header has 2 columns (text, label); check the delimiter and quoting",
    )
    assert items[2] == Problem(
        f"{path}:4",
        None,
        "row has 1 cells but the header has 2 columns (text, label); check the delimiter and quoting; "
        "the row runs from line 4 to 5: is a quote left open?",
    )
    assert len(items) == 3


def test_csv_bad_byte_is_reported_on_its_row_only(write):
    path = write("d.csv", b'text,label\n"multi\nline \xff",pos\nok,neg\n')
    assert list(iter_rows(path)) == [
        Problem(f"{path}:2", None, "invalid UTF-8 on line 3; re-save the file as UTF-8"),
        Row(f"{path}:4", 4, {"text": "ok", "label": "neg"}, untyped=True),
    ]


def test_csv_header_with_duplicate_columns_is_an_error(write):
    path = write("d.csv", "text,text\na,b\n")
    with pytest.raises(WhetstoneError, match=r"d\.csv:1: the header row repeats \['text'\]"):
        list(iter_rows(path))


def test_corrupt_parquet_is_a_clean_error(write):
    path = write("d.parquet", b"PAR1 this is not parquet")
    with pytest.raises(WhetstoneError, match="not a readable Parquet file"):
        list(iter_rows(path))


def test_missing_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope" / "train.jsonl")
    with pytest.raises(WhetstoneError, match=f"data file not found: {missing}"):
        load_records(missing)


def test_unknown_extension_and_directory_are_errors(tmp_path, write):
    path = write("data.xlsx", "x")
    with pytest.raises(WhetstoneError, match="cannot tell the file type from its extension"):
        resolve_source(path)
    with pytest.raises(WhetstoneError, match="is a directory"):
        resolve_source(str(tmp_path))


def test_names_that_are_not_files_are_hugging_face_datasets():
    assert resolve_source("hf:org/ds:test").kind == "hf"
    assert (resolve_source("hf:org/ds:test").path, resolve_source("hf:org/ds:test").split) == ("org/ds", "test")
    assert (resolve_source("imdb").kind, resolve_source("imdb").split) == ("hf", "train")
    with pytest.raises(WhetstoneError, match="names no dataset"):
        resolve_source("hf:")


def test_hugging_face_dataset_offline_fails_fast_in_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WhetstoneError) as caught:
        list(iter_rows("hf:whetstone-test/does-not-exist:train"))
    assert time.monotonic() - start < 30
    message = str(caught.value)
    assert message.startswith("could not load 'whetstone-test/does-not-exist' (split 'train'): it is not a local file")
    assert "unreachable (offline)" in message
    assert message.count(". ") == 0 and "\n" not in message
