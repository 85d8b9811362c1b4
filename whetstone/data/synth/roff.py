"""Manual pages as text, without `man` or `groff`: a reader for the subset of roff that pages are written in.

The man(7) macros carry a page's structure: ``.TH`` names it, ``.SH``/``.SS`` start sections, ``.PP`` and
friends start paragraphs, ``.TP``/``.IP`` start an item whose tag is a line of its own and whose body is
indented, as is a ``.RS``/``.RE`` block, and the font macros (``.B``, ``.BR``, ...) only change how words look.
The common mdoc(7) macros (``.Sh``, ``.Nm``, ``.Nd``, ``.Fl``, ``.It``) are read the same way. Font and size
escapes are dropped and the named glyphs a page spells out (``\\-``, ``\\(em``, ``\\(aq``) become characters.
Every output line keeps the number of the source line it came from, so that provenance points into the page
itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    """One line of a document's text: ``heading`` > 0 marks a section heading of that level; "" is a break."""

    number: int  # 1-based line of the source file
    text: str
    heading: int = 0
    end: int = 0  # the last source line, where the text spans several (HTML); 0: ``number``


_GLYPHS = {"em": "\u2014", "en": "\u2013", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'",
           "hy": "-", "mi": "-", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "ti": "~", "ha": "^", "rs": "\\",
           "lB": "[", "rB": "]", "ga": "`", "ul": "_", "pl": "+", "eq": "=", "<=": "<=", ">=": ">=", "->": "->"}
_SIMPLE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`", ".": "."}
_ESCAPE = re.compile(
    r"\\(?:[fF](?:\[[^\]]*\]|\(..|.)"  # font changes
    r"|\*(?:\[[^\]]*\]|\(..|.)"  # defined strings
    r"|s[-+]?(?:\d|\(\d\d|\[\d+\])"  # size changes
    r"|[hvwNoDlLbxXZS]'[^']*'"  # escapes with a quoted argument
    r"|(\(..)|\[([^\]]*)\]"  # named glyphs
    r"|(.))"
)
_PARAGRAPH = {"PP", "LP", "P", "sp", "Pp", "Lp", "br", "HP", "Bl", "El", "Dl", "Bd", "Ed"}
_ITEMS = {"TP", "TQ", "IP", "It"}
_FONTS = {"B", "I", "SM", "SB"}
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
_BLOCK_DEFINITIONS = {"de", "de1", "am", "ig"}
_BLOCK_END = re.compile(r"^[.']\s*\.\s*$")
# mdoc macros whose arguments are text (``.Fl a`` writes -a); the others only format.
_MDOC_TEXT = {"Nm", "Nd", "Fl", "Ar", "Op", "Pa", "Xr", "Cm", "Dq", "Ql", "Va", "Ev", "Em", "Sy", "Li", "Dv", "Er",
              "Fn", "Fa", "Ic", "Ms", "Sq", "Pq", "Tn", "Ux", "An", "Lk", "Mt", "No", "Ns", "Ad"}


def unescape(text: str) -> str:
    """``text`` with roff escapes replaced by what they print (font and size changes print nothing)."""

    def replace(m: re.Match) -> str:
        if m.group(1):
            return _GLYPHS.get(m.group(1)[1:], "")
        if m.group(2) is not None:
            return _GLYPHS.get(m.group(2), "")
        if m.group(3) is not None:
            return _SIMPLE.get(m.group(3), "")
        return ""

    return _ESCAPE.sub(replace, text)


_ARGUMENT = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')


def _arguments(rest: str) -> list[str]:
    """A request's arguments as roff splits them: at spaces, a double-quoted one whole (``""`` inside is a quote).

    Escapes are left for unescape(): ``.IP \\(bu`` has the argument ``\\(bu``, a bullet."""
    return [m.group(2) if m.group(2) is not None else m.group(1).replace('""', '"') for m in _ARGUMENT.finditer(rest)]


def _mdoc_text(name: str, args: list[str], page_name: str) -> str:
    if name == "Nm":
        return " ".join(args) or page_name
    if name == "Nd":
        return "- " + " ".join(args)
    if name == "Fl":
        return " ".join(["-" + args[0], *args[1:]]) if args else "-"
    return " ".join(a for a in args if a not in _MDOC_TEXT)


def read_roff(text: str) -> tuple[str, list[Line]]:
    """(the page's title, e.g. "ls(1)", its lines): sections as headings, items as a tag line and indented body."""
    title, page_name, lines = "", "", []
    skipping, pending_heading, tag_next, indent, depth = False, 0, False, False, 0
    for number, raw in enumerate(text.splitlines(), 1):
        if skipping:  # until the block's end, "..", which Asciidoctor writes ".  ."
            skipping = not _BLOCK_END.match(raw)
            continue
        if raw.startswith((".\\\"", "'\\\"", ".\\#")) or raw.strip() in (".", "'"):
            continue
        if raw[:1] not in ".'":  # a text line
            out = unescape(raw).rstrip()
            if pending_heading:
                lines.append(Line(number, out.strip(), pending_heading))
                pending_heading = 0
            elif tag_next:
                lines.append(Line(number, out.strip()))
                tag_next, indent = False, True
            elif out.strip():
                lines.append(Line(number, ("    " if indent else "") + out.strip()))
            continue
        name, _, rest = raw[1:].strip().partition(" ")
        args = _arguments(rest)
        if name in _BLOCK_DEFINITIONS:
            skipping = True
        elif name in ("TH", "Dt"):
            page = unescape(args[0]).lower() if args else ""
            title = f"{page}({unescape(args[1])})" if len(args) > 1 else page
        elif name in ("SH", "Sh", "SS", "Ss"):
            level = 1 if name in ("SH", "Sh") else 2
            indent, tag_next, depth = False, False, 0
            if args:
                lines.append(Line(number, unescape(" ".join(args)).strip(), level))
            else:
                pending_heading = level
        elif name in _PARAGRAPH:
            lines.append(Line(number, ""))
            indent = depth > 0 or (indent and name == "br")
        elif name in ("RS", "RE"):  # an indented block, e.g. Asciidoctor's item bodies
            depth = depth + 1 if name == "RS" else max(depth - 1, 0)
            indent = depth > 0
        elif name in _ITEMS:
            lines.append(Line(number, ""))
            if name == "TP" or name == "TQ" or (name == "It" and not args):
                tag_next = True
            else:  # .IP tag / .It tag: the tag is an argument
                tag = unescape(_mdoc_text("Fl", args[1:], "") if args[:1] == ["Fl"] else (args[0] if args else ""))
                if tag.strip():
                    lines.append(Line(number, tag.strip()))
                indent = True
        elif name in _FONTS or name in _ALTERNATING or name in _MDOC_TEXT:
            if name == "Nm" and args and not page_name:
                page_name = unescape(args[0])
            if name in _MDOC_TEXT:
                out = _mdoc_text(name, args, page_name)
            else:
                out = ("" if name in _ALTERNATING else " ").join(args)
            out = unescape(out).strip()
            if pending_heading:
                lines.append(Line(number, out, pending_heading))
                pending_heading = 0
            elif tag_next:
                lines.append(Line(number, out))
                tag_next, indent = False, True
            elif out:
                lines.append(Line(number, ("    " if indent else "") + out))
        # every other request (.nf, .in, .ft, ...) changes layout only
    return title, lines
