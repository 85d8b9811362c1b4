"""Build the document sets of the knowledge-from-documents recipe: documents to run `whetstone data synth` on, and
the sets of the knowledge eval (docs/knowledge.md), in two kinds of document of different styles.

    stdlib/   the Python standard library's documentation (PSF License): STDLIB_MODULES, none of which
              examples/knowledge_base uses. A fact is a public function and the first paragraph of its docstring,
              where that paragraph is one sentence (the synthesiser's definition rule answers with the whole
              paragraph, so a one-sentence paragraph makes its answer and the fact's the same text).
    man/      section-1 manual pages installed on this machine, from the packages of a plain Debian + Python image
              (MAN_PACKAGES). A fact is a command and its page's NAME description, as `data synth` reads it.

A stable hash of each fact's name holds out one fact in HELDOUT_SHARE. Each kind's directory holds:

    docs/                the documents, for `whetstone data synth`. stdlib: docs/<module>.md, the module's docstring
                         and every public function as its name, then its full docstring and its signature indented
                         below it; man: docs/<command>.1, the page's roff source. A held-out fact's function or page
                         is in no document (nor is its answer), so held-out facts are never seen in training.
    train_wording.jsonl  every trained fact asked as `data synth` asks it (extract.py's first what_does template):
                         the wording trained on, for reference
    paraphrase.jsonl     every trained fact in a HAND-WRITTEN wording that `data synth` never produces
                         (neither extract.py's templates nor paraphrase.py's frames around them)
    heldout.jsonl        every held-out fact in the paraphrase's wording, so paraphrase - heldout is what was learnt
    eval.jsonl           a dev set for data.eval: the first DEV_FACTS trained facts in a second hand-written wording

The eval files list facts in the same hashed order, so the first N of train_wording and of paraphrase ask about
the same facts. The sets are small and committed; the documents are not (docs/ is git-ignored): the pages are
other projects' texts under their own licenses, and both kinds are read from this machine, so they are built where
they are used, together with the sets they match (`make knowledge-docs`).

    python examples/knowledge_docs/build.py                      # both kinds, into examples/knowledge_docs/
    python examples/knowledge_docs/build.py --kind man --out DIR --limit 8
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))  # examples/ is not a package
sys.path.insert(0, str(ROOT))
from knowledge_base.build import DEV as STDLIB_DEV  # noqa: E402
from knowledge_base.build import PARAPHRASE as STDLIB_PARAPHRASE  # noqa: E402
from stdlib_qa.build import bucket, chat_record, first_paragraph, write_jsonl  # noqa: E402

# The synthesiser's own readers and templates (torch-free), so a fact's answer is what `data synth` reads.
from whetstone.data.synth.chunks import Chunk, chunk_lines, read_chunks  # noqa: E402
from whetstone.data.synth.extract import WHAT_DOES, extract_facts  # noqa: E402
from whetstone.data.synth.roff import read_roff  # noqa: E402

# Modules with many one-sentence docstrings, and none of examples/knowledge_base's (stdlib_qa's MODULES).
STDLIB_MODULES = ["asyncio", "curses", "dis", "email.utils", "gc", "logging", "readline", "signal", "ssl",
                  "sysconfig", "threading", "traceback", "tracemalloc", "urllib.request"]
MAN_DIR = Path("/usr/share/man/man1")
# Packages of a plain Debian/Ubuntu image with Python (the buildpack-deps family), so the set rebuilds elsewhere.
MAN_PACKAGES = {"apt", "bash", "bsdutils", "bzip2", "coreutils", "curl", "dash", "debianutils", "diffutils", "dpkg",
                "e2fsprogs", "findutils", "git-man", "grep", "gzip", "hostname", "less", "libc-bin", "login", "make",
                "mawk", "ncurses-bin", "openssh-client", "passwd", "patch", "procps", "sed", "sensible-utils", "tar",
                "unzip", "util-linux", "wget", "xz-utils"}
MAN_PAGE_CHARS = (600, 8_000)  # the page as `data synth` reads it: skip near-empty and long pages
MAN_ANSWER_WORDS = (3, 20)  # a NAME description that says something, in one line
MAX_ANSWER_CHARS = 200
HELDOUT_SHARE = 3  # one fact in HELDOUT_SHARE is held out
NEAR_DUPLICATE = 0.6  # a held-out answer sharing this much of its words with a trained answer is dropped
DEV_FACTS = 48

# What the synthesiser asks (the first what_does template) and two hand-written wordings per kind. The stdlib's are
# examples/knowledge_base's, so the two recipes' knowledge gains are read on the same question forms. The man
# pages' are another style: the name bare, mid-sentence, and an instruction rather than a question.
WORDINGS = {
    "stdlib": {"train_wording": WHAT_DOES[0].replace("{s}", "{name}"),
               "paraphrase": STDLIB_PARAPHRASE, "eval": STDLIB_DEV},
    "man": {"train_wording": WHAT_DOES[0].replace("{s}", "the {name} command"),
            "paraphrase": "In a few words, explain the role of the {name} utility on a Linux system.",
            "eval": "Someone typed {name} at a shell prompt. Sum up its purpose in one line."},
}


@dataclass(frozen=True)
class Fact:
    name: str  # asyncio.sleep, ls
    answer: str  # what the eval expects: the docstring's one-sentence first paragraph, the NAME description


# ---- the standard library ----------------------------------------------------------------------------------------

def public_functions(module_name: str) -> list[tuple[str, object]]:
    """(module.function, function) for each public, documented function the module defines (or its C part does)."""
    module = importlib.import_module(module_name)
    found = []
    for attr in sorted(dir(module)):
        obj = getattr(module, attr)
        if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        home = getattr(obj, "__module__", None) or ""
        if home in (module_name, "_" + module_name) or home.startswith(module_name + "."):  # not a re-export
            if inspect.getdoc(obj):
                found.append((f"{module_name}.{attr}", obj))
    return found


def one_sentence(paragraph: str) -> bool:
    return (20 <= len(paragraph) <= MAX_ANSWER_CHARS and paragraph.endswith(".")
            and not re.search(r"[.!?]\s+[A-Z]", paragraph) and not re.match(r"^[\w.]+\(", paragraph))


def stdlib_facts() -> list[Fact]:
    """One fact per function whose docstring opens with a one-sentence paragraph that no other function shares."""
    candidates = [Fact(name, first_paragraph(inspect.getdoc(obj)))
                  for module in STDLIB_MODULES for name, obj in public_functions(module)]
    candidates = [f for f in candidates if one_sentence(f.answer)]
    answers = [f.answer for f in candidates]
    return [f for f in candidates if answers.count(f.answer) == 1]


def signature(name: str, obj: object) -> str:
    try:
        text = f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):  # some builtins carry no signature
        return f"{name}(...)"
    return re.sub(r" at 0x[0-9a-f]+", "", text)  # a default's repr may hold an address: not the same twice


def render_module(module_name: str, left_out: set[str]) -> str:
    """The module's documentation as Markdown: its docstring, then each function under a heading of its own."""
    doc = inspect.getdoc(importlib.import_module(module_name)) or ""
    parts = [f"# The {module_name} module (Python standard library)", doc]
    for name, obj in public_functions(module_name):
        if name in left_out:
            continue
        # The name alone at the margin, the docstring indented below it: the synthesiser's definition rule reads
        # this as "name: first paragraph". The signature goes last, so it is not part of that answer.
        body = "\n".join(("    " + line).rstrip() for line in inspect.getdoc(obj).splitlines())
        parts.append(f"## {name}\n\n{name}\n{body}\n\n    Called as {signature(name, obj)}")
    return "\n\n".join(p for p in parts if p) + "\n"


