"""Documents into chunks: sections (headings, man-page sections) split into paragraphs, with their line spans.

Every reader turns its format into ``Line``s (text, source line number, heading level) and one function cuts
them into chunks: a chunk is a run of whole paragraphs of one section, at most ``MAX_CHARS`` long (a longer
paragraph is a chunk of its own). ``line_start``/``line_end`` are the 1-based source lines of the chunk's first
and last text line; for ``.jsonl`` both are the record's line.

Inputs: ``.txt`` (paragraphs; a rendered man page, ``man ls | col -b``, by its sections), ``.md``, ``.html``,
manual pages in roff (``ls.1``, ``ls.1.gz``; see roff.py), ``.jsonl`` with a text field, and directories of them
(recursively, hidden entries skipped). Any of them may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser

from whetstone.data.readers import Row, iter_rows
from whetstone.data.synth.roff import Line, read_roff
from whetstone.errors import WhetstoneError

MAX_CHARS = 1000  # a chunk the embedded teacher (a 2k-token context) reads whole, with room to answer

KINDS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
         ".htm": "html", ".jsonl": "jsonl", ".ndjson": "jsonl", ".man": "roff", ".roff": "roff"}
_MAN_SUFFIX = re.compile(r"\.[1-9][a-z0-9]*$")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MAN_TEXT_HEADING = re.compile(r"^[A-Z][A-Z0-9 ,/&_-]{1,40}$")
_MAN_TEXT_FRAME = re.compile(r"^\S+\(\w+\)\s.*\S+\(\w+\)$|^\S.*\s{3,}\S+\(\w+\)$")


@dataclass(frozen=True)
class Chunk:
    text: str
    source: str  # the file, as the user named it (or as found under a directory they named)
    line_start: int
    line_end: int
    heading: str = ""  # the section path, "DESCRIPTION > Options"
    title: str = ""  # the document's name where it has one: "ls(1)", a Markdown file's first heading

    @property
    def id(self) -> str:
        """Stable across runs and edits elsewhere in the file: what resuming keys finished chunks by."""
        return hashlib.sha256(f"{self.source}\n{self.heading}\n{self.text}".encode()).hexdigest()[:16]


def document_kind(path: str) -> str | None:
    base = path[:-3] if path.endswith(".gz") else path
    return KINDS.get(os.path.splitext(base)[1].lower()) or ("roff" if _MAN_SUFFIX.search(base) else None)


def list_documents(paths: list[str]) -> list[str]:
    """Every document ``paths`` names, directories expanded in sorted order; a bad path is an error now."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, f) for f in sorted(files)
                          if not f.startswith(".") and document_kind(f) is not None]
        elif not os.path.exists(path):
            raise WhetstoneError(f"data synth: {path} does not exist; name documents or directories of them.")
        elif document_kind(path) is None:
            raise WhetstoneError(f"data synth: {path}: cannot tell the document type from its extension; use .txt, "
                                 f".md, .html, .jsonl (with a text field) or a manual page (.1 to .9, .man).")
        else:
            found.append(path)
    if not found:
        raise WhetstoneError(f"data synth: no documents in {', '.join(paths)} (.txt, .md, .html, .jsonl, man pages).")
    return found


def read_chunks(path: str, text_field: str = "text", max_chars: int = MAX_CHARS) -> Iterator[Chunk]:
    """The chunks of one document, in order."""
    kind = document_kind(path)
    if kind == "jsonl":
        yield from _jsonl_chunks(path, text_field, max_chars)
        return
    text = _read_text(path)
    if kind == "markdown":
        title, lines = "", _markdown_lines(text.splitlines(), 1)
        title = next((line.text for line in lines if line.heading == 1), "")
    elif kind == "html":
        title, lines = _html_lines(text)
    elif kind == "roff":
        title, lines = read_roff(text)
    elif _looks_like_man_text(text):
        title, lines = _man_text_lines(text)
    else:
        title, lines = "", [Line(n, line.rstrip()) for n, line in enumerate(text.splitlines(), 1)]
    yield from chunk_lines(lines, path, title, max_chars)


def _read_text(path: str) -> str:
    with open(path, "rb") as handle:
        raw = handle.read()
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise WhetstoneError(f"data synth: {path} is not a readable gzip file ({exc}); re-create it.") from exc
    return raw.decode("utf-8", errors="replace")


def chunk_lines(lines: list[Line], source: str, title: str = "", max_chars: int = MAX_CHARS,
                line: int | None = None) -> Iterator[Chunk]:
    """Cut ``lines`` into chunks: whole paragraphs of one section, up to ``max_chars`` each.

    With ``line``, every chunk spans that one line (a JSONL record)."""
    path: list[tuple[int, str]] = []
    paragraphs: list[list[Line]] = [[]]
    heading = ""

    def flush() -> Iterator[Chunk]:
        for group in _pack([p for p in paragraphs if p], max_chars):
            text = "\n\n".join("\n".join(x.text for x in p) for p in group)
            last = group[-1][-1]
            start, end = (line, line) if line is not None else (group[0][0].number, last.end or last.number)
            yield Chunk(text, source, start, end, heading, title)
        paragraphs[:] = [[]]

    for item in lines:
        if item.heading:
            yield from flush()
            path = [(level, name) for level, name in path if level < item.heading] + [(item.heading, item.text)]
            heading = " > ".join(name for _, name in path)
        elif item.text.strip():
            paragraphs[-1].append(item)
        elif paragraphs[-1]:
            paragraphs.append([])
    yield from flush()


