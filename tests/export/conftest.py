"""Fixtures for shipping a run: tiny LoRA runs trained once per session, and reference logits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from export.shipkit import qa_rows, train_tiny, write_rows


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished LoRA run (4 steps at lr 1e-2, so the adapter moves the logits) with an eval set."""
    root = tmp_path_factory.mktemp("lora_run")
    data = write_rows(root / "train.jsonl", qa_rows(range(16)))
    held = write_rows(root / "eval.jsonl", qa_rows(range(16, 20)))
    return train_tiny(tiny_model_dir, root / "run", data, f"data.eval={held}", "eval.every=2")


@pytest.fixture(scope="session")
def second_run(tmp_path_factory, tiny_model_dir) -> Path:
    """Another task on the same base, for the adapter library."""
    root = tmp_path_factory.mktemp("second_run")
    data = write_rows(root / "train.jsonl", qa_rows(range(16), word="minus"))
    return train_tiny(tiny_model_dir, root / "run", data, "method.r=4", "train.seed=1")


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("full_run")
    data = write_rows(root / "train.jsonl", qa_rows(range(8)))
    return train_tiny(tiny_model_dir, root / "run", data, "method.name=full", "train.max_steps=2", "train.lr=1e-3")


@pytest.fixture
def run_copy(tmp_path, lora_run) -> Path:
    """A private copy of lora_run that a test may change."""
    return Path(shutil.copytree(lora_run, tmp_path / "run"))
