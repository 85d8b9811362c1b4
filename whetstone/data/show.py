"""`whetstone data show`: the first examples of a data file, token for token as the trainer sees them.

Records go through ``dataset.tokenize``, the sft objective's own preparation, so a
record the template splits into several sequences shows as several examples, and
one whose supervised tokens all fall past max_length is dropped here as in training.

Each example is decoded with its special tokens kept. Supervised tokens (label !=
-100) are green on a terminal and wrapped in ``[[...]]`` elsewhere (a pipe, a file);
special tokens are underlined on a terminal. A truncated example ends with the line
``... truncated at L tokens (N in full)``. ``--json`` prints one object per example:
``{"record": origin, "input_ids": [...], "labels": [...]}``.

Only a tokenizer is loaded, never weights: an embedded model's name, a model
directory, or a directory that holds only tokenizer files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from whetstone.config import EMBEDDED_MODEL, DataConfig
from whetstone.data.formats import RecordStream
from whetstone.data.render import IGNORE, Rendered
from whetstone.errors import DataError, WhetstoneError

DEFAULT_EXAMPLES = 3
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
OPEN, CLOSE = "[[", "]]"  # around supervised spans, without colour

_GREEN, _UNDERLINE, _RESET = "\x1b[32m", "\x1b[4m", "\x1b[0m"


@dataclass(frozen=True)
class ShowOptions:
    n: int = DEFAULT_EXAMPLES
    max_length: int = DataConfig.max_length
    reasoning: str = "auto"  # data.reasoning: keep | drop | auto
    format: str = "auto"

    def __post_init__(self):
        if self.n < 1:
            raise WhetstoneError(f"-n must be a number of examples >= 1, got {self.n}.")
        if self.max_length < 1:
            raise WhetstoneError(f"--max-length must be a positive number of tokens, got {self.max_length}.")


@dataclass
class Shown:
    """One example, or a record that gave none (``example`` None: truncation took every supervised token)."""

    origin: str
    example: Rendered | None
    part: int = 1  # which of the record's examples (a template that re-renders history makes several)
    parts: int = 1


def load_show_tokenizer(spec: str | None, chat_template_file: str | None = None):
    """The tokenizer of an embedded model name, a model directory, or a directory of tokenizer files alone."""
    template = _read_template(chat_template_file) if chat_template_file else None
    spec = spec or EMBEDDED_MODEL
    path = Path(spec).expanduser()
    if not (path.is_dir() and not (path / "config.json").is_file()):
        from whetstone.models import load_tokenizer  # lazy: imports transformers

        return load_tokenizer(spec, template)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise WhetstoneError(
            f"{spec} is a directory with neither a model (config.json) nor a tokenizer ({', '.join(TOKENIZER_FILES)}); "
            f"give a model directory, a tokenizer directory (e.g. one written by tokenizer.save_pretrained) or "
            f"{EMBEDDED_MODEL}."
        )
    from whetstone.models.load import load_tokenizer_files  # lazy: imports transformers

    return load_tokenizer_files(path, template)


def _read_template(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WhetstoneError(f"--chat-template: {path} does not exist; give a Jinja chat template file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WhetstoneError(f"--chat-template: cannot read {path} ({exc}); give a UTF-8 Jinja file.") from None
    if not text.strip():
        raise WhetstoneError(f"--chat-template: {path} is empty; give a Jinja chat template.")
    return text


def shown_examples(stream: RecordStream, tokenizer, options: ShowOptions) -> Iterator[Shown]:
    """The first ``options.n`` examples of ``stream`` (``open_records``), as the trainer tokenizes them."""
    from whetstone.data.dataset import DataStats, tokenize  # lazy: rendering pulls in transformers

    config = DataConfig(train=stream.path, format=stream.format, max_length=options.max_length,
                        reasoning=options.reasoning)
    shown = 0
    for parsed in stream:
        if parsed.record is None:
            raise DataError(parsed.problems, header=f"{parsed.origin} cannot be read, and training would stop on it",
                            fix="Fix the record; `whetstone data check` lists every problem of the file.")
        record = parsed.record
        if record.kind not in ("text", "chat"):
            raise WhetstoneError(
                f"{record.origin} is a {record.kind} record (format '{stream.format}'); `data show` shows the examples "
                f"of supervised fine-tuning, which are text and chat records. Pass --format if the format was "
                f"detected wrongly."
            )
        if record.kind == "chat" and not getattr(tokenizer, "chat_template", None):
            raise WhetstoneError(
                "the tokenizer has no chat template, so chat records cannot be rendered; pass --chat-template FILE "
                "(a Jinja template), or a model whose tokenizer has one."
            )
        examples = tokenize([record], tokenizer, config, DataStats()).examples
        if not examples:
            yield Shown(record.origin, None)
        for part, example in enumerate(examples, 1):
            yield Shown(record.origin, example, part, len(examples))
            shown += 1
            if shown == options.n:
                return


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens, the chat template's markers among them."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


def spans(tokenizer, example: Rendered) -> list[tuple[str, bool, bool]]:
    """The example's text as (text, supervised, special) runs of tokens."""
    special = special_ids(tokenizer)
    runs: list[tuple[list[int], bool, bool]] = []
    for token, label in zip(example.input_ids, example.labels):
        kind = (label != IGNORE, token in special)
        if runs and runs[-1][1:] == kind:
            runs[-1][0].append(token)
        else:
            runs.append(([token], *kind))
    return [(tokenizer.decode(ids, skip_special_tokens=False), sup, spec) for ids, sup, spec in runs]


def highlight(tokenizer, example: Rendered, colour: bool) -> str:
    """The decoded example with supervised spans marked: green (colour) or between [[ and ]]."""
    out: list[str] = []
    inside = False
    for text, supervised, special in spans(tokenizer, example):
        if colour:
            style = (_GREEN if supervised else "") + (_UNDERLINE if special else "")
            out.append(f"{style}{text}{_RESET}" if style else text)
            continue
        if supervised != inside:
            out.append(OPEN if supervised else CLOSE)
            inside = supervised
        out.append(text)
    if inside:
        out.append(CLOSE)
    return "".join(out)


def render_shown(items: Iterator[Shown], tokenizer, colour: bool) -> Iterator[str]:
    """Text lines: a header per example, its highlighted text, and a truncation mark."""
    for item in items:
        part = f" (part {item.part} of {item.parts})" if item.parts > 1 else ""
        if item.example is None:
            yield f"--- {item.origin}: no example: truncation removed every supervised token (the trainer drops it) ---"
            continue
        ex = item.example
        yield f"--- {item.origin}{part}: {len(ex.input_ids)} tokens, {ex.n_supervised} supervised ---"
        yield highlight(tokenizer, ex, colour)
        if ex.truncated:
            yield f"... truncated at {len(ex.input_ids)} tokens ({ex.n_full_tokens} in full)"


def json_line(item: Shown) -> str:
    """``{"record", "input_ids", "labels"}`` of one example, labels -100 where not supervised."""
    assert item.example is not None, "a record without an example has no JSON line"
    return json.dumps({"record": item.origin, "input_ids": item.example.input_ids, "labels": item.example.labels})
