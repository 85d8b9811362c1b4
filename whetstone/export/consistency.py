"""Train/serve consistency: does the exported model see and stop on exactly what training taught it?

A fine-tuned chat model learns one token layout: the chat template's text, split into
tokens by one tokenizer, with every assistant turn ending in its end-of-turn token (EOS, or
the template's own: Gemma's <end_of_turn>, Phi-3's <|end|>). If the exported
tokenizer renders a conversation differently, or the server stops on another token,
the model is served a prompt it was never trained on, or never stops. These checks
render one probe conversation through the training path (data/render.py, the batch
collator) and through the exported tokenizer and compare token ids, not just text.

Pad equal to EOS (as in SmolLM2, where both are <|im_end|>) is accepted only when the
masking accounts for it, and that is checked, not assumed: in training the labels come
from rendering and padding is masked by position, so the EOS that ends a turn keeps
its label; at serving the attention mask comes from padding, so the <|im_end|> tokens
inside a ChatML prompt stay visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from whetstone.data.batches import collate
from whetstone.data.records import Message, Record
from whetstone.data.render import IGNORE, end_of_turn_ids, render_prompt, render_record
from whetstone.errors import WhetstoneError

# Two turns, a system message, digits, punctuation, accents and a newline: the places
# where templates and pre-tokenizers tend to disagree.
PROBE = (
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 12 plus 30? Reply with digits."},
    {"role": "assistant", "content": "42, as 12 + 30 = 42."},
    {"role": "user", "content": "And the café's name?"},
    {"role": "assistant", "content": "Le Zèbre.\nDone!"},
)


class ConsistencyError(WhetstoneError):
    """The exported model would be served differently from how it was trained."""

    def __init__(self, where: str, problems: list[str]):
        self.problems = problems
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{where}: the model would not be served the way it was trained:\n{body}\n"
            f"Use the tokenizer saved with the run (its adapter/ or model/ directory), with the same "
            f"data.chat_template the run was trained with."
        )


@dataclass
class ConsistencyReport:
    checks: list[str] = field(default_factory=list)  # what was verified, one sentence each
    notes: list[str] = field(default_factory=list)  # accepted differences worth knowing


def _probe_record() -> Record:
    return Record(kind="chat", origin="probe:1", messages=tuple(Message(m["role"], m["content"]) for m in PROBE))


def _token(tokenizer, token_id: int | None) -> str:
    if token_id is None:
        return "none"
    return f"{tokenizer.convert_ids_to_tokens(int(token_id))!r} (id {token_id})"


def check_consistency(train_tokenizer, served_tokenizer, stop_ids: list[int], where: str) -> ConsistencyReport:
    """Raise ConsistencyError listing every mismatch; return what was checked.

    `stop_ids`: the token ids the served model stops on (generation_config.eos_token_id,
    or the GGUF's EOS). `where` names the export in messages.
    """
    report = ConsistencyReport()
    problems: list[str] = []
    messages = [dict(m) for m in PROBE]

    # 1. Template: the same text for the whole conversation and for the generation prompt.
    if not getattr(served_tokenizer, "chat_template", None):
        problems.append("the exported tokenizer has no chat template; training rendered chats with one.")
    else:
        train_prompt = render_prompt(train_tokenizer, messages[:2])
        served_prompt = render_prompt(served_tokenizer, messages[:2])
        if train_prompt != served_prompt:
            problems.append(f"chat template: the generation prompt renders as {served_prompt[-60:]!r}; "
                            f"training rendered {train_prompt[-60:]!r}.")
        else:
            report.checks.append("chat template: the generation prompt renders to the same text")

    # 2. Tokens and labels: the full training path (render pieces, tokenize, supervise through EOS).
    eos = train_tokenizer.eos_token_id
    trained = render_record(_probe_record(), train_tokenizer, None)
    if not problems:
        served = render_record(_probe_record(), served_tokenizer, None)
        if served.input_ids != trained.input_ids:
            at = next((i for i, (a, b) in enumerate(zip(served.input_ids, trained.input_ids)) if a != b),
                      min(len(served.input_ids), len(trained.input_ids)))
            problems.append(f"tokenizer: the probe conversation tokenizes differently from token {at} on "
                            f"({len(served.input_ids)} vs {len(trained.input_ids)} tokens); check the vocabulary, "
                            f"merges and pre-tokenizer.")
        else:
            report.checks.append(f"tokens: the probe conversation gives the same {len(trained.input_ids)} token ids")

    # 3. EOS and end of turn: training ended every assistant turn with an end-of-turn token (EOS, or the
    # template's own, such as Gemma's <end_of_turn> or Phi-3's <|end|>); the server must stop on each of them.
    served_eos = served_tokenizer.eos_token_id
    ends = end_of_turn_ids(train_tokenizer)
    turn_ends = [t for t in [trained.labels[i] for i in range(len(trained.labels) - 1)
                             if trained.labels[i] != IGNORE and trained.labels[i + 1] == IGNORE] + trained.labels[-1:]
                 if t != IGNORE]
    unstopped = [t for t in dict.fromkeys(turn_ends) if t not in stop_ids]
    if served_eos != eos:
        problems.append(f"EOS: the exported tokenizer's EOS is {_token(served_tokenizer, served_eos)}; training "
                        f"ended assistant turns with {_token(train_tokenizer, eos)}.")
    elif eos not in stop_ids:
        problems.append(f"EOS: the exported model stops on {stop_ids}, which lacks the training EOS "
                        f"{_token(train_tokenizer, eos)}; it would not stop where it learned to.")
    elif not all(t in ends for t in turn_ends):
        problems.append(f"EOS: training supervised assistant turns that end in {turn_ends}, not in an end-of-turn "
                        f"token {ends}.")
    elif unstopped:
        names = ", ".join(_token(train_tokenizer, t) for t in unstopped)
        problems.append(f"EOS: the exported model stops on {stop_ids}, which lacks the end of turn {names} that "
                        f"ended training's assistant turns; it would not stop where it learned to.")
    else:
        names = ", ".join(_token(train_tokenizer, t) for t in dict.fromkeys(turn_ends or [eos]))
        report.checks.append(f"EOS: assistant turns end in {names} and the export stops on it")

    # 4. Pad: distinct from EOS, or masked by position so that EOS keeps its meaning.
    pad = served_tokenizer.pad_token_id
    if pad is None:
        problems.append("pad: the exported tokenizer has no pad token; batched serving needs one.")
    elif pad != eos:
        report.checks.append(f"pad: {_token(served_tokenizer, pad)} differs from EOS")
    else:
        problems += _check_pad_equal_eos(train_tokenizer, served_tokenizer, trained, report)
    if problems:
        raise ConsistencyError(where, problems)
    return report


def _check_pad_equal_eos(train_tokenizer, served_tokenizer, trained, report: ConsistencyReport) -> list[str]:
    """pad == EOS: prove that neither training nor serving masks an EOS for being a pad."""
    problems = []
    eos = train_tokenizer.eos_token_id
    short = render_record(_probe_record(), train_tokenizer, None)
    one_turn = Record(kind="chat", origin="probe:2",
                      messages=tuple(Message(m["role"], m["content"]) for m in PROBE[:3]))
    shorter = render_record(one_turn, train_tokenizer, None)
    batch = collate([shorter, short], eos)  # the shorter row is right-padded with EOS ids
    n = len(shorter.input_ids)
    kept = [int(batch["labels"][0, i]) for i in range(n) if shorter.labels[i] == eos]
    padded = batch["labels"][0, n:]
    if kept.count(eos) != shorter.labels.count(eos) or not bool((padded == IGNORE).all()):
        problems.append("pad == EOS: the collator masks EOS labels as padding, so the model never learns to stop.")
    prompt = render_prompt(served_tokenizer, [dict(m) for m in PROBE[:4]])  # has <|im_end|> inside
    side = served_tokenizer.padding_side
    served_tokenizer.padding_side = "left"
    try:
        enc = served_tokenizer([prompt, "x"], padding=True, add_special_tokens=False)
    finally:
        served_tokenizer.padding_side = side
    ids, mask = enc["input_ids"][0], enc["attention_mask"][0]
    inner = [m for t, m in zip(ids, mask) if t == eos]
    if not all(inner):
        problems.append("pad == EOS: serving masks the EOS tokens inside the prompt as padding.")
    if not problems:
        # Phi-3's template writes EOS only after a finished conversation, never inside a generation prompt.
        served = (f"serving keeps the {len(inner)} EOS tokens inside a prompt visible (mask from padding, not from "
                  f"ids)" if inner else "a generation prompt holds no EOS that padding could hide")
        report.checks.append(f"pad == EOS {_token(served_tokenizer, eos)}, accounted for: training keeps the "
                             f"EOS label of every turn (padding is masked by position), and {served}")
        report.notes.append("pad equals EOS: a server must pass the attention mask from padding, never infer it "
                            "from pad ids (transformers' generate does; llama.cpp does not pad).")
    return problems
