"""Build the conversational-assistant recipe's dataset: three-turn dialogues about the standard library.

Source: the running Python's standard library (license-clean: PSF License): the facts of
examples/stdlib_qa (first docstring paragraphs, through its `collect()`) and each
function's real call signature from `inspect.signature`.

Each dialogue chains two functions of one module, and its follow-ups only make sense in
context: "And `split`?" names no module, "How do I call it?" names no function. Two shapes,
chosen per dialogue by a hash:

    A  What does `os.path.join` do?  -> docstring      B  What does `os.path.join` do?  -> docstring
       And `split`?                  -> docstring         How do I call it?             -> `os.path.join(a, *p)`
       How do I call it?             -> `os.path.split(p)`  What about `split`, ...?    -> docstring

so the last turn, the one the eval metric scores, asks either for the signature of a
function named two turns earlier without its module (A) or for the docstring of a
function named only by its short name (B). Dialogues are split by that last function:
eval dialogues end on functions that appear nowhere in training.

    python examples/conversation/build.py                # writes train.jsonl and eval.jsonl here
    python examples/conversation/build.py --out DIR --limit 40
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stdlib_qa.build import bucket, collect, write_split  # noqa: E402  (examples/ is not a package)

FIRST = ["What does `{name}` do?", "Can you tell me what `{name}` does in Python?"]
NEXT_FUNCTION = ["And `{short}`?", "What about `{short}`, from the same module?"]
HOW_TO_CALL = ["How do I call it?", "What is its signature?"]
N_TRAIN, N_EVAL = 300, 60
MAX_SIGNATURE = 80


def signature(name: str) -> str | None:
    """`module.function(params)` from the live object, or None when Python cannot tell."""
    module_name, attr = name.rsplit(".", 1)
    try:
        text = f"{name}{inspect.signature(getattr(importlib.import_module(module_name), attr))}"
    except (TypeError, ValueError):  # many C functions carry no signature
        return None
    # A default shown as "<object object at 0x7f...>" is a memory address: it differs on every run
    # (and would make the build irreproducible), and no one could type it.
    return text if len(text) <= MAX_SIGNATURE and " at 0x" not in text else None


def dialogue(first: tuple[str, str], last: tuple[str, str], signatures: dict[str, str]) -> dict:
    (f_name, f_doc), (g_name, g_doc) = first, last
    g_short = g_name.rsplit(".", 1)[1]
    pick = lambda options, salt: options[bucket(f_name + g_name + salt, len(options))]  # noqa: E731
    turns = [(pick(FIRST, "first").format(name=f_name), f_doc)]
    if bucket(f_name + g_name + "#shape", 2) == 0:  # A: the signature of the second function
        turns += [(pick(NEXT_FUNCTION, "next").format(short=g_short), g_doc),
                  (pick(HOW_TO_CALL, "call"), f"`{signatures[g_name]}`")]
    else:  # B: the signature of the first, then the second function's docstring
        turns += [(pick(HOW_TO_CALL, "call"), f"`{signatures[f_name]}`"),
                  (pick(NEXT_FUNCTION, "next").format(short=g_short), g_doc)]
    messages = []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def build() -> tuple[list[dict], list[dict]]:
    facts = [(name, doc) for name, doc in collect()]
    signatures = {name: sig for name, _ in facts if (sig := signature(name))}
    by_module: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, doc in facts:
        if name in signatures:
            by_module[name.rsplit(".", 1)[0]].append((name, doc))
    train, evaluation = [], []
    for module in sorted(by_module):
        functions = by_module[module]
        held_out = {name for name, _ in functions if bucket(name, 6) == 0}
        for i, last in enumerate(functions):
            # The first function: the next one in the module that is not held out (a held-out
            # function must not appear in any training dialogue, even as the first turn).
            firsts = [f for f in functions[i + 1:] + functions[:i] if f[0] not in held_out]
            if not firsts:
                continue
            (evaluation if last[0] in held_out else train).append(dialogue(firsts[0], last, signatures))
    return train, evaluation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="at most N train and N eval records (tests)")
    args = parser.parse_args(argv)
    train, evaluation = build()
    order = lambda r: hashlib.sha256(json.dumps(r).encode()).hexdigest()  # noqa: E731  (mix the modules)
    train, evaluation = sorted(train, key=order)[:N_TRAIN], sorted(evaluation, key=order)[:N_EVAL]
    train, evaluation = write_split(args.out, train, evaluation, args.limit)
    print(f"Python {sys.version.split()[0]}: wrote {len(train)} train and {len(evaluation)} eval dialogues to "
          f"{args.out}")


if __name__ == "__main__":
    main()
