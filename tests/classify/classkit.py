"""Data and runs shared by the classify tests: a separable 3-class task on the tiny model."""

from __future__ import annotations

import random
from pathlib import Path

from tiny_runs import tiny_config, write_jsonl

LABELS = ["negative", "neutral", "positive"]
_SUBJECTS = ["the quick brown fox", "a journey of a thousand miles", "return the absolute value of a number",
             "split the string at spaces", "join two path components", "hello world", "the lazy dog"]


def class_rows(n: int, seed: int, labels=LABELS) -> list[dict]:
    """Texts whose last word is the class: a frozen random backbone still separates them at its last token."""
    rng = random.Random(seed)
    return [{"text": f"{rng.choice(_SUBJECTS)} is {label}", "label": label}
            for label in (rng.choice(labels) for _ in range(n))]


def class_files(directory: Path, n_train: int = 128, n_eval: int = 30) -> tuple[Path, Path]:
    return (write_jsonl(directory / "train.jsonl", class_rows(n_train, 0)),
            write_jsonl(directory / "eval.jsonl", class_rows(n_eval, 1)))


def classify_config(model_dir, train_file, eval_file, *overrides: str):
    return tiny_config(model_dir, train_file, "objective=classify", f"data.eval={eval_file}", "train.lr=3e-2",
                       "train.batch_size=8", "train.epochs=4", "eval.every=1000", *overrides)
