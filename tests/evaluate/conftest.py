"""Fixtures for the evaluation tests: small task files and tiny runs trained once per session.

Helpers are fixtures (factories), not importable names: `conftest` is already the
name of tests/conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _qa_rows(numbers) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in numbers]


@pytest.fixture(scope="session")
def write_jsonl():
    """write_jsonl(path, rows) -> path."""
    return _write_rows


@pytest.fixture(scope="session")
def train_run(tmp_path_factory):
    """train_run(name, model_dir, train_file, *overrides) -> the run directory of a quiet tiny run."""
    from whetstone.config import load_config
    from whetstone.train.dispatch import train

    root = tmp_path_factory.mktemp("runs")

    def _train(name: str, model_dir, train_file, *overrides: str) -> Path:
        base = [f"model={model_dir}", f"data.train={train_file}", "train.warmup=0.0", "train.log_every=1000",
                "train.checkpoint_every=1000", "eval.every=1000", "method.dropout=0.0"]
        train(load_config(None, base + list(overrides)), root / name, progress=False)
        return root / name

    return _train


@pytest.fixture(scope="session")
def task_files(tmp_path_factory) -> tuple[Path, Path]:
    """(train, eval): 24 training and 8 held-out arithmetic questions of one template."""
    root = tmp_path_factory.mktemp("task")
    train = _write_rows(root / "train.jsonl", _qa_rows(range(24)))
    return train, _write_rows(root / "eval.jsonl", _qa_rows(range(24, 32)))


@pytest.fixture(scope="session")
def lora_run(train_run, tiny_model_dir, task_files) -> Path:
    """A LoRA run of the tiny model trained hard on the task, with end-of-training metrics."""
    train_file, eval_file = task_files
    return train_run("lora", tiny_model_dir, train_file, f"data.eval={eval_file}", "method.name=lora", "method.r=8",
                     "method.alpha=16", "train.lr=5e-3", "train.epochs=60", "train.batch_size=4",
                     "eval.metrics=[loss, rouge, chrf, exact_match]", "eval.max_new_tokens=16")