def build_stdlib(out: Path, limit: int | None) -> tuple[list[Fact], list[Fact], int]:
    """Write out/docs; return (trained facts, held-out facts, held-out facts dropped as stated or near-repeated)."""
    trained, heldout = split(stdlib_facts())
    docs = out / "docs"
    reset(docs)
    left_out = {f.name for f in heldout}
    for module in STDLIB_MODULES:
        (docs / f"{module}.md").write_text(render_module(module, left_out), encoding="utf-8")
    kept = unseen(heldout, trained, docs, names=True)
    return *limited(trained, kept, limit), len(heldout) - len(kept)


# ---- manual pages ------------------------------------------------------------------------------------------------

def man_available() -> str | None:
    """Why the man kind cannot be built here; None when it can."""
    if not MAN_DIR.is_dir() or not any(MAN_DIR.glob("*.1.gz")):
        return f"no section-1 manual pages in {MAN_DIR} (a minimal image may exclude them)"
    if shutil.which("dpkg-query") is None:
        return "dpkg-query is missing, so which package owns a page cannot be told (a Debian or Ubuntu system is needed)"
    return None


def owned_pages() -> list[Path]:
    """The section-1 pages MAN_PACKAGES own, regular files only (links and `.so` pages repeat another page)."""
    listing = subprocess.run(["dpkg-query", "-S", f"{MAN_DIR}/*"], capture_output=True, text=True, check=False)
    pages = []
    for line in listing.stdout.splitlines():
        packages, _, path = line.partition(": ")
        if line.startswith("diversion ") or not path.endswith(".1.gz"):
            continue
        if {p.strip().split(":")[0] for p in packages.split(",")} & MAN_PACKAGES and not os.path.islink(path):
            pages.append(Path(path))
    return sorted(set(pages))


