"""File readers: turn a data file (or a Hugging Face dataset) into rows.

A reader yields, in file order, either a ``Row`` (one JSON object, CSV row, ...)
or a ``Problem`` for a row that could not be read (invalid JSON, invalid UTF-8,
a value that is not an object). One bad row never stops the file: JSONL, CSV
and TSV are decoded line by line, so memory stays bounded whatever the file
size. Something that makes the *rest* of the file unreadable (a truncated gzip
stream, a JSON array with a syntax error, a corrupt Parquet file) raises
``WhetstoneError`` instead, because silently training on half a file is worse
than stopping.

Origins are what the user needs to find the row: ``"path:LINE"`` (1-based
physical line; for CSV the line where the row starts), ``"path:item N"`` for
the N-th element of a JSON array, ``"path:row N"`` for Parquet, and
``"hf:NAME:SPLIT:row N"`` for Hugging Face datasets.

Two limits keep a hostile or broken file from exhausting memory, and each ends in
a sentence naming the file: one line or JSON-array element may hold at most
``$WHETSTONE_MAX_RECORD_BYTES`` bytes (64 MiB), and a ``.gz`` may inflate to at
most ``$WHETSTONE_MAX_GZIP_RATIO`` times its compressed size (100: text compresses
3-10x, a gzip bomb about 1000x).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import socket
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn
from urllib.parse import urlparse

from whetstone.errors import Problem, WhetstoneError

# Extensions we read, after stripping an optional ".gz".
FILE_KINDS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}

# A single CSV cell may hold a long document; the stdlib default (128 KiB) is
# too small for that, while an unbounded limit lets one unclosed quote swallow
# the whole file into memory. 32 MiB is the compromise.
_CSV_FIELD_LIMIT = 32 * 1024 * 1024

# A bare name such as "imdb" or "org/dataset" that is not an existing file.
_HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

_HUB_TIMEOUT_S = 3.0

_MAX_RECORD_BYTES = 64 * 1024 * 1024
_MAX_GZIP_RATIO = 100


@dataclass(frozen=True)
class Row:
    """One raw row of a data file, before any format is applied.

    ``line`` is the number in ``origin`` (line, item or row number), kept as an
    int so that checks over millions of rows can store it compactly.
    ``untyped`` is True for CSV/TSV, whose cells are all strings: formats then
    accept "true"/"false" for booleans and JSON text for lists.
    """

    origin: str
    line: int
    data: dict[str, Any]
    untyped: bool = False


Item = Row | Problem


@dataclass(frozen=True)
class Source:
    """Where rows come from: a local file of one kind, or a HF dataset."""

    kind: str  # jsonl | json | csv | tsv | parquet | hf
    path: str  # file path, or the dataset name for "hf"
    compressed: bool = False
    split: str = "train"

    @property
    def unit(self) -> str:
        """What the number in an origin counts: "line", "item" or "row"."""
        return {"json": "item", "parquet": "row", "hf": "row"}.get(self.kind, "line")


def resolve_source(spec: str) -> Source:
    """Decide how to read ``spec``: a file path, ``hf:NAME[:split]`` or a bare HF name.

    A missing file raises ``WhetstoneError`` naming the path; a name that looks
    like a HF dataset id and is not a file is taken as one.
    """
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        if not name:
            raise WhetstoneError(f"'{spec}' names no dataset; write hf:NAME or hf:NAME:SPLIT, e.g. hf:imdb:test.")
        return Source("hf", name, split=split or "train")
    base = spec[:-3] if spec.endswith(".gz") else spec
    kind = FILE_KINDS.get(os.path.splitext(base)[1].lower())
    if os.path.isdir(spec):
        raise WhetstoneError(f"{spec} is a directory; pass a data file ({_extensions()}).")
    if os.path.exists(spec):
        if kind is None:
            raise WhetstoneError(
                f"{spec}: cannot tell the file type from its extension; rename it to one of {_extensions()}."
            )
        return Source(kind, spec, compressed=spec.endswith(".gz"))
    if kind is None and _HF_NAME.match(spec):
        return Source("hf", spec)
    raise WhetstoneError(f"data file not found: {spec} (working directory {os.getcwd()}); check the path.")


def iter_rows(spec: str | Source) -> Iterator[Item]:
    """Yield every row (or row-level problem) of a file or dataset, in order."""
    source = spec if isinstance(spec, Source) else resolve_source(spec)
    return _READERS[source.kind](source)


def _extensions() -> str:
    return ", ".join(sorted(FILE_KINDS)) + " (optionally .gz)"


def _limit(variable: str, default: int) -> int:
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise WhetstoneError(f"${variable} is {value!r}; give a positive whole number, or unset it for {default}.")
    return int(value)


def max_record_bytes() -> int:
    """The most bytes one line or JSON-array element may hold ($WHETSTONE_MAX_RECORD_BYTES)."""
    return _limit("WHETSTONE_MAX_RECORD_BYTES", _MAX_RECORD_BYTES)


def _record_too_long(where: str, limit: int) -> WhetstoneError:
    return WhetstoneError(
        f"{where}: the record is longer than {limit} bytes, so it is not read into memory; if it is meant to be "
        f"that long, raise the limit with WHETSTONE_MAX_RECORD_BYTES={limit * 4}."
    )


class _BoundedInflate(io.RawIOBase):
    """A gzip stream that stops with an error past `ratio` times its compressed size: a gzip bomb cannot fill memory."""

    def __init__(self, path: str):
        self._ratio = _limit("WHETSTONE_MAX_GZIP_RATIO", _MAX_GZIP_RATIO)
        self._limit = self._ratio * max(os.path.getsize(path), 1)
        self._inner = gzip.open(path, "rb")
        self._path, self._total = path, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._inner.readinto(buffer)
        self._total += n
        if self._total > self._limit:
            raise WhetstoneError(
                f"{self._path}: the file inflates to more than {self._limit} bytes, over {self._ratio} times its "
                f"compressed size, which is what a gzip bomb does; if you trust the file, raise the limit with "
                f"WHETSTONE_MAX_GZIP_RATIO={self._ratio * 10}."
            )
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


def _open_binary(source: Source) -> BinaryIO:
    try:
        if source.compressed:
            return io.BufferedReader(_BoundedInflate(source.path))  # type: ignore[return-value]
        return open(source.path, "rb")
    except OSError as exc:
        raise WhetstoneError(f"cannot open {source.path}: {exc.strerror or exc}.") from exc


def _lines(source: Source) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw line) pairs; the line keeps its newline.

    Splitting bytes (not text) on b"\\n" keeps one bad byte from affecting more
    than its own line, and keeps Unicode line separators inside JSON strings.
    """
    number = 0
    limit = max_record_bytes()
    with _open_binary(source) as handle:
        try:
            # readline(limit + 1) never holds more than the limit, however long the line really is.
            while line := handle.readline(limit + 1):
                number += 1
                if len(line) > limit:
                    raise _record_too_long(f"{source.path}:{number}", limit)
                yield number, line
        except (EOFError, OSError, zlib.error) as exc:
            # gzip raises these when the stream is cut short or corrupt; every
            # line after this point is lost, so stop loudly.
            raise WhetstoneError(
                f"{source.path}: the file is truncated or corrupt after line {number} ({exc}); "
                "re-create or re-download it."
            ) from exc


