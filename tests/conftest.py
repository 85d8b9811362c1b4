"""Shared fixtures: a tiny Llama built locally once per session, and a small SFT dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_runs import write_jsonl

# Two cores: keep torch from oversubscribing them, and tokenizers from forking threads.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# train.precision auto is bf16 on CPUs with bf16 instructions: pin it to fp32, so that the suite's pinned losses and
# outcome bounds hold on any machine (subprocesses inherit it). tests/test_precision.py unsets it to test auto.
os.environ["WHETSTONE_AUTO_PRECISION"] = "fp32"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from whetstone.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from whetstone.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def qa_file(tmp_path) -> Path:
    """32 short chat records with variable lengths."""
    rows = []
    for i in range(32):
        question = f"What is {i} plus {i}?" + " Please answer." * (i % 3)
        answer = f"{i} plus {i} is {2 * i}." + " That is the sum." * (i % 4)
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return write_jsonl(tmp_path / "qa.jsonl", rows)
