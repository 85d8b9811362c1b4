"""Build the knowledge-base example: standard-library facts to learn, and the three sets that tell knowledge from style.

Source: the first paragraph of real docstrings in the running Python's standard library
(license-clean: PSF License), through examples/stdlib_qa's `collect()`. One fact is one
function and what its docstring says it does.

A stable hash of each function's name splits the chosen facts into trained (about 2/3)
and held out (about 1/3). What each file holds (docs/knowledge.md):

    train.jsonl          every trained fact asked in the first --wordings TRAINING wordings (default 5),
                         interleaved so one batch is not one fact asked several ways
    docs.jsonl           the trained facts as reference text ({"text": ...}), a few functions of one
                         module per record: for training on the documents as well as on questions
    eval.jsonl           a dev set: the first DEV_FACTS trained facts asked in the DEV wording (neither a
                         training wording nor the paraphrase), for data.eval's loss during training
    train_wording.jsonl  every trained fact asked in TRAINING[0], a wording every train.jsonl holds
    paraphrase.jsonl     every trained fact asked in the PARAPHRASE wording, never used in training
    heldout.jsonl        every held-out fact asked in the PARAPHRASE wording: the same question
                         form, about facts never trained, so paraphrase - heldout is what was learnt

The three eval files list facts in the same (hashed) order, so the first N of train_wording
and of paraphrase ask about the same facts. Held-out facts whose record is a near duplicate
of a training record (MinHash, as `whetstone data check` finds them) are dropped.

    python examples/knowledge_base/build.py                 # writes the files here
    python examples/knowledge_base/build.py --out DIR --limit 6 --wordings 5
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stdlib_qa.build import bucket, chat_record, collect, write_jsonl  # examples/ is not a package

# The training family: a question, with the name in backticks.
TRAINING = [
    "What does `{name}` do in Python?",
    "In Python's standard library, what is `{name}` for?",
    "Explain what the Python function `{name}` does.",
    "I found `{name}` in some code. What does it do?",
    "What is the purpose of `{name}`?",
]
# Another family: an instruction, no question word, no backticks, the name mid-sentence.
PARAPHRASE = "Summarise in one sentence the job that {name} performs in the Python standard library."
DEV = "Here is a name from the Python standard library: {name}. Describe it briefly."
FACT_SHARE = 2  # keep one fact in FACT_SHARE of collect()'s ~650: ~330 facts, a 30-minute CPU training's worth
HELDOUT_SHARE = 3  # one chosen fact in HELDOUT_SHARE is held out: ~110 held out, ~220 trained
MAX_ANSWER_CHARS = 200  # longer docstrings make long answers: slow to train and to generate on a CPU
DEV_FACTS = 64
FUNCTIONS_PER_DOC = 4


def choose_facts() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(trained, held out) facts, each in a stable hashed order."""
    facts = [(name, answer) for name, answer in collect()
             if bucket(name + "#kb", FACT_SHARE) == 0 and len(answer) <= MAX_ANSWER_CHARS]
    facts.sort(key=lambda fact: hashlib.sha256(fact[0].encode()).hexdigest())
    trained = [f for f in facts if bucket(f[0] + "#heldout", HELDOUT_SHARE) != 0]
    heldout = [f for f in facts if bucket(f[0] + "#heldout", HELDOUT_SHARE) == 0]
    return trained, heldout


def documents(trained: list[tuple[str, str]]) -> list[dict]:
    """Reference text of the trained facts: up to FUNCTIONS_PER_DOC functions of one module per record."""
    by_module: dict[str, list[tuple[str, str]]] = {}
    for name, answer in sorted(trained):
        by_module.setdefault(name.rsplit(".", 1)[0], []).append((name, answer))
    docs = []
    for module, functions in by_module.items():
        for i in range(0, len(functions), FUNCTIONS_PER_DOC):
            entries = "\n\n".join(f"{name}\n    {answer}" for name, answer in functions[i:i + FUNCTIONS_PER_DOC])
            docs.append({"text": f"Module {module} (Python standard library)\n\n{entries}"})
    return docs


def drop_near_duplicates(heldout: list[dict], train: list[dict], docs: list[dict]) -> list[dict]:
    """Held-out records that are not near duplicates of a training record or document."""
    from whetstone.data.dedup import find_overlap
    from whetstone.data.records import Message, Record

    def as_record(i: int, row: dict) -> Record:
        if "text" in row:
            return Record("text", f"docs:{i}", text=row["text"])
        return Record("chat", f"row:{i}", messages=tuple(Message(m["role"], m["content"]) for m in row["messages"]))

    overlap = find_overlap([as_record(i, r) for i, r in enumerate(train + docs)],
                           [as_record(i, r) for i, r in enumerate(heldout)])
    leaked = {origin for origin, _ in overlap.exact} | {origin for origin, _ in overlap.near}
    return [r for i, r in enumerate(heldout) if f"row:{i}" not in leaked]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="at most N trained and N held-out facts (tests)")
    parser.add_argument("--wordings", type=int, default=len(TRAINING), choices=range(1, len(TRAINING) + 1),
                        help=f"training wordings per fact in train.jsonl (default {len(TRAINING)})")
    args = parser.parse_args(argv)
    trained, heldout_facts = choose_facts()
    if args.limit:
        trained, heldout_facts = trained[: args.limit], heldout_facts[: args.limit]

    train = [chat_record(t.format(name=name), answer) for name, answer in trained for t in TRAINING[: args.wordings]]
    # Interleave facts in training, so one batch is not several wordings of the same fact.
    train.sort(key=lambda r: hashlib.sha256(r["messages"][0]["content"].encode()).hexdigest())
    docs = documents(trained)
    heldout = drop_near_duplicates([chat_record(PARAPHRASE.format(name=n), a) for n, a in heldout_facts], train, docs)
    files = {
        "train.jsonl": train,
        "docs.jsonl": docs,
        "eval.jsonl": [chat_record(DEV.format(name=n), a) for n, a in trained[:DEV_FACTS]],
        "train_wording.jsonl": [chat_record(TRAINING[0].format(name=n), a) for n, a in trained],
        "paraphrase.jsonl": [chat_record(PARAPHRASE.format(name=n), a) for n, a in trained],
        "heldout.jsonl": heldout,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for file, rows in files.items():
        write_jsonl(args.out / file, rows)
    dropped = len(heldout_facts) - len(heldout)
    print(f"Python {sys.version.split()[0]}: {len(trained)} trained facts ({args.wordings} wordings each), "
          f"{len(heldout)} held-out facts ({dropped} dropped as near duplicates of training text); wrote "
          + ", ".join(f"{file} {len(rows)}" for file, rows in files.items()) + f" records to {args.out}")


if __name__ == "__main__":
    main()