def _decode(raw: bytes, origin: str, first: bool) -> str | Problem:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem(origin, None, f"invalid UTF-8 at byte {exc.start + 1} of the line; re-save the file as UTF-8")
    if first and text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark written by some Windows editors
    return text


def _read_jsonl(source: Source) -> Iterator[Item]:
    decoder = json.JSONDecoder()
    path = source.path
    for number, raw in _lines(source):
        if raw.isspace():
            continue  # blank lines are common at the end of files; not an error
        origin = f"{path}:{number}"
        text = _decode(raw, origin, number == 1)
        if isinstance(text, Problem):
            yield text
            continue
        text = text.rstrip("\r\n")
        if not text or text.isspace():
            continue  # e.g. a line holding only a byte-order mark
        try:
            value = decoder.decode(text)
        except json.JSONDecodeError as exc:
            reason = f"invalid JSON at column {exc.colno}: {exc.msg}"
            if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
                reason += "; the line ends before the JSON value does"
            if not raw.endswith(b"\n"):
                reason += " (it is the last line and has no newline: the file may be truncated)"
            yield Problem(origin, None, reason)
            continue
        except RecursionError:
            yield Problem(origin, None, "invalid JSON: nested too deeply")
            continue
        if not isinstance(value, dict):
            yield Problem(origin, None, f"expected a JSON object {{...}}, got {_json_type(value)}")
            continue
        yield Row(origin, number, value)


