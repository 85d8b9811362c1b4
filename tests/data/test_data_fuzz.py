"""Property tests: whatever bytes or JSON a file holds, reading it ends in records,
problems, or a clean ``WhetstoneError`` - never in any other exception."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

from datafiles import write_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whetstone.data.formats import FORMATS, RecordStream, parse_row
from whetstone.data.readers import Row, iter_rows
from whetstone.data.records import Record
from whetstone.errors import Problem, WhetstoneError

SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".parquet", ".jsonl.gz", ".json.gz", ".csv.gz", ".parquet.gz"]
# Derandomized and without an example database: the same examples on every run, no files written.
FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = [
    "text",
    "prompt",
    "completion",
    "instruction",
    "input",
    "output",
    "messages",
    "conversations",
    "chosen",
    "rejected",
    "label",
    "reference",
    "answer",
    "task",
    "role",
    "content",
    "from",
    "value",
]
# Rows built from the field names formats look for, so that parsers go deep rather than stop at "missing".
message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool"]) | json_values,
        "content": st.text(max_size=10) | json_values,
        "from": st.sampled_from(["human", "gpt", "x"]),
        "value": st.text(max_size=10),
    },
)
field_values = json_values | st.text(max_size=10) | st.lists(message, max_size=4)
rows = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), field_values, max_size=6)


def read_all(path: str, format: str = "auto") -> list:
    """Read ``path`` completely; return the outcome of every row."""
    try:
        return [p.record or p.problems for p in RecordStream(path, format)]
    except WhetstoneError as exc:
        return [exc]


def check_outcomes(outcomes: list) -> None:
    for outcome in outcomes:
        assert isinstance(outcome, (Record, WhetstoneError)) or (
            isinstance(outcome, list) and outcome and all(isinstance(p, Problem) for p in outcome)
        ), outcome


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES), compress=st.booleans())
def test_random_bytes_never_crash_a_reader(data, suffix, compress):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d{suffix}"
        path.write_bytes(gzip.compress(data) if compress and suffix.endswith(".gz") else data)
        try:
            items = list(iter_rows(str(path)))
        except WhetstoneError:
            return
        assert all(isinstance(i, (Row, Problem)) for i in items)
        check_outcomes(read_all(str(path)))


@FUZZ
@given(row=rows, format=st.sampled_from(FORMATS), untyped=st.booleans())
def test_random_rows_parse_to_a_record_or_problems(row, format, untyped):
    if untyped:  # CSV cells are strings
        row = {k: v if isinstance(v, str) else json.dumps(v) for k, v in row.items()}
    result = parse_row(Row("f.jsonl:1", 1, row, untyped=untyped), format)
    check_outcomes([result])
    if isinstance(result, Record):
        assert result.origin == "f.jsonl:1"


@FUZZ
@given(values=st.lists(json_values, min_size=1, max_size=5), suffix=st.sampled_from([".jsonl", ".json"]))
def test_random_json_values_in_files(values, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d{suffix}"
        text = json.dumps(values) if suffix == ".json" else "".join(json.dumps(v) + "\n" for v in values)
        path.write_text(text)
        for format in ("auto", *FORMATS):
            check_outcomes(read_all(str(path), format))


def _valid_file(suffix: str) -> bytes:
    rows = [{"prompt": f"question {i} é", "completion": f'answer {i}\n"quoted", comma', "task": "t"} for i in range(20)]
    with tempfile.TemporaryDirectory() as tmp:
        return write_rows(Path(tmp) / f"d{suffix}", rows).read_bytes()


VALID = {suffix: _valid_file(suffix) for suffix in SUFFIXES}


@FUZZ
@given(suffix=st.sampled_from(SUFFIXES), cut=st.floats(min_value=0.0, max_value=1.0))
def test_truncated_files_end_in_problems_or_a_clean_error(suffix, cut):
    data = VALID[suffix]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d{suffix}"
        path.write_bytes(data[: int(len(data) * cut)])
        outcomes = read_all(str(path))
        check_outcomes(outcomes)
        if suffix == ".jsonl":
            # A line-based file keeps every complete row before the cut (and the
            # cut line too, when only its newline was cut off).
            complete = data[: int(len(data) * cut)].count(b"\n")
            assert complete <= sum(isinstance(o, Record) for o in outcomes) <= complete + 1


def test_truncated_jsonl_keeps_every_row_before_the_cut():
    data = VALID[".jsonl"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        path.write_bytes(data[: data.index(b"question 7")])
        outcomes = read_all(str(path))
    assert sum(isinstance(o, Record) for o in outcomes) == 7
    assert [str(p) for p in outcomes[-1]] == [
        f"{path}:8: invalid JSON at column 12: Unterminated string starting at; the line ends before the JSON value "
        "does (it is the last line and has no newline: the file may be truncated)"
    ]
