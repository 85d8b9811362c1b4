"""Every chat template trl ships, against a small corpus of conversations: what renders, and the tables.

    .venv/bin/python tests/data/chat_template_cases.py            # print the tables
    .venv/bin/python tests/data/chat_template_cases.py --write    # and rewrite them in docs/chat_templates.md

The tests in test_chat_templates.py use the same corpus and tokenizers. Each template runs on
the embedded model's tokenizer (SmolLM2, eos <|im_end|>) with the template's special tokens
added, so that every marker the template writes is one token, as in the model it comes from.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import re
import sys
from pathlib import Path

from whetstone.data.records import Message, Record, ToolCall
from whetstone.data.render import IGNORE, Rendered, end_of_turn_ids, message_dicts, render_sequences
from whetstone.errors import WhetstoneError

TEMPLATES = importlib.resources.files("trl") / "chat_templates"
DOC = Path(__file__).resolve().parents[2] / "docs" / "chat_templates.md"

# <|im_end|>, <|turn>, <turn|>, <｜end▁of▁sentence｜>, <start_of_turn>: the shapes of special tokens in templates.
SPECIAL = re.compile(r"<\|[^<>|\s'\"]+\|>|<\|[^<>|\s'\"]+>|<[^<>|\s'\"]+\|>|<｜[^<>｜]+｜>|<(?:start|end)_of_turn>")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

CORPUS = {
    "chat": Record("chat", "corpus:chat", messages=(
        Message("user", "Name a prime number."),
        Message("assistant", "Seven is prime."),
        Message("user", "And an even one?"),
        Message("assistant", "Two is the only even prime."),
    )),
    "system": Record("chat", "corpus:system", messages=(
        Message("system", "You answer in one short sentence."),
        Message("user", "What is the capital of France?"),
        Message("assistant", "Paris is the capital of France."),
        Message("user", "And of Italy?"),
        Message("assistant", "Rome is the capital of Italy."),
        Message("user", "Which is further south?"),
        Message("assistant", "Rome lies further south."),
    )),
    "tools": Record("chat", "corpus:tools", tools=(WEATHER,), messages=(
        Message("user", "Is it warm in Paris today?"),
        Message("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, "call_1"),)),
        Message("tool", '{"temp_c": 24}', tool_call_id="call_1", name="get_weather"),
        Message("assistant", "Yes, it is 24 degrees in Paris."),
        Message("user", "Thanks. Should I take a coat?"),
        Message("assistant", "No coat needed at 24 degrees."),
    )),
    "reasoning": Record("chat", "corpus:reasoning", messages=(
        Message("user", "What is 17 times 3?"),
        Message("assistant", "51.", reasoning="17 times 3 is 30 plus 21, so 51."),
        Message("user", "Now add 9."),
        Message("assistant", "60.", reasoning="51 plus 9 is 60."),
    )),
    "empty": Record("chat", "corpus:empty", messages=(
        Message("user", "Say nothing."),
        Message("assistant", ""),
    )),
}


def template_names() -> list[str]:
    """Every template trl ships that is not a training partner (those are compared in mask_parity)."""
    return sorted(p.name.removesuffix(".jinja") for p in TEMPLATES.iterdir()
                  if p.name.endswith(".jinja") and not p.name.endswith("_training.jinja"))


def training_partner(name: str) -> str | None:
    partner = TEMPLATES / f"{name}_training.jinja"
    return partner.read_text() if partner.is_file() else None


@functools.cache
def _base_tokenizer():
    from whetstone.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@functools.cache
def template_tokenizer(name: str, training: bool = False):
    """The embedded tokenizer with trl's `name` template (or its training partner) and the template's special tokens."""
    text = training_partner(name) if training else (TEMPLATES / f"{name}.jinja").read_text()
    tokenizer = copy.deepcopy(_base_tokenizer())
    tokenizer.add_tokens(sorted(set(SPECIAL.findall(text))), special_tokens=True)
    tokenizer.chat_template = text
    return tokenizer


@functools.cache
def outcome(name: str, conversation: str, reasoning: str = "auto") -> list[Rendered] | WhetstoneError:
    """The examples `conversation` renders to under template `name`, or the WhetstoneError that refuses it."""
    try:
        return render_sequences(CORPUS[conversation], template_tokenizer(name), None, reasoning=reasoning)
    except WhetstoneError as exc:
        return exc


def supervised_spans(tokenizer, rendered: Rendered) -> list[str]:
    """The decoded text of each contiguous run of supervised tokens."""
    spans, run = [], []
    for token, label in zip(rendered.input_ids + [None], rendered.labels + [IGNORE]):
        if label != IGNORE:
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans


def features_row(name: str) -> list[str]:
    """template | chat | system | tools | reasoning | prefix-stable: Y, or N with the reason."""
    cells = [_cell(outcome(name, c)) for c in ("chat", "system", "tools")]
    cells.append(_cell(outcome(name, "reasoning", "keep")))
    chat = outcome(name, "system")
    cells.append("-" if isinstance(chat, WhetstoneError) else "Y" if len(chat) == 1 else f"N ({len(chat)} sequences)")
    return [name] + cells


def _cell(result) -> str:
    if not isinstance(result, WhetstoneError):
        return "Y"
    reason = str(result).split(": ", 1)[1]
    reason = re.split(r"(?<=[a-z)]) \(|\. |: ", reason)[0] if "failed to render" not in reason else reason
    return "N: " + reason.split(" Check data.chat_template")[0].replace("|", "\\|")


# ----- mask parity with trl's training templates -------------------------------------------------------------


def training_spans(name: str, conversation: str) -> list[str]:
    """Supervised text per turn under trl's training template: return_assistant_tokens_mask, decoded per run."""
    tokenizer = template_tokenizer(name, training=True)
    record = CORPUS[conversation]
    out = tokenizer.apply_chat_template(message_dicts(record.messages), tools=list(record.tools) or None,
                                        tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    labels = [t if m else IGNORE for t, m in zip(ids, mask)]
    return supervised_spans(tokenizer, Rendered(ids, labels, False, len(ids)))


def whetstone_spans(name: str, conversation: str) -> list[str]:
    tokenizer = template_tokenizer(name)
    result = outcome(name, conversation)
    if isinstance(result, WhetstoneError):
        raise result
    return [span for rendered in result for span in supervised_spans(tokenizer, rendered)]


# Where trl's training template and whetstone deliberately train a turn differently, beyond the generic rules in
# explain_difference. Each is a case where trl renders the whole conversation once, so earlier turns are trained in
# their history form, while whetstone trains every turn as the model generates it (docs/chat_templates.md).
HISTORY_FORM = {
    "gptoss": "trl trains earlier turns in history form (<|end|>, analysis dropped); whetstone as generated "
              "(<|return|>)",
    "glm4moe": "trl trains earlier turns without the reasoning the template drops from history (and ends them with "
               "the next <|user|>); whetstone keeps the reasoning and appends EOS",
}
EMPTY_THINK = re.compile(r"^\s*<think>\s*</think>\s*")


@functools.cache
def parity_context(name: str) -> tuple[str, list[str], str]:
    """(the text add_generation_prompt adds, the end-of-turn tokens' text, EOS's text) under template `name`."""
    tokenizer = template_tokenizer(name)
    user = [{"role": "user", "content": "Hi."}]
    with_prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(user, tokenize=False)
    common = next((k for k, (a, b) in enumerate(zip(with_prompt, without)) if a != b), len(without))
    generation = with_prompt[common:]  # Phi-3 closes a conversation with EOS, so compare up to where they part
    return generation, [tokenizer.decode([i]) for i in end_of_turn_ids(tokenizer)], tokenizer.eos_token


def explain_difference(name: str, trl: str, ours: str) -> list[str]:
    """Why one turn's supervised text differs between trl's training template and whetstone: [] when equal.

    Each rule removes one kind of deliberate difference; what none removes is 'unexplained'.
    """
    generation, ends, eos = parity_context(name)
    reasons = []
    think = EMPTY_THINK.match(trl)
    if think and not EMPTY_THINK.match(ours):
        trl = trl[think.end():]
        reasons.append("empty think block: trl supervises it, whetstone leaves the template's insert unsupervised")
    lead = next((p for p in range(len(trl), 0, -1) if trl[:p] in generation and not ours.startswith(trl[:p])
                 and trl[p:].startswith(ours[:1])), 0)
    if lead:
        trl = trl[lead:]
        reasons.append("trl also supervises text of the generation prompt (given at inference, never generated)")
    last = next((e for e in ends if ours.endswith(e)), None)
    if trl != ours and last and last in trl and not trl.endswith(last):
        trl = trl[: trl.rindex(last) + len(last)]
        reasons.append("trl also supervises template text after the end-of-turn token")
    if trl != ours and ours.startswith(trl) and ours[len(trl):] in ends:
        reasons.append(f"whetstone also supervises the turn's end token {ours[len(trl):]} (trl leaves it out)")
        ours = trl
    closing = next(iter(re.findall(f"(?:{SPECIAL.pattern})$", trl)), None)
    if trl != ours and ours.endswith(eos) and closing and trl[: -len(closing)] == ours[: -len(eos)]:
        reasons.append(f"the finished turn has no end token: whetstone appends EOS, trl supervises the next "
                       f"message's {closing}")
        ours = trl
    if trl != ours and ours.endswith(trl) and trl:
        extra = ours[: -len(trl)]
        if re.search(r"</think>|<channel\|>", extra):
            reasons.append("reasoning: whetstone trains the turn with the reasoning it generates; trl's one render "
                           "trains it as history, where the template drops its reasoning")
        else:
            reasons.append(f"whetstone also supervises {extra!r}, which the template writes after a tool result "
                           f"but its generation prompt does not give; trl leaves it out")
        ours = trl
    if trl != ours:
        reasons.append(HISTORY_FORM.get(name, f"unexplained: trl {trl!r} vs whetstone {ours!r}"))
    return reasons


def parity_rows() -> list[list[str]]:
    """template | conversation | turns | differences (reason: count)."""
    rows = []
    for name in template_names():
        if training_partner(name) is None:
            continue
        for conversation in CORPUS:
            rows.append([name, conversation] + _parity_cells(name, conversation))
    return rows


def _parity_cells(name: str, conversation: str) -> list[str]:
    try:
        ours = whetstone_spans(name, conversation)
    except WhetstoneError as exc:
        return ["-", "whetstone refuses: " + _cell(exc)[3:]]
    try:
        trl = training_spans(name, conversation)
    except Exception as exc:  # a training template that fails is trl's finding, reported as such
        return [str(len(ours)), f"trl's training template fails: {type(exc).__name__}"]
    if len(trl) != len(ours):
        return [f"{len(trl)} vs {len(ours)}", "turn count differs: " + _short(trl, ours)]
    reasons: dict[str, int] = {}
    for a, b in zip(trl, ours):
        for reason in explain_difference(name, a, b):
            reasons[reason] = reasons.get(reason, 0) + 1
    return [str(len(ours)), "; ".join(f"{r} (x{n})" for r, n in reasons.items()).replace("|", "\\|") or "identical"]


def _short(trl: list[str], ours: list[str]) -> str:
    return f"trl {trl!r} vs whetstone {ours!r}".replace("|", "\\|")


# ----- the document --------------------------------------------------------------------------------------------


def features_table() -> str:
    lines = ["| template | chat | system | tools | reasoning (keep) | prefix-stable |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in map(features_row, template_names())]
    return "\n".join(lines)


def parity_table() -> str:
    lines = ["| template | conversation | turns | trl training template vs whetstone |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("\n", "\\n") for cell in row) + " |" for row in parity_rows()]
    return "\n".join(lines)


def write_doc(text: str) -> str:
    """`text` with the two generated tables replaced between their markers."""
    for marker, table in (("features", features_table()), ("parity", parity_table())):
        start, end = f"<!-- {marker} table: generated -->", f"<!-- end {marker} table -->"
        head, rest = text.split(start)
        text = head + start + "\n" + table + "\n" + end + rest.split(end)[1]
    return text


if __name__ == "__main__":
    if "--write" in sys.argv:
        DOC.write_text(write_doc(DOC.read_text()))
    else:
        print(features_table() + "\n\n" + parity_table())
