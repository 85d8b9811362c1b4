"""The structured floor of `data synth`: facts read off a chunk by rule, asked in several wordings by template.

Where the teacher is too weak to write a good question (the embedded 135M model often is), these rules still
find the facts a document states in a fixed shape, and take each answer verbatim from the chunk:

- table rows (Markdown ``| a | b |``, or an HTML table): "What is the <column> of <row>?";
- definition lists (a term, its description indented below it: ``.TP`` items, Python docs, ``<dt>/<dd>``);
- a manual page's NAME line, ``ls - list directory contents``: "What does the ls command do?";
- definitions ``Term: description`` and ``name() -- description`` at the start of a line;
- sentences "X is Y" ("What is X?"; not a passive "X is returned if ...") and "X returns/provides/... Y"
  ("What does X do?").

A subject that looks like code (``base64.b64encode``, ``--all``) or a description that starts with a verb
is asked "what does it do"; anything else "what is it".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from whetstone.data.synth.chunks import Chunk

WHAT_DOES = ("What does {s} do?", "What is {s} used for?", "Explain what {s} does.", "What is the purpose of {s}?",
             "Describe in one sentence what {s} does.", "I came across {s}. What does it do?",
             "What job does {s} perform?", "Tell me briefly what {s} does.")
WHAT_IS = ("What is {s}?", "Define {s}.", "What does {s} mean?", "Explain what {s} is.",
           "Describe {s} in one sentence.", "Can you tell me what {s} is?", "Give a short definition of {s}.",
           "What is meant by {s}?")
ATTRIBUTE = ("What is the {a} of {s}?", "Give the {a} of {s}.", "For {s}, what is the {a}?",
             "Tell me the {a} of {s}.", "What {a} does {s} have?", "Which {a} goes with {s}?",
             "State the {a} of {s}.", "Look up the {a} of {s}.")
TEMPLATES = {"what_does": WHAT_DOES, "what_is": WHAT_IS, "attribute": ATTRIBUTE}

# Verbs a description or a "X does Y" sentence starts with; imperative and third person.
_VERBS = {"return", "decode", "encode", "compute", "convert", "create", "make", "read", "write", "print", "list",
          "remove", "delete", "display", "show", "set", "get", "run", "start", "stop", "check", "test", "copy",
          "move", "open", "close", "send", "receive", "parse", "format", "build", "load", "save", "find", "search",
          "count", "compare", "sort", "split", "join", "change", "update", "add", "append", "insert", "extract",
          "generate", "output", "produce", "provide", "use", "take", "give", "accept", "allow", "enable", "disable",
          "cause", "determine", "specify", "control", "select", "ignore", "skip", "force", "report", "raise",
          "apply", "call", "wait", "execute", "install", "configure", "define", "describe", "declare", "register",
          "translate", "compress", "expand", "encrypt", "decrypt", "hash", "sign", "verify", "validate", "match",
          "replace", "substitute", "map", "filter", "reduce", "merge", "mount", "unmount", "connect", "bind",
          "listen", "handle", "manage", "store", "fetch", "download", "upload", "calculate", "measure", "estimate",
          "assign", "initialize", "reset", "clear", "flush", "lock", "unlock", "kill", "terminate", "exit", "quit",
          "limit", "restrict", "include", "exclude", "contain", "keep", "hold", "edit", "view", "render", "draw",
          "play", "record", "log", "trace", "dump", "restore", "backup", "sync", "schedule", "resolve", "look",
          "turn", "put", "append", "prepend", "truncate", "pad", "strip", "trim", "wrap", "unwrap", "escape",
          "quote", "unquote", "mark", "assert", "emit", "yield", "iterate", "loop", "try", "attempt", "mean"}
_NOT_SUBJECTS = {"it", "this", "that", "there", "these", "those", "here", "which", "what", "he", "she", "they",
                 "we", "you", "i", "each", "every", "any", "some", "one", "no", "all", "such", "its", "if", "when",
                 "where", "how", "why", "note", "example", "warning", "see", "usage", "default", "also", "but",
                 "and", "or", "so", "then", "otherwise", "however", "thus", "only", "both", "either", "neither"}
_RELATIVE = {"that", "which", "who", "whose", "whom"}
_GENERIC_COLUMNS = {"description", "meaning", "purpose", "summary", "explanation", "definition", "what it does",
                    "notes", "note", "details", "effect"}
_CODE_SUBJECT = re.compile(r"^-|^\S*[._]\S*$|\(\)$|^[a-z][a-z0-9]*$")  # options, dotted names, commands
_SEPARATOR_ROW = re.compile(r"^\|?[\s:|-]+\|?$")
_COLON_DEFINITION = re.compile(r"^([`*_A-Za-z][^:.!?]{0,58}?):\s+(\S.{8,})$")
_DASH_DEFINITION = re.compile(r"^([`*_A-Za-z][\w.()`*-]{0,58}?)\s+--\s+(\S.{8,})$")  # "enable() -- Enable ..."
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")  # a docstring's first line "set_threshold(t0, [t1]) -> None"
_NAME_LINE = re.compile(r"^(.+?)\s+[-\u2013\u2014]\s+(\S.+)$")
_IS_SENTENCE = re.compile(r"^((?:[Tt]he |[Aa]n? )?[`\w][`\w.\-/() ]{0,58}?)\s+(?:is|means|refers to)\s+\S.*[.!]$")
_SUBJECT = re.compile(r"^(?:[Tt]he |[Aa]n? )?[`\w][`\w.\-/() ]{0,58}$")
_VERB_AFTER_SUBJECT = re.compile(r"\s([a-z]+s)(?=\s+\S)")
_SENTENCE_TAIL = re.compile(r".*[.!]$")
# "is" + a past participle is a passive ("is returned if ..."), which says what happens to X, not what X is.
_PARTICIPLES = {"done", "given", "taken", "made", "set", "shown", "known", "written", "seen", "run", "put", "kept",
                "held", "built", "sent", "read", "found", "thrown", "begun", "chosen", "hidden", "left", "lost",
                "meant", "said", "told", "broken", "forgotten", "cut", "split", "bound", "spent", "drawn"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`])")


@dataclass(frozen=True)
class Fact:
    """One fact a chunk states: asked about ``subject``, answered verbatim by ``answer``."""

    kind: str  # what_does | what_is | attribute
    subject: str
    answer: str
    attribute: str = ""  # attribute: the table column asked for
    rule: str = ""  # table | definition | name | colon | dash | sentence


def wordings(fact: Fact, n: int) -> list[str]:
    """The first ``n`` template wordings of the question about ``fact``."""
    templates = TEMPLATES[fact.kind]
    return [t.format(s=fact.subject, a=fact.attribute) for t in templates[:n]]


def extract_facts(chunk: Chunk) -> list[Fact]:
    """Every fact the rules find in ``chunk``, one per (kind, subject), in the order they appear."""
    facts: list[Fact] = []
    is_name_section = chunk.heading.split(" > ")[-1].strip().upper() == "NAME"
    paragraphs = [[x for x in p.splitlines() if x.strip()] for p in chunk.text.split("\n\n")]
    for i, lines in enumerate(paragraphs):
        if not lines:
            continue
        later = paragraphs[i + 1] if i + 1 < len(paragraphs) else []
        if len(lines) == 2 and _indented(lines[1]) and _SIGNATURE.match(lines[1].strip()) and later and \
                all(_indented(x) for x in later):
            lines = [lines[0], *later]  # a docstring that opens with its signature: describe by what follows
        if is_name_section:
            facts += _name_facts(" ".join(" ".join(lines).split()), chunk.title)
        elif len(lines) > 1 and all(x.strip().startswith("|") and x.strip().endswith("|") for x in lines):
            facts += _table_facts(lines)
        elif len(lines) > 1 and not _indented(lines[0]) and _indented(lines[1]):
            facts += _definition_facts(lines, chunk.title)
        else:
            facts += _line_facts(lines)
    unique: dict[tuple[str, str, str], Fact] = {}
    for fact in facts:
        unique.setdefault((fact.kind, fact.subject.lower(), fact.attribute), fact)
    return list(unique.values())


def _indented(line: str) -> bool:
    return line.startswith((" ", "\t"))


def _kind(subject: str, answer: str) -> str:
    first = answer.split()[0].lower().strip(",.;:") if answer.split() else ""
    verb = first in _VERBS or (first.endswith("s") and first[:-1] in _VERBS) or \
        (first.endswith("es") and first[:-2] in _VERBS)
    return "what_does" if _CODE_SUBJECT.match(subject.strip("`")) or verb else "what_is"


def _subject_ok(subject: str, most_words: int = 6) -> bool:
    words = [w.lower().strip("`") for w in subject.split()]
    return (0 < len(words) <= most_words and words[0] not in _NOT_SUBJECTS and not _RELATIVE & set(words)
            and any(c.isalpha() for c in subject))


def _name_facts(text: str, title: str) -> list[Fact]:
    match = _NAME_LINE.match(text)
    if not match:
        return []
    name = match.group(1).split(",")[0].strip()
    section = re.search(r"\((\w)", title)
    kind_word = {"1": "command", "6": "command", "8": "command", "2": "system call", "3": "function"}.get(
        section.group(1) if section else "", "")
    subject = f"the {name} {kind_word}" if kind_word else name
    return [Fact("what_does", subject, match.group(2).strip(), rule="name")]


def _table_facts(lines: list[str]) -> list[Fact]:
    rows = [[c.strip() for c in x.strip().strip("|").split("|")] for x in lines if not _SEPARATOR_ROW.match(x)]
    if len(rows) < 2:
        return []
    header, facts = [h.lower().strip("*`_ ") for h in rows[0]], []
    for row in rows[1:]:
        subject = row[0].strip("*_ ")
        if not subject or len(row) != len(header):
            continue
        for column, answer in zip(header[1:], row[1:]):
            if not answer or answer in ("-", "\u2014") or not column:
                continue
            if column in _GENERIC_COLUMNS and len(header) == 2:
                facts.append(Fact(_kind(subject, answer), subject, answer, rule="table"))
            else:
                facts.append(Fact("attribute", subject, answer, attribute=column, rule="table"))
    return facts


def _definition_facts(lines: list[str], title: str) -> list[Fact]:
    """Items of a definition list: a term at the margin, its description on the indented lines below."""
    facts, term, body = [], None, []
    command = title.split("(")[0] if title else ""

    def close() -> None:
        answer = " ".join(" ".join(body).split())
        if term and len(answer.split()) >= 2 and len(term) <= 60 and not term.endswith((".", ":")) and \
                any(c.isalpha() for c in term):
            subject = term
            if term.startswith("-"):
                subject = f"the {term} option of {command}" if command else f"the {term} option"
            facts.append(Fact(_kind(term, answer), subject, answer, rule="definition"))

    for line in lines:
        if _indented(line):
            body.append(line.strip())
        else:
            close()
            term, body = line.strip(), []
    close()
    return facts


def _line_facts(lines: list[str]) -> list[Fact]:
    """Definitions "Term: description" at a line's start, and "X is Y" / "X does Y" sentences."""
    facts = []
    for line in lines:
        for rule, pattern in (("colon", _COLON_DEFINITION), ("dash", _DASH_DEFINITION)):
            match = pattern.match(line.strip())
            if match and _subject_ok(match.group(1).strip("`*_ "), 4) and "http" not in match.group(1):
                subject, answer = match.group(1).strip("`*_ "), match.group(2).strip()
                facts.append(Fact(_kind(subject, answer), subject, answer, rule=rule))
                break
    text = " ".join(" ".join(lines).split())
    for sentence in _SENTENCE_END.split(text):
        match = _IS_SENTENCE.match(sentence)
        if match and _subject_ok(match.group(1)):
            if not _passive(sentence[match.end(1):]):
                facts.append(Fact("what_is", _lower_article(match.group(1)), sentence, rule="sentence"))
            continue
        subject = _does_subject(sentence)
        if subject:
            facts.append(Fact("what_does", _lower_article(subject), sentence, rule="sentence"))
    return facts