def _read_json(source: Source) -> Iterator[Item]:
    """Read a file holding one JSON array of objects.

    The array is parsed element by element with ``raw_decode`` so that a
    syntax error can be located by element and line. A file that does not
    start with "[" is read as JSON Lines, which is what most ".json" training
    files really are. An array is read into memory whole: use JSON Lines for
    files larger than memory.
    """
    with _open_binary(source) as handle:
        try:
            head = handle.read(4096)
        except (EOFError, OSError, zlib.error) as exc:
            raise WhetstoneError(f"{source.path}: the file is truncated or corrupt ({exc}).") from exc
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        yield from _read_jsonl(source)
        return
    with _open_binary(source) as handle:
        try:
            data = handle.read()
        except (EOFError, OSError, zlib.error) as exc:
            raise WhetstoneError(f"{source.path}: the file is truncated or corrupt ({exc}).") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise WhetstoneError(f"{source.path}:{line}: invalid UTF-8; re-save the file as UTF-8.") from exc
    yield from _parse_json_array(text, source.path)


_WS = re.compile(r"[ \t\r\n]*")


def _skip_space(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]  # "*" always matches


def _parse_json_array(text: str, path: str) -> Iterator[Item]:
    decoder = json.JSONDecoder()
    limit = max_record_bytes()
    pos = _skip_space(text, 0) + 1  # just after "["
    item = 0
    while True:
        pos = _skip_space(text, pos)
        if text.startswith("]", pos):
            rest = _skip_space(text, pos + 1)
            if rest != len(text):
                _array_error(path, text, rest, item, "unexpected text after the closing ']'")
            return
        item += 1
        if item > 1:
            if not text.startswith(",", pos):
                _array_error(path, text, pos, item, "expected ',' or ']' before it")
            pos = _skip_space(text, pos + 1)
        start = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            _array_error(path, text, exc.pos, item, exc.msg)
        except RecursionError:
            _array_error(path, text, pos, item, "nested too deeply")
        if pos - start > limit:  # characters, not bytes: the text is decoded already, and it is close enough
            raise _record_too_long(f"{path}:{text.count(chr(10), 0, start) + 1} (array element {item})", limit)
        origin = f"{path}:item {item}"
        if isinstance(value, dict):
            yield Row(origin, item, value)
        else:
            yield Problem(origin, None, f"expected a JSON object {{...}}, got {_json_type(value)}")


