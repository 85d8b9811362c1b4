"""Build the demo's knowledge-base dataset from the standard library's own docstrings.

Every answer is the first paragraph of a real docstring in the running Python's
standard library (license-clean: PSF). Functions are split between train and
eval by a hash of their name, so the eval questions are about functions the
model never saw in training.

    python examples/stdlib_qa/build.py            # writes train.jsonl and eval.jsonl here
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import sys
from pathlib import Path

MODULES = [
    "os", "os.path", "shutil", "json", "re", "math", "cmath", "string", "textwrap", "itertools", "functools",
    "collections", "heapq", "bisect", "random", "statistics", "fnmatch", "glob", "base64", "binascii", "zlib",
    "gzip", "hashlib", "hmac", "secrets", "uuid", "html", "urllib.parse", "ipaddress", "calendar", "time",
    "operator", "copy", "difflib", "unicodedata", "locale", "platform", "sys", "pathlib", "tempfile", "csv",
    "struct", "codecs", "keyword", "shlex", "colorsys", "zipfile", "tarfile", "typing", "inspect",
]

QUESTIONS = [
    "What does `{name}` do in Python?",
    "In Python's standard library, what is `{name}` for?",
    "Explain what the Python function `{name}` does.",
    "What does calling `{name}` do?",
]


def first_paragraph(doc: str) -> str:
    paragraph = inspect.cleandoc(doc).split("\n\n")[0]
    return re.sub(r"\s+", " ", paragraph).strip()


def usable(text: str) -> bool:
    # Skip signature-only lines ("foo(a, b) -> c") and very short or very long texts.
    return 25 <= len(text) <= 400 and not re.match(r"^[\w.]+\(.*\)( ->.*)?$", text)


def collect() -> list[tuple[str, str]]:
    pairs, seen = [], set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr)
            if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            name = f"{module_name}.{attr}"
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            answer = first_paragraph(doc)
            if usable(answer) and answer not in seen:
                seen.add(answer)
                pairs.append((name, answer))
    return pairs


def bucket(name: str, n: int) -> int:
    """A stable split: the same text lands in the same of n buckets on every machine and Python."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % n


def chat_record(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_split(out: Path, train: list[dict], evaluation: list[dict], limit: int | None = None) -> tuple[list, list]:
    """Write out/train.jsonl and out/eval.jsonl (each cut to `limit` records when given); return what was written."""
    if limit:
        train, evaluation = train[:limit], evaluation[:limit]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", evaluation)
    return train, evaluation


def main() -> None:
    out_dir = Path(__file__).parent
    pairs = collect()
    train, evaluation = [], []
    for name, answer in pairs:
        question = QUESTIONS[bucket(name + "?", len(QUESTIONS))].format(name=name)
        (evaluation if bucket(name, 10) == 0 else train).append(chat_record(question, answer))
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "eval.jsonl", evaluation)
    print(f"Python {sys.version.split()[0]}: {len(train)} train and {len(evaluation)} eval records in {out_dir}")


if __name__ == "__main__":
    main()
