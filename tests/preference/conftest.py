"""Fixtures of the preference tests: tiny data files (see prefkit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefkit import feedback_rows, preference_rows, write_jsonl


@pytest.fixture
def pair_files(tmp_path) -> tuple[Path, Path]:
    return (write_jsonl(tmp_path / "pairs_train.jsonl", preference_rows(48, 1)),
            write_jsonl(tmp_path / "pairs_eval.jsonl", preference_rows(16, 2)))


@pytest.fixture
def feedback_files(tmp_path) -> tuple[Path, Path]:
    return (write_jsonl(tmp_path / "kto_train.jsonl", feedback_rows(48, 3)),
            write_jsonl(tmp_path / "kto_eval.jsonl", feedback_rows(16, 4)))