def _passive(rest: str) -> bool:
    """Whether ``rest`` (" is returned if ...", from the verb on) is "is" and a past participle."""
    words = rest.split()
    if len(words) < 2 or words[0] != "is":
        return False
    word = words[1].lower().strip(",.;:")
    return word in _PARTICIPLES or (word.endswith("ed") and word != "used")


def _does_subject(sentence: str) -> str | None:
    """The subject of an "X returns/provides/... Y." sentence: the words before its first such verb."""
    if not _SENTENCE_TAIL.match(sentence):
        return None
    for match in _VERB_AFTER_SUBJECT.finditer(sentence):
        verb, subject = match.group(1), sentence[: match.start()]
        if verb[:-1] in _VERBS or verb[:-2] in _VERBS:
            return subject if _SUBJECT.match(subject) and _subject_ok(subject) and _subject_named(subject) else None
    return None


def _subject_named(subject: str) -> bool:
    """Several words, or one that looks like code (``os.sep``, ``enable()``, ``ls``): not "Subsequent" (calls ...)."""
    return len(subject.split()) > 1 or bool(_CODE_SUBJECT.match(subject.strip("`")))


def _lower_article(subject: str) -> str:
    return subject[0].lower() + subject[1:] if subject.split()[0] in ("The", "A", "An") else subject
