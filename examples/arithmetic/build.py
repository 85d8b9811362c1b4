"""Build the verifiable arithmetic task of the RL outcome table (docs/preferences.md "Outcome table").

One-step word problems -- add, take away, multiply, share equally -- with small whole numbers, written
from templates by a seeded generator, so the files are the same on every machine and license-clean
(nothing is copied from anywhere). Each record is a prompt record with its answer as `reference`, scored by
`whetstone.rewards:numeric_match`. Train and eval never share a problem: the eval problems use names and
objects that training never saw, so held-out accuracy measures arithmetic, not recall.

    python examples/arithmetic/build.py        # writes train.jsonl (400) and eval.jsonl (100) next to this script
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_TRAIN, N_EVAL = 400, 100
SUFFIX = "\n\nAnswer with the number only."

TRAIN_NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jack", "Lena", "Marco"]
EVAL_NAMES = ["Nora", "Oscar", "Paula", "Quentin", "Rosa", "Sam"]
TRAIN_THINGS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells"]
EVAL_THINGS = ["oranges", "crayons", "coins", "cards"]

# (operation, template, answer). Templates take name, things, a, b.
TEMPLATES = [
    ("add", "{name} has {a} {things}. {name} gets {b} more. How many {things} does {name} have now?",
     lambda a, b: a + b),
    ("add", "There are {a} {things} in a box and {b} {things} on the table. How many {things} are there in all?",
     lambda a, b: a + b),
    ("sub", "{name} had {a} {things} and gave {b} of them away. How many {things} does {name} have left?",
     lambda a, b: a - b),
    ("sub", "A shelf held {a} {things}. {name} took {b} of them. How many {things} are still on the shelf?",
     lambda a, b: a - b),
    ("mul", "{name} buys {a} bags with {b} {things} in each bag. How many {things} does {name} buy?",
     lambda a, b: a * b),
    ("div", "{name} shares {a} {things} equally among {b} friends. How many {things} does each friend get?",
     lambda a, b: a // b),
]


def operands(op: str, rng: random.Random) -> tuple[int, int]:
    if op == "add":
        return rng.randint(1, 10), rng.randint(1, 10)
    if op == "sub":
        a = rng.randint(5, 15)
        return a, rng.randint(1, a - 1)
    if op == "mul":
        return rng.randint(2, 5), rng.randint(2, 5)
    b = rng.randint(2, 5)
    return b * rng.randint(2, 5), b  # div: always a whole answer


def problems(n: int, names: list[str], things: list[str], rng: random.Random, seen: set[str]) -> list[dict]:
    records = []
    while len(records) < n:
        op, template, answer = TEMPLATES[len(records) % len(TEMPLATES)]
        a, b = operands(op, rng)
        text = template.format(name=rng.choice(names), things=rng.choice(things), a=a, b=b)
        if text in seen:
            continue
        seen.add(text)
        records.append({"prompt": text + SUFFIX, "reference": str(answer(a, b)), "operation": op})
    return records


def main() -> None:
    rng, seen = random.Random(2024), set()
    for name, n, names, things in (("train", N_TRAIN, TRAIN_NAMES, TRAIN_THINGS),
                                   ("eval", N_EVAL, EVAL_NAMES, EVAL_THINGS)):
        records = problems(n, names, things, rng, seen)
        rng.shuffle(records)
        with open(HERE / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        print(f"{name}.jsonl: {len(records)} problems")


if __name__ == "__main__":
    main()