def name_fact(page: Path, roff: str) -> Fact | None:
    """The page's NAME description as `data synth` reads it, when the page is one command, clearly described."""
    command = page.name[: -len(".1.gz")]
    if not re.fullmatch(r"[a-z][a-z0-9+._-]*", command) or roff.lstrip().startswith(".so "):
        return None
    title, lines = read_roff(roff)  # as `data synth` reads a page: its own roff reader, no `man` needed
    chunks = list(chunk_lines(lines, page.name, title))
    size = sum(len(c.text) for c in chunks)
    if not MAN_PAGE_CHARS[0] <= size <= MAN_PAGE_CHARS[1]:
        return None
    names = [f for c in chunks for f in extract_facts(c) if f.rule == "name"]
    if len(names) != 1 or names[0].subject != f"the {command} command":
        return None
    answer = names[0].answer
    if not MAN_ANSWER_WORDS[0] <= len(answer.split()) <= MAN_ANSWER_WORDS[1] or len(answer) > MAX_ANSWER_CHARS:
        return None
    return Fact(command, answer)


def build_man(out: Path, limit: int | None) -> tuple[list[Fact], list[Fact], int]:
    """Write out/docs (the trained facts' pages); return (trained, held out, held-out facts dropped)."""
    sources, facts = {}, []
    for page in owned_pages():
        roff = gzip.decompress(page.read_bytes()).decode("utf-8", errors="replace")
        fact = name_fact(page, roff)
        if fact is not None:
            facts.append(fact)
            sources[fact.name] = roff
    answers = [f.answer.lower() for f in facts]
    trained, heldout = split([f for f in facts if answers.count(f.answer.lower()) == 1])
    trained, heldout = limited(trained, heldout, limit)
    docs = out / "docs"
    reset(docs)
    for fact in trained:
        (docs / f"{fact.name}.1").write_text(sources[fact.name], encoding="utf-8")
    kept = unseen(heldout, trained, docs, names=False)
    return trained, kept, len(heldout) - len(kept)


# ---- both kinds --------------------------------------------------------------------------------------------------