def _pack(paragraphs: list[list[Line]], max_chars: int) -> list[list[list[Line]]]:
    groups: list[list[list[Line]]] = []
    size = 0
    for paragraph in paragraphs:
        length = sum(len(x.text) + 1 for x in paragraph)
        if groups and size + length <= max_chars:
            groups[-1].append(paragraph)
            size += length + 1
        else:
            groups.append([paragraph])
            size = length
    return groups


def _markdown_lines(lines: list[str], first: int) -> list[Line]:
    out, fenced = [], False
    for number, text in enumerate(lines, first):
        if text.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        match = None if fenced else _MD_HEADING.match(text)
        if match:
            out.append(Line(number, match.group(2), len(match.group(1))))
        else:
            out.append(Line(number, text.rstrip()))
    return out


def _looks_like_man_text(text: str) -> bool:
    """A rendered manual page: a NAME heading at the left margin, its body indented."""
    lines = text.splitlines()[:40]
    for i, line in enumerate(lines[:-1]):
        if line.strip() == "NAME" and line == line.lstrip():
            following = next((x for x in lines[i + 1:] if x.strip()), "")
            return following.startswith((" ", "\t"))
    return False


def _man_text_lines(text: str) -> tuple[str, list[Line]]:
    """Sections of a rendered page (headings at the margin), bodies dedented, header and footer dropped."""
    raw = text.splitlines()
    indents = Counter(len(x) - len(x.lstrip()) for x in (y.expandtabs() for y in raw) if x.strip() and x[0] == " ")
    margin = indents.most_common(1)[0][0] if indents else 0  # the body's; a footer may sit left of it
    out, title = [], ""
    for number, line in enumerate(raw, 1):
        line = line.expandtabs().rstrip()
        if _MAN_TEXT_FRAME.match(line):
            title = title or line.split()[0].lower()
        elif line and not line.startswith(" ") and _MAN_TEXT_HEADING.match(line):
            out.append(Line(number, line, 1))
        else:
            out.append(Line(number, line[margin:] if line.startswith(" " * margin) else line.strip()))
    return title, out


def _jsonl_chunks(path: str, text_field: str, max_chars: int) -> Iterator[Chunk]:
    seen = False
    for row in iter_rows(path):
        if not isinstance(row, Row):
            continue  # a line that is not JSON: `whetstone data check` lists those
        text = row.data.get(text_field)
        if not isinstance(text, str) or not text.strip():
            continue
        seen = True
        lines = _markdown_lines(text.splitlines(), 1)
        yield from chunk_lines(lines, path, "", max_chars, line=row.line)
    if not seen:
        raise WhetstoneError(f"data synth: {path} has no record with a text field '{text_field}'; name the field "
                             f"that holds the documents with --text-field.")


class _HtmlText(HTMLParser):
    """Block elements become paragraphs, h1-h6 headings, table rows '| a | b |' lines, dt/dd a tag and its body."""

    BLOCKS = {"p", "div", "li", "br", "pre", "section", "article", "blockquote", "ul", "ol", "dl", "table",
              "main", "header", "footer", "nav", "figure", "form"}
    SKIP = {"script", "style", "template", "noscript"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.lines: list[Line] = []
        self.title, self.words, self.start, self.end = "", [], 0, 0  # the block's words and its source lines
        self.heading, self.skip, self.in_title, self.cells, self.row, self.indent = 0, 0, False, None, None, False

    def flush(self) -> None:
        text = " ".join(" ".join(self.words).split())
        if text:
            kind = self.heading
            self.lines.append(Line(self.start, ("    " if self.indent and not kind else "") + text, kind, self.end))
        self.words = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag == "title":
            self.in_title = True
        elif tag in self.BLOCKS or tag in ("dt", "dd"):
            self.flush()
            if tag not in ("br", "dd"):
                self.lines.append(Line(self.getpos()[0], ""))
            self.indent = tag == "dd"
        elif re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.heading = int(tag[1])
        elif tag == "tr":
            self.flush()
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cells = []

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "title":
            self.in_title = False
        elif re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.heading = 0
        elif tag in ("td", "th") and self.cells is not None and self.row is not None:
            self.row.append(" ".join(" ".join(self.cells).split()))
            self.cells = None
        elif tag == "tr" and self.row:
            self.lines.append(Line(self.start, "| " + " | ".join(self.row) + " |", 0, self.end))
            self.row = None
        elif tag in self.BLOCKS or tag in ("dt", "dd"):
            self.flush()
            if tag == "table":
                self.lines.append(Line(self.getpos()[0], ""))

    def handle_data(self, data):
        if self.skip:
            return
        if self.in_title:
            self.title += data.strip()
            return
        if not data.strip():
            return
        line = self.getpos()[0]
        first = line + data[: len(data) - len(data.lstrip())].count("\n")
        self.end = line + data.rstrip().count("\n")
        if self.cells is not None:
            if not self.row and not self.cells:
                self.start = first
            self.cells.append(data)
            return
        if not self.words:
            self.start = first
        self.words.append(data)


def _html_lines(text: str) -> tuple[str, list[Line]]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser.flush()
    return parser.title, parser.lines
