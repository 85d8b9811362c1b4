"""Label masking: prompt tokens are exactly -100; completion tokens and EOS are supervised."""

import json

import pytest

from whetstone.data.formats import load_records
from whetstone.data.render import IGNORE, render_record

PROMPT, ANSWER = "Join two path components.", "It returns the joined path."

FORMATS = {
    "prompt_completion": {"prompt": PROMPT, "completion": ANSWER},
    "alpaca": {"instruction": PROMPT, "input": "", "output": ANSWER},
    "messages": {"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]},
    "sharegpt": {"conversations": [{"from": "human", "value": PROMPT}, {"from": "gpt", "value": ANSWER}]},
}


def _record(tmp_path, row, fmt="auto"):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return load_records(str(path), format=fmt).records[0]


def _supervised(rendered):
    return [t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_prompt_masked_and_completion_plus_eos_supervised(tmp_path, tiny_tokenizer, fmt):
    record = _record(tmp_path, FORMATS[fmt])
    rendered = render_record(record, tiny_tokenizer, max_length=None)
    expected = tiny_tokenizer(ANSWER + "<|im_end|>", add_special_tokens=False)["input_ids"]
    first = next(i for i, label in enumerate(rendered.labels) if label != IGNORE)
    # Everything before the answer (template, user turn, assistant header) is masked...
    assert all(label == IGNORE for label in rendered.labels[:first])
    # ...the answer and its EOS are supervised, exactly, as one contiguous span...
    assert rendered.labels[first : first + len(expected)] == expected
    assert _supervised(rendered) == expected
    assert expected[-1] == tiny_tokenizer.eos_token_id
    # ...and the template's newline after EOS is not the model's to predict.
    assert tiny_tokenizer.decode(rendered.input_ids[first + len(expected) :]) == "\n"
    # The prompt part is exactly what generation would be given.
    prompt_text = tiny_tokenizer.decode(rendered.input_ids[:first])
    assert prompt_text == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"


def test_alpaca_input_joins_the_instruction(tmp_path, tiny_tokenizer):
    record = _record(tmp_path, {"instruction": "Translate.", "input": "hello", "output": "bonjour"})
    assert record.messages[0].content == "Translate.\n\nhello"


def test_text_format_supervises_everything_and_ends_with_eos(tmp_path, tiny_tokenizer):
    record = _record(tmp_path, {"text": "The quick brown fox."})
    rendered = render_record(record, tiny_tokenizer, max_length=None)
    assert rendered.labels == rendered.input_ids
    assert rendered.input_ids[-1] == tiny_tokenizer.eos_token_id


def test_multi_turn_supervises_every_assistant_turn(tmp_path, tiny_tokenizer):
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."},
    ]}
    rendered = render_record(_record(tmp_path, row), tiny_tokenizer, max_length=None)
    expected = tiny_tokenizer("Hello.<|im_end|>Goodbye.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert _supervised(rendered) == expected
    assert "Be brief." not in tiny_tokenizer.decode(_supervised(rendered))


def test_train_on_prompt_supervises_the_prompt_too(tmp_path, tiny_tokenizer):
    record = _record(tmp_path, FORMATS["messages"])
    rendered = render_record(record, tiny_tokenizer, max_length=None, train_on_prompt=True)
    masked = [i for i, label in enumerate(rendered.labels) if label == IGNORE]
    assert masked == [len(rendered.labels) - 1]  # only the newline after the final EOS


def test_truncation_is_reported_and_keeps_the_start(tmp_path, tiny_tokenizer):
    record = _record(tmp_path, {"prompt": PROMPT, "completion": ANSWER * 20})
    full = render_record(record, tiny_tokenizer, max_length=None)
    cut = render_record(record, tiny_tokenizer, max_length=40)
    assert cut.truncated and not full.truncated
    assert cut.n_full_tokens == len(full.input_ids)
    assert cut.input_ids == full.input_ids[:40] and cut.labels == full.labels[:40]
