"""Every chat template trl ships renders the corpus with the right labels, or refuses a feature in a sentence.

The corpus, the tokenizers and the tables live in chat_template_cases.py; docs/chat_templates.md
holds the tables it generates, and test_doc_tables_are_current keeps them honest.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from chat_template_cases import (CORPUS, DOC, explain_difference, outcome, supervised_spans, template_names,
                                 template_tokenizer, training_partner, training_spans, whetstone_spans, write_doc)

from whetstone.config import DataConfig
from whetstone.data.batches import collate
from whetstone.data.dataset import DataStats, tokenize
from whetstone.data.formats import load_records
from whetstone.data.records import Message, Record, ToolCall
from whetstone.data.render import (IGNORE, chat_sequences, end_of_turn_ids, message_dicts, render_record,
                                   render_sequences, stop_ids)
from whetstone.errors import WhetstoneError
from whetstone.objectives.logprobs import render_completion

NAMES = template_names()
# A feature a template may refuse, in a WhetstoneError; plain chat, reasoning (auto) and an empty turn always render.
REFUSABLE = {"system", "tools"}


def _vision_only(name: str) -> bool:
    """A vision template that reads content as a list of blocks cannot render text messages at all."""
    result = outcome(name, "chat")
    return isinstance(result, WhetstoneError) and ("str object" in str(result) or "list of blocks" in str(result))


def _token(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


# ----- end_of_turn_ids and message_dicts ----------------------------------------------------------------------


@pytest.mark.parametrize("name, first", [
    ("qwen2_5", ["<|im_end|>"]), ("llama3", ["<|eot_id|>"]), ("gemma", ["<end_of_turn>"]), ("phi3", ["<|end|>"]),
    ("gptoss", ["<|return|>", "<|end|>", "<|call|>"]), ("cohere", ["<|END_OF_TURN_TOKEN|>"]),
    ("deepseek_r1_distill", ["<｜end▁of▁sentence｜>"]),
])
def test_end_of_turn_ids_finds_the_family_token_then_eos(name, first):
    tokenizer = template_tokenizer(name)
    ids = end_of_turn_ids(tokenizer)
    assert _token(tokenizer, ids) == list(dict.fromkeys(first + ["<|im_end|>"]))  # the embedded tokenizer's eos last
    assert ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("name, stops", [
    ("qwen2_5", ["<|im_end|>"]), ("gemma", ["<end_of_turn>", "<|im_end|>"]),
    ("gptoss", ["<|return|>", "<|call|>", "<|im_end|>"]),  # <|end|> closes only a history turn or analysis
])
def test_generation_stops_where_a_generated_turn_ends(name, stops):
    tokenizer = template_tokenizer(name)
    assert _token(tokenizer, stop_ids(tokenizer)) == stops
    assert set(stop_ids(tokenizer)) <= set(end_of_turn_ids(tokenizer))


def test_end_of_turn_ids_without_a_template_is_eos():
    import copy

    tokenizer = copy.deepcopy(template_tokenizer("qwen2_5"))
    tokenizer.chat_template = None
    assert end_of_turn_ids(tokenizer) == [tokenizer.eos_token_id]


def test_message_dicts_shape_and_reasoning_modes():
    messages = CORPUS["tools"].messages[:3] + CORPUS["reasoning"].messages[1:2]
    kept = message_dicts(messages)
    assert kept[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert kept[2] == {"role": "tool", "content": '{"temp_c": 24}', "tool_call_id": "call_1", "name": "get_weather"}
    reasoning = "17 times 3 is 30 plus 21, so 51."
    assert kept[3] == {"role": "assistant", "content": "51.", "reasoning_content": reasoning, "thinking": reasoning}
    assert message_dicts(messages, "keep") == kept
    assert message_dicts(messages, "drop")[3] == {"role": "assistant", "content": "51."}


# ----- every template, every conversation ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_template_renders_every_conversation_or_refuses_a_feature(name):
    if _vision_only(name):
        pytest.skip(f"{name}: a vision template that cannot render text-only messages ({outcome(name, 'chat')})")
    tokenizer = template_tokenizer(name)
    for conversation, record in CORPUS.items():
        result = outcome(name, conversation)
        if isinstance(result, WhetstoneError):
            assert conversation in REFUSABLE, f"{name} refused {conversation}: {result}"
            assert str(result).startswith(f"{record.origin}: the chat template ")
            continue
        _assert_each_turn_supervised_once(tokenizer, record, result)
        _assert_prompts_match_inference(tokenizer, record)


@pytest.mark.parametrize("name", [n for n in NAMES if training_partner(n)])
def test_training_partners_render_every_conversation_or_refuse_a_feature(name):
    """The 26 *_training.jinja partners are templates too: rendered as a model's own template, each one behaves
    like its partner (the {% generation %} markers render nothing)."""
    if _vision_only(name):
        pytest.skip(f"{name}: a vision template")
    tokenizer = template_tokenizer(name, training=True)
    for conversation, record in CORPUS.items():
        try:
            sequences = render_sequences(record, tokenizer, None)
        except WhetstoneError as exc:
            assert conversation in REFUSABLE, f"{name}_training refused {conversation}: {exc}"
            continue
        _assert_each_turn_supervised_once(tokenizer, record, sequences)


def _assert_each_turn_supervised_once(tokenizer, record: Record, sequences) -> None:
    spans = [span for rendered in sequences for span in supervised_spans(tokenizer, rendered)]
    answers = [m for m in record.messages if m.role == "assistant"]
    assert len(spans) == len(answers), spans
    ends = set(end_of_turn_ids(tokenizer))
    for rendered in sequences:
        for k, label in enumerate(rendered.labels):
            if label != IGNORE and (k + 1 == len(rendered.labels) or rendered.labels[k + 1] == IGNORE):
                assert label in ends, f"a supervised run ends in {_token(tokenizer, [label])}, not an end-of-turn"
    for span, answer in zip(spans, answers):
        assert answer.content in span
        for call in answer.tool_calls:
            assert call.name in span and "Paris" in span
    for message in record.messages:
        if message.role != "assistant" and message.content:
            assert not any(message.content in span for span in spans), f"{message.role} text is supervised"


def _assert_prompts_match_inference(tokenizer, record: Record) -> None:
    """Before each supervised turn stands the prompt inference gives the model (an empty think block aside)."""
    messages = message_dicts(record.messages)
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    turns = iter(assistant_turns)
    for pieces in chat_sequences(tokenizer, messages, record.tools):
        for k, (_, supervised) in enumerate(pieces):
            if not supervised:
                continue
            i = next(turns)
            before = "".join(text for text, _ in pieces[:k])
            prompt = tokenizer.apply_chat_template(messages[:i], tools=list(record.tools) or None, tokenize=False,
                                                   add_generation_prompt=True)
            # An empty think block stands in the context, not the supervision; a generation prompt's "<think>"
            # that the finished turn renders differently (DeepSeek-R1, Nemotron) is the only other difference.
            if before == prompt:
                continue
            core = re.sub(r"\s*<think>\s*</think>\s*$", "", before)
            assert prompt.startswith(core), (before, prompt)
            assert re.fullmatch(r"\s*(<think>)?\s*(</think>\s*)?", prompt[len(core):]), (before, prompt)


# ----- reasoning, empty think blocks, tools -------------------------------------------------------------------


def test_qwen3_reasoning_is_supervised_with_its_close_tag_and_history_drops_it():
    tokenizer = template_tokenizer("qwen3")
    first, second = outcome("qwen3", "reasoning")  # Qwen3 drops earlier reasoning: each turn is its own example
    expected = "<think>\n17 times 3 is 30 plus 21, so 51.\n</think>\n\n51.<|im_end|>"
    assert supervised_spans(tokenizer, first) == [expected]
    assert supervised_spans(tokenizer, second) == ["<think>\n51 plus 9 is 60.\n</think>\n\n60.<|im_end|>"]
    history = tokenizer.decode(second.input_ids)
    assert "30 plus 21" not in history and "<|im_start|>assistant\n51.<|im_end|>" in history  # as at inference


def test_reasoning_drop_and_keep():
    tokenizer = template_tokenizer("qwen3")
    dropped = render_sequences(CORPUS["reasoning"], tokenizer, None, reasoning="drop")
    spans = [s for r in dropped for s in supervised_spans(tokenizer, r)]
    assert spans == ["51.<|im_end|>", "60.<|im_end|>"]  # the empty think block Qwen3 inserts is not trained on
    assert "<think>\n\n</think>" in tokenizer.decode(dropped[-1].input_ids)
    with pytest.raises(WhetstoneError, match="corpus:reasoning: data.reasoning=keep, but the chat template does not "
                                             "render assistant reasoning"):
        render_sequences(CORPUS["reasoning"], template_tokenizer("qwen2_5"), None, reasoning="keep")


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5_think", "deepseek_r1_distill"])
def test_empty_think_block_is_prompt_not_supervision(name):
    tokenizer = template_tokenizer(name)
    spans = [s for r in outcome(name, "chat") for s in supervised_spans(tokenizer, r)]
    end = _token(tokenizer, end_of_turn_ids(tokenizer)[:1])[0]
    assert spans == ["Seven is prime." + end, "Two is the only even prime." + end]


def test_tool_calls_supervised_tool_results_not():
    tokenizer = template_tokenizer("qwen2_5")
    [rendered] = outcome("qwen2_5", "tools")
    spans = supervised_spans(tokenizer, rendered)
    assert spans[0] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert "get_weather" in tokenizer.decode(rendered.input_ids[:10_000]).split("<|im_start|>user")[0]  # tools list
    assert not any("temp_c" in span for span in spans)
    gptoss = template_tokenizer("gptoss")
    call = supervised_spans(gptoss, outcome("gptoss", "tools")[0])[0]
    assert call.startswith(" to=functions.get_weather") and call.endswith("<|call|>")


@pytest.mark.parametrize("name, feature", [("llama3", "assistant tool calls"), ("phi3", "assistant tool calls"),
                                           ("deepseekv3", "a tools list, assistant tool calls")])
def test_template_without_tools_refuses_in_a_sentence(name, feature):
    with pytest.raises(WhetstoneError, match=rf"^corpus:tools: the chat template .*{feature}"):
        render_sequences(CORPUS["tools"], template_tokenizer(name), None)


def test_empty_assistant_turn_renders_only_its_end_token_and_files_refuse_it(tmp_path):
    tokenizer = template_tokenizer("llama3")
    [rendered] = outcome("llama3", "empty")
    assert supervised_spans(tokenizer, rendered) == ["<|eot_id|>"]
    path = tmp_path / "empty.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}))
    with pytest.raises(WhetstoneError, match="is empty"):
        load_records(str(path))


# ----- one record, several examples, and the callers -------------------------------------------------------------


def test_a_re_rendering_template_makes_one_example_per_turn_and_counts_them():
    tokenizer = template_tokenizer("gptoss")
    stats = DataStats(records=2)
    out = tokenize([CORPUS["chat"], CORPUS["empty"]], tokenizer, DataConfig(train="x.jsonl"), stats)
    assert (stats.examples, len(out.examples), out.origins) == (3, 3, ["corpus:chat"] * 2 + ["corpus:empty"])
    last = render_record(CORPUS["chat"], tokenizer, None)
    assert last.input_ids == out.examples[1].input_ids  # render_record gives the last, whole-history sequence
    assert supervised_spans(tokenizer, last) == ["<|channel|>final<|message|>Two is the only even prime.<|return|>"]
    single = render_sequences(CORPUS["chat"], template_tokenizer("qwen2_5"), None)
    assert len(single) == 1  # prefix-stable: one sequence for the whole conversation


def test_phi3_closing_eos_does_not_split_the_conversation():
    tokenizer = template_tokenizer("phi3")
    [rendered] = outcome("phi3", "chat")
    assert supervised_spans(tokenizer, rendered) == ["Seven is prime.<|end|>", "Two is the only even prime.<|end|>"]
    assert tokenizer.decode(rendered.input_ids).endswith("<|end|>\n<|im_end|>")  # the template's closing EOS: prompt


def test_preference_completion_is_the_last_answer_under_a_re_rendering_template():
    tokenizer = template_tokenizer("qwen3")
    prompt, completion = CORPUS["chat"].messages[:3], CORPUS["chat"].messages[3:]
    rendered = render_completion(tokenizer, prompt, completion, None)
    supervised = [t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE]
    assert tokenizer.decode(supervised) == "Two is the only even prime.<|im_end|>"
    assert tokenizer.decode(rendered.prompt_ids).endswith("<think>\n\n</think>\n\n")


def test_padding_equal_to_eos_never_hides_a_supervised_eos():
    tokenizer = template_tokenizer("qwen2_5")
    eos = tokenizer.eos_token_id
    short = render_record(Record("chat", "a", messages=(Message("user", "Hi"), Message("assistant", "Yo"))), tokenizer,
                          None)
    long = render_record(CORPUS["system"], tokenizer, None)
    batch = collate([short, long], pad_id=eos)
    n = len(short.input_ids)
    assert short.input_ids[-2] == eos and short.labels[-2] == eos  # its supervised <|im_end|> (then "\n")
    assert batch["labels"][0, n - 2].item() == eos
    assert (batch["input_ids"][0, n:] == eos).all() and (batch["labels"][0, n:] == IGNORE).all()
    assert batch["labels"][0, :n].tolist() == short.labels
    assert torch.equal(batch["attention_mask"][0], (torch.arange(batch["input_ids"].shape[1]) < n).long())


# ----- mask parity with trl's training templates ---------------------------------------------------------------

PARTNERED = [n for n in NAMES if training_partner(n) is not None]


@pytest.mark.parametrize("name", PARTNERED)
def test_supervised_text_matches_trl_training_template(name):
    if _vision_only(name):
        pytest.skip(f"{name}: a vision template that cannot render text-only messages")
    for conversation in CORPUS:
        if isinstance(outcome(name, conversation), WhetstoneError):
            continue
        try:
            trl = training_spans(name, conversation)
        except Exception:  # trl's training template itself fails on this conversation: listed in the doc
            continue
        ours = whetstone_spans(name, conversation)
        assert len(trl) == len(ours), (conversation, trl, ours)
        for a, b in zip(trl, ours):
            assert not any(r.startswith("unexplained") for r in explain_difference(name, a, b)), (conversation, a, b)


def test_doc_tables_are_current():
    text = DOC.read_text()
    assert write_doc(text) == text, "run: .venv/bin/python tests/data/chat_template_cases.py --write"
