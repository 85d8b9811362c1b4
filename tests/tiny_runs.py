"""Building blocks for tests that train tiny runs (importable, unlike conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_config(model_dir, train_file, *overrides: str):
    from whetstone.config import load_config

    base = [f"model={model_dir}", f"data.train={train_file}", "train.lr=1e-3", "train.warmup=0.0",
            "train.log_every=1", "method.dropout=0.0"]
    return load_config(None, base + list(overrides))
