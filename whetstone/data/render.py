"""Records -> token ids and labels, with the model's chat template.

A chat record is rendered turn by turn: the template is applied to growing
prefixes of the conversation and each new piece of text is tokenized on its own.
Assistant pieces are supervised; everything else gets the label -100. Tokenizing
pieces separately is deliberate: at inference the prompt ends exactly where an
assistant piece starts here, so train and serve see the same token boundary.

Every assistant turn ends with EOS (it is the template's end-of-turn token for
chat models; we append it when a template does not emit it), so the tuned model
learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from whetstone.data.records import Message, Record
from whetstone.errors import WhetstoneError

IGNORE = -100  # the label PyTorch's cross_entropy skips


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


def _as_dicts(messages: tuple[Message, ...] | list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise WhetstoneError(
            "the model's tokenizer has no chat template, so chat records cannot be rendered. Set "
            "data.chat_template to a Jinja template, or use data.format=text for plain causal LM training."
        )
    from jinja2.exceptions import SecurityError, TemplateError

    # transformers renders templates in jinja2's ImmutableSandboxedEnvironment: a template cannot
    # reach Python internals or mutate its inputs. We turn its refusals into a user-facing error.
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except SecurityError as exc:
        raise WhetstoneError(
            f"the chat template tried something the sandbox forbids ({exc}); it was not run. Use a template "
            f"from a source you trust, or set data.chat_template."
        ) from None
    except TemplateError as exc:
        raise WhetstoneError(f"the chat template failed to render: {exc}. Check data.chat_template.") from None


def render_chat_pieces(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, supervised) pieces.

    For assistant turn i the prompt part is template(messages[:i], add_generation_prompt)
    and the supervised part is what template(messages[:i+1]) adds after it.
    """
    pieces: list[tuple[str, bool]] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = _template(tokenizer, messages[:i], add_generation_prompt=True)
            full = _template(tokenizer, messages[: i + 1], add_generation_prompt=False)
            if not prompt.startswith(rendered) or not full.startswith(prompt):
                raise WhetstoneError(
                    "the chat template does not render conversations as growing prefixes, so assistant turns "
                    "cannot be located for label masking. Set data.chat_template to a prefix-stable template."
                )
            pieces.append((prompt[len(rendered) :], False))
            pieces.append((full[len(prompt) :], True))
            rendered = full
    tail = _template(tokenizer, messages, add_generation_prompt=False)
    if len(tail) > len(rendered):
        pieces.append((tail[len(rendered) :], False))
    return pieces


def _supervise_through_eos(ids: list[int], eos_id: int) -> tuple[list[int], list[int]]:
    """Labels for an assistant piece: supervised up to and including its first EOS.

    Template text after the EOS (such as a trailing newline) is not the model's to
    predict: generation has stopped by then.
    """
    if eos_id in ids:
        end = ids.index(eos_id) + 1
        return ids, ids[:end] + [IGNORE] * (len(ids) - end)
    ids = ids + [eos_id]
    return ids, list(ids)


def render_record(record: Record, tokenizer, max_length: int | None, train_on_prompt: bool = False) -> Rendered:
    """Token ids and labels for one `text` or `chat` record, truncated to `max_length`."""
    eos_id = tokenizer.eos_token_id
    if record.kind == "text":
        ids = tokenizer(record.text, add_special_tokens=True)["input_ids"] + [eos_id]
        labels = list(ids)
    elif record.kind == "chat":
        ids, labels = [], []
        for text, supervised in render_chat_pieces(tokenizer, _as_dicts(record.messages)):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            if supervised:
                piece, piece_labels = _supervise_through_eos(piece, eos_id)
            else:
                piece_labels = list(piece) if train_on_prompt else [IGNORE] * len(piece)
            ids += piece
            labels += piece_labels
    else:
        raise WhetstoneError(
            f"{record.origin}: a {record.kind} record cannot be used for SFT; it needs text or a conversation."
        )
    n_full = len(ids)
    truncated = max_length is not None and n_full > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return Rendered(ids, labels, truncated, n_full)


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The text a model continues to answer `messages` (for generation)."""
    return _template(tokenizer, messages, add_generation_prompt=True)
