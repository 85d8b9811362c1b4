"""Records -> token ids and labels, with the model's chat template.

Each assistant turn is supervised on exactly the text the model generates for it at
inference: the prompt part of turn i is template(messages[:i], add_generation_prompt)
and the supervised part is what template(messages[:i+1]) adds after it. Each piece is
tokenized on its own, so train and serve see the same token boundary.

A conversation is one sequence while the template renders it as growing prefixes.
Where the template re-renders history (Qwen3 and gpt-oss drop earlier turns'
reasoning, for example), the turn starts a new sequence whose prompt is the history as
the template renders it then: one record may become several examples
(docs/chat_templates.md).

A turn is supervised through its end-of-turn token (end_of_turn_ids: <|im_end|>,
<|eot_id|>, <end_of_turn>, ...); we append EOS where a template emits none, so the
tuned model learns to stop. An empty think block the template inserts on its own is
template text, not the model's, and stays unsupervised.
"""

from __future__ import annotations

import itertools
import json
import re
import weakref
from dataclasses import dataclass

from whetstone.data.records import Message, Record, ToolCall
from whetstone.errors import WhetstoneError

IGNORE = -100  # the label PyTorch's cross_entropy skips

Pieces = list[tuple[str, bool]]  # (text, supervised), in order


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]  # IGNORE where the token is not supervised
    truncated: bool  # the example was longer than max_length
    n_full_tokens: int  # length before truncation
    distill: bool = False  # data.replay.distill: the labels' positions learn the base model's distribution instead

    @property
    def n_supervised(self) -> int:
        """Tokens that carry a loss. The first token has no predecessor, so never counts."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)


def render_sequences(record: Record, tokenizer, max_length: int | None, train_on_prompt: bool = False,
                     reasoning: str = "auto") -> list[Rendered]:
    """The training examples of one `text` or `chat` record, each truncated to `max_length`.

    A chat record gives one example per run of turns the template renders as growing
    prefixes (usually one); `reasoning` is data.reasoning (keep, drop or auto).
    """
    if record.kind == "text":
        ids = tokenizer(record.text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        return [_truncate(ids, list(ids), max_length)]
    if record.kind != "chat":
        raise WhetstoneError(
            f"{record.origin}: a {record.kind} record cannot be used for SFT; it needs text or a conversation."
        )
    try:
        sequences = chat_sequences(tokenizer, message_dicts(record.messages, reasoning), record.tools,
                                   require_reasoning=reasoning == "keep")
    except WhetstoneError as exc:
        raise WhetstoneError(f"{record.origin}: {exc}") from None
    return [_truncate(*_encode(tokenizer, pieces, train_on_prompt), max_length) for pieces in sequences]


def render_record(record: Record, tokenizer, max_length: int | None, train_on_prompt: bool = False) -> Rendered:
    """One example for a `text` or `chat` record, truncated to `max_length` (eval, scoring, audit).

    Where the template re-renders history and the record makes several training examples
    (render_sequences), this is the last of them: it holds the whole conversation, with
    only the last run of assistant turns supervised.
    """
    return render_sequences(record, tokenizer, max_length, train_on_prompt)[-1]


def render_prompt(tokenizer, messages: list[dict], tools=None) -> str:
    """The text a model continues to answer `messages` (for generation), showing it `tools` when given."""
    return _template(tokenizer, messages, add_generation_prompt=True, tools=tools)


def render_chat_pieces(tokenizer, messages: list[dict], tools=()) -> Pieces:
    """The pieces of the last sequence of `messages`: the whole conversation, with its last turn(s) supervised."""
    return chat_sequences(tokenizer, messages, tools)[-1]


def chat_sequences(tokenizer, messages: list[dict], tools=(), require_reasoning: bool = False) -> list[Pieces]:
    """Split a conversation into sequences of (text, supervised) pieces, one supervised piece per assistant turn.

    Turn i's piece is what template(messages[:i+1]) adds after the generation prompt
    template(messages[:i], add_generation_prompt). While each prompt starts with the text
    rendered so far, the turns share one sequence; when it does not, turn i starts a new one.
    """
    sequences: list[Pieces] = []
    pieces: Pieces = []
    rendered = ""
    ends = [tokenizer.decode([i]) for i in _template_turn_ends(tokenizer)]
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _template(tokenizer, messages[:i], True, tools)
        full = _template(tokenizer, messages[: i + 1], False, tools)
        boundary = _generation_start(prompt, full)
        _check_turn(messages, i, prompt, full[boundary:], tools, require_reasoning)
        if pieces and not prompt.startswith(rendered):
            # Text after the last turn's end token may close the conversation (Phi-3 appends EOS);
            # the next prompt replaces it. The turn itself must be rendered as it was.
            rendered = _drop_closing_text(pieces, rendered, ends, prompt)
        if not prompt.startswith(rendered) or boundary < len(rendered):
            # The template renders the history differently once this turn follows it: this turn
            # starts a new sequence whose prompt is the history as inference sees it.
            sequences.append(pieces)
            pieces, rendered = [], ""
        pieces += _turn_pieces(full[len(rendered) : boundary], full[boundary:])
        rendered = full
    tail = _template(tokenizer, messages, False, tools)
    if tail.startswith(rendered) and len(tail) > len(rendered):
        pieces.append((tail[len(rendered) :], False))
    return [p for p in sequences + [pieces] if p]


def _drop_closing_text(pieces: Pieces, rendered: str, ends: list[str], prompt: str) -> str:
    """Cut the last turn's piece after its last end-of-turn token where `prompt` goes on from there.

    Returns the text the sequence now holds (unchanged where cutting does not help).
    """
    text, supervised = pieces[-1]
    cut = max((text.rfind(end) + len(end) for end in ends if end in text), default=len(text))
    kept = rendered[: len(rendered) - len(text) + cut]
    if not supervised or not prompt.startswith(kept):
        return rendered
    pieces[-1] = (text[:cut], True)
    return kept


def _generation_start(prompt: str, full: str) -> int:
    """Where the model's text starts in `full`: after the generation prompt, or where the two part.

    A few templates render a finished last turn differently from the generation prompt
    (DeepSeek-R1-Distill prompts with "<think>\n" but renders answers without it); there
    the longest common prefix is the boundary.
    """
    if full.startswith(prompt):
        return len(prompt)
    n = 0
    while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
        n += 1
    opened = full.rfind("<", 0, n)
    if opened > full.rfind(">", 0, n):
        n = opened  # not inside a tag both happen to start: "<think>" against "<｜end▁of▁sentence｜>"
    return n


# "<think>\n\n</think>\n\n" and the like: a reasoning block the template opens and closes with nothing in it.
_EMPTY_THINK = re.compile(r"\s*<(?P<tag>[\w|]*(?:think|thought|reason)[\w|]*)>\s*</(?P=tag)>\s*", re.IGNORECASE)


_OPEN_THINK = re.compile(r"<[\w|]*(?:think|thought|reason)[\w|]*>\s*$", re.IGNORECASE)


def _turn_pieces(prompt: str, generated: str) -> Pieces:
    """The unsupervised prompt and the supervised turn; an empty think block the template inserts joins the prompt.

    The block may start in the generation prompt (Qwen3.5 and Nemotron prompt with "<think>").
    """
    opened = _OPEN_THINK.search(prompt)
    head = prompt[opened.start() :] if opened else ""
    empty = _EMPTY_THINK.match(head + generated)
    if empty and empty.end() > len(head):
        cut = empty.end() - len(head)
        prompt, generated = prompt + generated[:cut], generated[cut:]
    return [(prompt, False), (generated, True)]


def _check_turn(messages: list[dict], i: int, prompt: str, generated: str, tools, require_reasoning: bool) -> None:
    """Refuse a template that silently drops a feature the conversation uses (tools, tool results, reasoning)."""
    message = messages[i]
    for k, earlier in enumerate(messages[: i + 1]):
        text = earlier["content"].strip() if earlier["role"] != "tool" else ""
        if text and text not in (generated if k == i else prompt):
            raise WhetstoneError(
                f"the chat template does not render the text of message {k} (role {earlier['role']}); it may "
                f"expect content as a list of blocks, as vision templates do. Set data.chat_template to a "
                f"template that renders text messages."
            )
    for call in message.get("tool_calls", ()):
        if call["function"]["name"] not in generated:
            raise WhetstoneError(
                f"the chat template does not render assistant tool calls (message {i} calls "
                f"{call['function']['name']!r}, which its rendering leaves out), so the call cannot be trained. "
                f"Use a template that supports tool calling (data.chat_template), or remove the tool calls."
            )
    if tools and not any(m["role"] == "assistant" for m in messages[:i]):
        missing = [t["function"]["name"] for t in tools if t["function"]["name"] not in prompt]
        if missing:
            raise WhetstoneError(
                f"the chat template does not render the tools list (the record's tools {missing} are missing from "
                f"the prompt). Use a template that supports tool calling (data.chat_template), or remove `tools`."
            )
    for k, earlier in enumerate(messages[:i]):
        content = earlier["content"]
        if earlier["role"] == "tool" and content and content not in prompt and json.dumps(content) not in prompt:
            raise WhetstoneError(
                f"the chat template does not render tool results (message {k}, role tool, is missing from the "
                f"prompt). Use a template that supports tool calling (data.chat_template), or remove the tool turns."
            )
    reasoning = (message.get("reasoning_content") or "").strip()
    if require_reasoning and reasoning and reasoning not in generated:
        raise WhetstoneError(
            f"data.reasoning=keep, but the chat template does not render assistant reasoning (reasoning_content / "
            f"thinking of message {i} is missing from the turn), so it cannot be trained. Set data.reasoning=auto "
            f"(the template decides) or drop, or use a template that renders reasoning."
        )


def _encode(tokenizer, pieces: Pieces, train_on_prompt: bool) -> tuple[list[int], list[int]]:
    """Token ids and labels of one sequence: each piece tokenized on its own, assistant turns supervised."""
    ids: list[int] = []
    labels: list[int] = []
    for text, supervised in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        if supervised:
            piece, piece_labels = supervise_turn(tokenizer, piece)
        else:
            piece_labels = list(piece) if train_on_prompt else [IGNORE] * len(piece)
        ids += piece
        labels += piece_labels
    return ids, labels


def supervise_turn(tokenizer, ids: list[int]) -> tuple[list[int], list[int]]:
    """Ids and labels of an assistant turn: supervised through its last end-of-turn token.

    Template text after it (a newline, Phi-3's closing EOS) is not the model's to predict:
    generation has stopped by then. A turn without one gets EOS appended, supervised.
    """
    ends = _template_turn_ends(tokenizer)
    stops = [k for k, t in enumerate(ids) if t in ends] or [k for k, t in enumerate(ids) if t == tokenizer.eos_token_id]
    if stops:
        end = stops[-1] + 1
        return ids, ids[:end] + [IGNORE] * (len(ids) - end)
    ids = ids + [tokenizer.eos_token_id]
    return ids, list(ids)


def _truncate(ids: list[int], labels: list[int], max_length: int | None) -> Rendered:
    n_full = len(ids)
    truncated = max_length is not None and n_full > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return Rendered(ids, labels, truncated, n_full)


def message_dicts(messages: tuple[Message, ...] | list[Message], reasoning: str = "auto") -> list[dict]:
    """Messages as the dicts chat templates read (OpenAI's shape, which transformers' templates follow).

    An assistant turn's reasoning goes in both `reasoning_content` (Qwen, DeepSeek) and `thinking`
    (gpt-oss), unless `reasoning` is "drop". Tool calls carry their arguments as a dict: templates
    serialize them themselves (`tojson`), so a JSON string would be quoted twice.
    """
    out = []
    for m in messages:
        d: dict = {"role": m.role, "content": m.content}
        if m.reasoning is not None and reasoning != "drop":
            d["reasoning_content"] = d["thinking"] = m.reasoning
        if m.tool_calls:
            d["tool_calls"] = [_tool_call_dict(call) for call in m.tool_calls]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


def _tool_call_dict(call: ToolCall) -> dict:
    d: dict = {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    if call.id is not None:
        d["id"] = call.id
    return d


_SENTINEL = "Whetstone probe 7319"  # assistant text no template changes: where it ends, the turn's end token follows
_turn_ends_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def end_of_turn_ids(tokenizer) -> list[int]:
    """The ids that end an assistant turn: the chat template's end-of-turn token(s), then EOS.

    Found from the template itself, not from a list of model families: the special token that
    follows a probe answer when it is the last turn (ChatML's <|im_end|>, Llama 3's <|eot_id|>,
    Gemma's <end_of_turn>, Phi-3's <|end|>, gpt-oss's <|return|>), when it is an earlier turn
    (gpt-oss's <|end|>), and the last special token of a tool call where neither appears
    (gpt-oss's <|call|>). A tokenizer without a template has only EOS.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return list(dict.fromkeys(_template_turn_ends(tokenizer) + eos))


def stop_ids(tokenizer) -> list[int]:
    """The ids generation stops at: end_of_turn_ids without the ones that close only a turn in the history.

    A model generating its turn ends it as a last turn does, or with a tool call. gpt-oss closes a turn in the
    history with <|end|>, but while generating, <|end|> only closes its analysis message before the final one,
    so generation stops at <|return|> and <|call|>. For every other template the two lists are the same.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    last, history, call = _turn_end_parts(tokenizer)
    return list(dict.fromkeys(last + call + (history if not last else []) + eos))


def _template_turn_ends(tokenizer) -> list[int]:
    """The template's end-of-turn ids, without EOS: what closes a last turn, a history turn, a tool call."""
    last, history, call = _turn_end_parts(tokenizer)
    return list(dict.fromkeys(last + history + call))


def _turn_end_parts(tokenizer) -> tuple[list[int], list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        return [], [], []
    key = (tokenizer.chat_template, tokenizer.eos_token_id, len(tokenizer))
    cached = _turn_ends_cache.get(tokenizer)
    if cached is not None and cached[0] == key:
        return cached[1]
    ends = _probe_turn_ends(tokenizer)
    _turn_ends_cache[tokenizer] = (key, ends)
    return ends


def _probe_turn_ends(tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(what closes a last turn, what closes a turn in the history, what closes a tool call when neither does)."""
    special = _special_ids(tokenizer)
    user = {"role": "user", "content": "Hi."}
    answer = {"role": "assistant", "content": _SENTINEL}
    found: list[list[int]] = []
    for messages in ([user, answer], [user, answer, user]):
        text = render_or_none(tokenizer, messages, add_generation_prompt=False)
        run: list[int] = []
        if text is not None and _SENTINEL in text:
            after = tokenizer(text.split(_SENTINEL, 1)[1].lstrip(), add_special_tokens=False)["input_ids"]
            run = list(itertools.takewhile(lambda i: i in special, after))
        # The last turn may close with several (Cohere2: <|END_RESPONSE|><|END_OF_TURN_TOKEN|>);
        # in the history only the first ends the turn (gpt-oss's <|end|> is followed by <|start|>).
        found.append(run if len(messages) == 2 else run[:1])
    last, history = found
    call = _tool_call_turn(tokenizer, special)
    return last, history, [call[-1]] if call and not set(call) & set(last + history) else []


def _tool_call_turn(tokenizer, special: set[int]) -> list[int]:
    """The special tokens of a probe tool-call turn, as the template renders it as the last turn."""
    tools = [{"type": "function", "function": {"name": "probe", "description": "A probe.",
                                               "parameters": {"type": "object", "properties": {}}}}]
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "id": "call_0", "function": {"name": "probe", "arguments": {}}}]}
    user = {"role": "user", "content": "Hi."}
    prompt = render_or_none(tokenizer, [user], add_generation_prompt=True, tools=tools)
    full = render_or_none(tokenizer, [user, call], add_generation_prompt=False, tools=tools)
    if prompt is None or full is None or not full.startswith(prompt):
        return []
    return [i for i in tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"] if i in special]


def _special_ids(tokenizer) -> set[int]:
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if token.special}


def render_or_none(tokenizer, messages: list[dict], add_generation_prompt: bool, tools=None) -> str | None:
    """The template's text for `messages`, or None where the template refuses them."""
    try:
        return _template(tokenizer, messages, add_generation_prompt, tools)
    except WhetstoneError:
        return None


def _template(tokenizer, messages: list[dict], add_generation_prompt: bool, tools=None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise WhetstoneError(
            "the model's tokenizer has no chat template, so chat records cannot be rendered. Set "
            "data.chat_template to a Jinja template, or use data.format=text for plain causal LM training."
        )
    from jinja2.exceptions import SecurityError, TemplateError

    # transformers renders templates in jinja2's ImmutableSandboxedEnvironment: a template cannot
    # reach Python internals or mutate its inputs. We turn its refusals into a user-facing error.
    try:
        return tokenizer.apply_chat_template(messages, tools=list(tools) if tools else None, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except SecurityError as exc:
        raise WhetstoneError(
            f"the chat template tried something the sandbox forbids ({exc}); it was not run. Use a template "
            f"from a source you trust, or set data.chat_template."
        ) from None
    except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        uses = _features(messages, tools)
        hint = f" The conversation uses {uses}, which this template may not support." if uses else ""
        raise WhetstoneError(f"the chat template failed to render: {exc}.{hint} Check data.chat_template.") from None


def _features(messages: list[dict], tools) -> str:
    """The template features a conversation relies on, for an error message."""
    used = [name for name, present in (
        ("a tools list", bool(tools)),
        ("assistant tool calls", any(m.get("tool_calls") for m in messages)),
        ("tool results (role tool)", any(m["role"] == "tool" for m in messages)),
        ("assistant reasoning", any("reasoning_content" in m for m in messages)),
        ("a system prompt", any(m["role"] == "system" for m in messages)),
    ) if present]
    return ", ".join(used)
