"""Formats: each one parses to the expected canonical record; detection explains itself."""

from __future__ import annotations

import pytest
from datafiles import chat, write_rows

from whetstone.data.formats import FORMATS, detect_format, label_set, load_records, open_records
from whetstone.data.records import Message, Record
from whetstone.errors import DataError, Problem, WhetstoneError

U, A, S = "user", "assistant", "system"


def one(tmp_path, row: dict, format: str = "auto", **kwargs) -> Record:
    path = write_rows(tmp_path / "d.jsonl", [row])
    result = load_records(str(path), format=format, **kwargs)
    assert len(result.records) == 1
    return result.records[0]


def test_format_names_are_the_documented_ones():
    assert FORMATS == (
        "text",
        "prompt_completion",
        "alpaca",
        "messages",
        "sharegpt",
        "preference",
        "kto",
        "classification",
        "prompt",
    )


@pytest.mark.parametrize(
    "row, kind, fields",
    [
        ({"text": "Once upon a time."}, "text", {"text": "Once upon a time."}),
        ({"prompt": "2+2?", "completion": "4"}, "chat", {"messages": ((U, "2+2?"), (A, "4"))}),
        (
            {"instruction": "Add.", "input": "2 and 2", "output": "4"},
            "chat",
            {"messages": ((U, "Add.\n\n2 and 2"), (A, "4"))},
        ),
        ({"instruction": "Add.", "input": "  ", "output": "4"}, "chat", {"messages": ((U, "Add."), (A, "4"))}),
        ({"instruction": "Add.", "output": "4"}, "chat", {"messages": ((U, "Add."), (A, "4"))}),
        (
            {
                "messages": [
                    {"role": S, "content": "Be brief."},
                    {"role": U, "content": "Hi"},
                    {"role": A, "content": "Hello"},
                    {"role": U, "content": "Bye"},
                    {"role": A, "content": "Bye"},
                ]
            },
            "chat",
            {"messages": ((S, "Be brief."), (U, "Hi"), (A, "Hello"), (U, "Bye"), (A, "Bye"))},
        ),
        (
            {
                "messages": [
                    {"role": U, "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                    {"role": A, "content": "Hello"},
                ]
            },
            "chat",
            {"messages": ((U, "Hi there"), (A, "Hello"))},
        ),
        (
            {
                "conversations": [
                    {"from": "system", "value": "s"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                    {"from": "user", "value": "q2"},
                    {"from": "bot", "value": "a2"},
                ]
            },
            "chat",
            {"messages": ((S, "s"), (U, "q"), (A, "a"), (U, "q2"), (A, "a2"))},
        ),
        (
            {"prompt": "Q?", "chosen": "good", "rejected": "bad"},
            "preference",
            {"messages": ((U, "Q?"),), "chosen": ((A, "good"),), "rejected": ((A, "bad"),)},
        ),
        # Conversational pairs with the prompt repeated inside chosen/rejected (Anthropic HH style).
        (
            {
                "chosen": [{"role": U, "content": "Q?"}, {"role": A, "content": "good"}],
                "rejected": [{"role": U, "content": "Q?"}, {"role": A, "content": "bad"}],
            },
            "preference",
            {"messages": ((U, "Q?"),), "chosen": ((A, "good"),), "rejected": ((A, "bad"),)},
        ),
        (
            {
                "prompt": [{"role": S, "content": "s"}, {"role": U, "content": "Q?"}],
                "chosen": [{"role": A, "content": "good"}],
                "rejected": [{"role": A, "content": "bad"}],
            },
            "preference",
            {"messages": ((S, "s"), (U, "Q?")), "chosen": ((A, "good"),), "rejected": ((A, "bad"),)},
        ),
        (
            {"prompt": "Q?", "completion": "A.", "label": False},
            "feedback",
            {"messages": ((U, "Q?"),), "completion": ((A, "A."),), "label": False},
        ),
        ({"text": "great film", "label": "pos"}, "classification", {"text": "great film", "label": "pos"}),
        ({"text": "great film", "label": 1}, "classification", {"text": "great film", "label": "1"}),
        ({"prompt": "What is 6*7?", "answer": 42}, "prompt", {"messages": ((U, "What is 6*7?"),), "reference": "42"}),
        ({"prompt": "Say hi.", "reference": "hi"}, "prompt", {"messages": ((U, "Say hi."),), "reference": "hi"}),
        ({"prompt": "Say hi."}, "prompt", {"messages": ((U, "Say hi."),), "reference": None}),
    ],
)
def test_each_format_parses_to_its_canonical_record(tmp_path, row, kind, fields):
    record = one(tmp_path, row)
    assert record.kind == kind
    for name, expected in fields.items():
        value = getattr(record, name)
        if name in ("messages", "chosen", "rejected", "completion"):
            expected = tuple(Message(role, content) for role, content in expected)
        assert value == expected, name


def test_task_field_and_task_argument(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"text": "a", "task": "qa"}, {"text": "b"}])
    assert [r.task for r in load_records(str(path)).records] == ["qa", None]
    assert [r.task for r in load_records(str(path), task="lm").records] == ["qa", "lm"]