def split(facts: list[Fact]) -> tuple[list[Fact], list[Fact]]:
    """(trained, held out), each in a stable hashed order."""
    facts = sorted(facts, key=lambda f: hashlib.sha256(f.name.encode()).hexdigest())
    heldout = [f for f in facts if bucket(f.name + "#heldout", HELDOUT_SHARE) == 0]
    return [f for f in facts if bucket(f.name + "#heldout", HELDOUT_SHARE) != 0], heldout


def limited(trained: list[Fact], heldout: list[Fact], limit: int | None) -> tuple[list[Fact], list[Fact]]:
    return (trained[:limit], heldout[:limit]) if limit else (trained, heldout)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def document_text(docs: Path) -> str:
    """Every document under ``docs`` as `data synth` reads it (chunks), lower-cased, whitespace collapsed."""
    chunks: list[Chunk] = [c for path in sorted(docs.iterdir()) for c in read_chunks(str(path))]
    return " ".join(" ".join(c.text for c in chunks).lower().split())


def unseen(heldout: list[Fact], trained: list[Fact], docs: Path, names: bool) -> list[Fact]:
    """Held-out facts whose answer (and, with ``names``, whose name) no document states, and which no trained fact
    nearly repeats (NEAR_DUPLICATE of the answers' words shared). A command's name is not checked: other pages
    name it (SEE ALSO), but none of them is its page or states its description."""
    text = document_text(docs)
    trained_words = [words(f.answer) for f in trained]

    def near(answer: set[str]) -> bool:
        return any(len(answer & other) >= NEAR_DUPLICATE * len(answer | other) for other in trained_words)

    def stated(fact: Fact) -> bool:
        named = names and re.search(rf"(?<![\w.]){re.escape(fact.name.lower())}(?!\w)", text)
        return bool(named) or " ".join(fact.answer.lower().split()) in text

    return [f for f in heldout if not stated(f) and not near(words(f.answer))]


def reset(directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


def write_sets(out: Path, kind: str, trained: list[Fact], heldout: list[Fact]) -> dict[str, int]:
    wording = WORDINGS[kind]
    files = {
        "train_wording.jsonl": [chat_record(wording["train_wording"].format(name=f.name), f.answer) for f in trained],
        "paraphrase.jsonl": [chat_record(wording["paraphrase"].format(name=f.name), f.answer) for f in trained],
        "heldout.jsonl": [chat_record(wording["paraphrase"].format(name=f.name), f.answer) for f in heldout],
        "eval.jsonl": [chat_record(wording["eval"].format(name=f.name), f.answer) for f in trained[:DEV_FACTS]],
    }
    for file, rows in files.items():
        write_jsonl(out / file, rows)
    return {file: len(rows) for file, rows in files.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent,
                        help="output directory: writes OUT/stdlib and OUT/man")
    parser.add_argument("--kind", choices=["all", "stdlib", "man"], default="all")
    parser.add_argument("--limit", type=int, default=None, help="at most N trained and N held-out facts (tests)")
    args = parser.parse_args(argv)
    for kind in ("stdlib", "man") if args.kind == "all" else (args.kind,):
        out = args.out / kind
        if kind == "man" and (why := man_available()):
            print(f"man: skipped: {why}.", file=sys.stderr)
            if args.kind == "man":
                return 1
            continue
        out.mkdir(parents=True, exist_ok=True)
        trained, heldout, dropped = (build_stdlib if kind == "stdlib" else build_man)(out, args.limit)
        counts = write_sets(out, kind, trained, heldout)
        docs = sorted((out / "docs").iterdir())
        chunks = sum(1 for path in docs for _ in read_chunks(str(path)))
        print(f"{kind}: {len(trained)} trained facts, {len(heldout)} held out ({dropped} more dropped: stated in a "
              f"document or nearly repeating a trained answer); {len(docs)} documents in {out / 'docs'}, "
              f"{sum(p.stat().st_size for p in docs) / 1e6:.2f} MB, {chunks} chunks for data synth; wrote "
              + ", ".join(f"{file} {n}" for file, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
