"""Build the knowledge-base QA recipe's dataset: closed-book questions about the standard library.

Source: the same facts as examples/stdlib_qa (the first paragraph of real docstrings in the
running Python's standard library; license-clean: PSF License), reused through its
`collect()`.

The demo (examples/stdlib_qa) holds out whole functions, so it measures whether the model
learns the *style* of the answers. A knowledge base asks something else: after tuning on
the documents, can the model answer questions *about those documents* that are worded
differently? So here every fact of the chosen subset is in training, asked three ways,
and the eval set asks about the same facts with a fourth wording never seen in training.
Which wording is held out is chosen per fact by a hash, so every wording is held out for
some facts. This is the closed-book knowledge-injection setting; expect high scores only
on facts the model has memorised.

    python examples/knowledge_base/build.py              # writes train.jsonl and eval.jsonl here
    python examples/knowledge_base/build.py --out DIR --limit 40
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stdlib_qa.build import bucket, chat_record, collect, write_jsonl  # noqa: E402  (examples/ is not a package)

QUESTIONS = [
    "What does `{name}` do in Python?",
    "In Python's standard library, what is `{name}` for?",
    "Explain what the Python function `{name}` does.",
    "I found `{name}` in some code. What does it do?",
]
FACT_SHARE = 5  # keep one fact in FACT_SHARE: ~130 facts, so 2 epochs fit in a few CPU minutes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="at most N facts (tests)")
    args = parser.parse_args(argv)
    facts = [(name, answer) for name, answer in collect() if bucket(name + "#kb", FACT_SHARE) == 0]
    if args.limit:
        facts = facts[: args.limit]
    train, evaluation = [], []
    for name, answer in facts:
        held_out = bucket(name + "#wording", len(QUESTIONS))
        for i, template in enumerate(QUESTIONS):
            (evaluation if i == held_out else train).append(chat_record(template.format(name=name), answer))
    # Interleave facts in training, so one batch is not three wordings of the same fact.
    train.sort(key=lambda r: hashlib.sha256(r["messages"][0]["content"].encode()).hexdigest())
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "eval.jsonl", evaluation)
    print(f"Python {sys.version.split()[0]}: {len(facts)} facts; wrote {len(train)} train and {len(evaluation)} "
          f"eval records to {args.out}")


if __name__ == "__main__":
    main()