def test_unknown_fields_are_kept_in_extra(tmp_path):
    record = one(tmp_path, {"text": "a", "id": 7, "source": "web"})
    assert record.extra == {"id": 7, "source": "web"}


def test_csv_cells_can_hold_booleans_and_json_message_lists(tmp_path):
    rows = [{"prompt": "Q?", "completion": "A.", "label": "true"}, {"prompt": "Q?", "completion": "B.", "label": "0"}]
    path = write_rows(tmp_path / "d.csv", rows)
    assert [r.label for r in load_records(str(path)).records] == [True, False]
    path = write_rows(tmp_path / "m.tsv", [chat("hi", "yo")])
    assert load_records(str(path)).records[0].messages == (Message(U, "hi"), Message(A, "yo"))


def test_labels_from_a_list_reject_unknown_classes(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neutral"}])
    result = load_records(str(path), on_error="skip", labels=["pos", "neg"])
    assert [r.label for r in result.records] == ["pos"]
    assert result.problems == [
        Problem(
            f"{path}:2",
            "label",
            '"neutral" is not one of the labels (neg, pos); fix the label or add it to the label list',
        )
    ]
    assert label_set(load_records(str(path)).records) == ["neutral", "pos"]


def test_labels_for_a_format_without_labels_is_an_error(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"text": "a"}])
    with pytest.raises(WhetstoneError, match="labels apply only to 'classification'"):
        load_records(str(path), labels=["x"])


def test_on_error_modes(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"text": "a"}, {"text": ""}, {"text": 3}])
    with pytest.raises(DataError) as caught:
        load_records(str(path))
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:2: field 'text': is empty; give it text, or drop the record",
        f"{path}:3: field 'text': expected a string, got 3 (a number)",
    ]
    assert caught.value.exit_code == 1
    result = load_records(str(path), on_error="skip")
    assert (len(result.records), result.skipped, len(result.problems)) == (1, 2, 2)
    with pytest.raises(WhetstoneError, match="on_error must be 'error' or 'skip', got 'ignore'"):
        load_records(str(path), on_error="ignore")


def test_unknown_format_lists_the_valid_names(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"text": "a"}])
    with pytest.raises(WhetstoneError) as caught:
        load_records(str(path), format="chatml")
    assert str(caught.value) == (
        "unknown data format 'chatml'; choose one of: auto, text, prompt_completion, alpaca, messages, sharegpt, "
        "preference, kto, classification, prompt."
    )


def test_explicit_format_is_used_even_when_detection_would_differ(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}])
    result = load_records(str(path), format="text")
    assert (result.format, result.explanation, result.records[0].kind) == ("text", "format 'text' was given", "text")
    assert result.records[0].extra == {"label": "x"}


def test_detection_explains_an_ambiguous_choice():
    name, explanation = detect_format([{"text": "a", "label": "pos", "prompt": "x"}])
    assert name == "classification"
    assert explanation == (
        "detected 'classification' from fields 'text', 'label'; the rows also fit 'text' (field 'text'), "
        "'prompt' (field 'prompt'). 'classification' was chosen because it uses the most fields; "
        "pass the format explicitly to choose another"
    )


@pytest.mark.parametrize(
    "keys, expected",
    [
        ({"prompt", "completion", "label"}, "kto"),
        ({"prompt", "completion"}, "prompt_completion"),
        ({"prompt", "chosen", "rejected"}, "preference"),
        ({"chosen", "rejected"}, "preference"),
        ({"instruction", "input", "output"}, "alpaca"),
        ({"conversations", "id"}, "sharegpt"),
        ({"messages"}, "messages"),
        ({"prompt", "answer"}, "prompt"),
        ({"text"}, "text"),
    ],
)
def test_detection_picks_the_most_specific_format(keys, expected):
    assert detect_format([{k: "x" for k in keys}])[0] == expected


def test_detection_reports_rows_of_another_format():
    rows = [{"text": "a"}] * 3 + [{"messages": []}]
    name, explanation = detect_format(rows)
    assert name == "text"
    assert explanation == (
        "detected 'text' from field 'text' (3 of the first 4 rows); 1 row(s) look like 'messages' and will be "
        "reported as not matching 'text'"
    )


def test_detection_failure_names_the_fields_seen(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"question": "q", "response": "r"}])
    with pytest.raises(
        WhetstoneError,
        match=r"first rows have fields '(question|response)', '(question|response)', which match no format",
    ):
        open_records(str(path))


def test_empty_file_and_file_without_any_valid_row(write):
    with pytest.raises(WhetstoneError, match=r"empty\.jsonl holds no readable records \(it is empty\)"):
        open_records(write("empty.jsonl", ""))
    with pytest.raises(WhetstoneError, match=r"bad\.jsonl holds no readable records: .*bad\.jsonl:1: invalid JSON"):
        open_records(write("bad.jsonl", "nope\n"))
