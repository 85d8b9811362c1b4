"""Build the preference, feedback and prompt datasets of the shipped RLHF / DPO / KTO / GRPO examples.

Everything comes from the running Python's standard library (license-clean: PSF),
through examples/stdlib_qa/build.py: for each function, a question and the first
paragraph of its docstring. Functions are split between train and eval exactly
as in stdlib_qa (by a hash of the name), so every eval question is about a
function that training never saw.

    pairs_*.jsonl      preference: chosen = the true docstring answer; rejected = one of
                       wrong (another module's function's docstring), evasive (a non-answer)
                       or garbled (the true answer with its words shuffled)
    feedback_*.jsonl   kto: the same questions, unpaired: each gets the true answer
                       (label true) or a rejected one (label false), half and half
    questions_*.jsonl  prompt: the questions alone, for PPO against the reward model
    choices_*.jsonl    prompt: a docstring and four function names of its module, "which one
                       does this describe?"; reference = the name. For GRPO with the
                       programmatic rewards in rewards.py (exact match + a format regex)

    python examples/preferences/build.py        # writes the files next to this script
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent

EVASIVE = [
    "I'm not sure what `{name}` does. You could check the Python documentation.",
    "`{name}` is a function in Python's standard library.",
    "That depends on what you want to do. It is best to look it up in the official docs.",
    "Sorry, I can't help with that question.",
    "It does what its name says. Try it in the interpreter and see.",
]

CHOICE_QUESTION = (
    'Which function of the Python module `{module}` does this describe?\n\n"{doc}"\n\n'
    "Answer with one of: {options}."
)
N_OPTIONS = 4


def _stdlib_qa():
    spec = importlib.util.spec_from_file_location("stdlib_qa_build", HERE.parent / "stdlib_qa" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rejected_answer(name: str, answer: str, pairs: list[tuple[str, str]], bucket) -> tuple[str, str]:
    """(kind, text): a worse answer to the question about `name`, chosen deterministically."""
    rng = random.Random(int(hashlib.sha256(name.encode()).hexdigest(), 16))
    kind = ("wrong", "evasive", "garbled")[bucket(name + "#kind", 3)]
    if kind == "wrong":
        module = name.rsplit(".", 1)[0]
        others = [a for n, a in pairs if n.rsplit(".", 1)[0] != module]
        return kind, rng.choice(others)
    if kind == "evasive":
        return kind, rng.choice(EVASIVE).format(name=name)
    words = answer.split()
    for _ in range(10):
        rng.shuffle(words)
        if " ".join(words) != answer:
            break
    return kind, " ".join(words)


def main() -> None:
    qa = _stdlib_qa()
    pairs = qa.collect()
    bucket = qa.bucket
    split: dict[str, dict[str, list]] = {"train": defaultdict(list), "eval": defaultdict(list)}
    kinds = Counter()
    for name, answer in pairs:
        part = split["eval" if bucket(name, 10) == 0 else "train"]
        question = qa.QUESTIONS[bucket(name + "?", len(qa.QUESTIONS))].format(name=name)
        kind, rejected = rejected_answer(name, answer, pairs, bucket)
        kinds[kind] += 1
        part["pairs"].append({"prompt": question, "chosen": answer, "rejected": rejected})
        desirable = bucket(name + "#kto", 2) == 0
        part["feedback"].append({"prompt": question, "completion": answer if desirable else rejected,
                                 "label": desirable})
        part["questions"].append({"prompt": question, "reference": answer})

    # GRPO: the docstring is in the prompt, the answer is one of four functions of the same module.
    by_module = defaultdict(list)
    for name, _ in pairs:
        by_module[name.rsplit(".", 1)[0]].append(name.rsplit(".", 1)[1])
    for name, answer in pairs:
        module, attr = name.rsplit(".", 1)
        if len(by_module[module]) < N_OPTIONS:
            continue
        rng = random.Random(int(hashlib.sha256((name + "#choices").encode()).hexdigest(), 16))
        options = [attr] + rng.sample([a for a in by_module[module] if a != attr], N_OPTIONS - 1)
        rng.shuffle(options)
        question = CHOICE_QUESTION.format(module=module, doc=answer.rstrip("\\"), options=", ".join(f"`{o}`" for o in options))
        part = split["eval" if bucket(name, 10) == 0 else "train"]
        part["choices"].append({"prompt": question, "reference": attr})

    for part_name, files in split.items():
        for stem, rows in files.items():
            with open(HERE / f"{stem}_{part_name}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    counts = ", ".join(f"{stem}: {len(split['train'][stem])} train / {len(split['eval'][stem])} eval"
                       for stem in split["train"])
    print(f"Python {sys.version.split()[0]}: {counts}; rejected kinds {dict(kinds)}")


if __name__ == "__main__":
    main()