def _array_error(path: str, text: str, pos: int, item: int, msg: str) -> NoReturn:
    line = text.count("\n", 0, pos) + 1
    hint = " (the file ends early: it may be truncated)" if pos >= len(text) else ""
    raise WhetstoneError(
        f"{path}:{line}: invalid JSON in array element {item}: {msg}{hint}; "
        "elements after this point cannot be read. Fix the file, or convert it to JSON Lines."
    )


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _read_delimited(source: Source) -> Iterator[Item]:
    """Read CSV/TSV with a header row; each cell is a string.

    Lines are decoded one at a time with ``surrogateescape`` so that a bad byte
    cannot derail the CSV parser; rows that touch such a line are reported as
    problems afterwards.
    """
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    bad_lines: set[int] = set()
    counter = {"line": 0}  # the last physical line read, shared with the loop below

    def text_lines() -> Iterator[str]:
        for number, raw in _lines(source):
            counter["line"] = number
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad_lines.add(number)
                text = raw.decode("utf-8", "surrogateescape")
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield text

    dialect = "excel-tab" if source.kind == "tsv" else "excel"
    reader = csv.reader(text_lines(), dialect=dialect)
    header: list[str] | None = None
    start = 1  # physical line where the next row begins
    path = source.path
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Problem(f"{path}:{start}", None, f"malformed {source.kind.upper()} row: {exc}")
            start = counter["line"] + 1
            continue
        row_start, start = start, reader.line_num + 1
        if not cells:
            continue  # blank line
        origin = f"{path}:{row_start}"
        touched = [n for n in range(row_start, reader.line_num + 1) if n in bad_lines] if bad_lines else []
        if touched:
            if header is None:
                raise WhetstoneError(f"{origin}: the header row is not valid UTF-8; re-save the file as UTF-8.")
            yield Problem(origin, None, f"invalid UTF-8 on line {touched[0]}; re-save the file as UTF-8")
            continue
        if header is None:
            header = [name.strip() for name in cells]
            duplicates = sorted({n for n in header if header.count(n) > 1})
            if duplicates or "" in header:
                what = f"repeats {duplicates}" if duplicates else "has an empty column name"
                raise WhetstoneError(f"{origin}: the header row {what}; give every column a unique name.")
            continue
        if len(cells) != len(header):
            spans = ""
            if reader.line_num > row_start:
                spans = f"; the row runs from line {row_start} to {reader.line_num}: is a quote left open?"
            yield Problem(
                origin,
                None,
                f"row has {len(cells)} cells but the header has {len(header)} columns "
                f"({', '.join(header)}); check the delimiter and quoting{spans}",
            )
            continue
        yield Row(origin, row_start, dict(zip(header, cells)), untyped=True)


def _read_parquet(source: Source) -> Iterator[Item]:
    import pyarrow as pa  # lazy: pyarrow costs ~0.3 s to import
    import pyarrow.parquet as pq

    try:
        if source.compressed:
            # Parquet needs random access, so a .parquet.gz is inflated in memory.
            with _open_binary(source) as handle:
                target: Any = io.BytesIO(handle.read())
        else:
            target = source.path
        parquet = pq.ParquetFile(target)
        number = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for value in batch.to_pylist():
                number += 1
                yield Row(f"{source.path}:row {number}", number, value)
    except (pa.ArrowException, EOFError, OSError, zlib.error) as exc:
        raise WhetstoneError(f"{source.path}: not a readable Parquet file ({exc}); re-create it.") from exc


def _read_hf(source: Source) -> Iterator[Item]:
    """Read a Hugging Face dataset split, failing fast (never hanging) when offline."""
    name = source.path
    offline = any(
        os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if not offline and not _hub_reachable():
        _go_offline()  # otherwise `datasets` retries its HTTP calls for minutes
        offline = True
    import datasets  # lazy: importing datasets costs seconds

    try:
        dataset = datasets.load_dataset(name, split=source.split)
    except Exception as exc:  # noqa: BLE001 - `datasets` raises many unrelated types
        if offline:
            why = "the Hugging Face Hub is unreachable (offline) and there is no cached copy"
        else:
            why = f"loading it as a Hugging Face dataset failed ({(str(exc) or type(exc).__name__).splitlines()[0]})"
        raise WhetstoneError(
            f"could not load '{name}' (split '{source.split}'): it is not a local file, and {why}; "
            "check the path or name, or download the dataset where the Hub is reachable."
        ) from exc
    for number, value in enumerate(dataset, start=1):
        yield Row(f"hf:{name}:{source.split}:row {number}", number, dict(value))


def _go_offline() -> None:
    """Make huggingface_hub and datasets use the local cache only.

    Both read HF_HUB_OFFLINE once, when imported: the variable covers later
    imports, the module flags cover earlier ones.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module in ("huggingface_hub.constants", "datasets.config"):
        if module in sys.modules:
            sys.modules[module].HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


_READERS: dict[str, Callable[[Source], Iterator[Item]]] = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_delimited,
    "tsv": _read_delimited,
    "parquet": _read_parquet,
    "hf": _read_hf,
}


def _hub_reachable() -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_HUB_TIMEOUT_S):
            return True
    except OSError:
        return False
