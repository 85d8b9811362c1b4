"""Tiny preference, feedback and prompt datasets whose answer is decided by one visible feature.

The chosen answers say "yes ... good", the rejected ones "no ... bad", under prompts of
random words; eval files use prompts the training files never show. A tiny model
can learn the rule in a few steps, so tests can pin what learning must reach.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["apple", "river", "stone", "cloud", "green", "paper", "window", "music", "silver", "garden"]


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(3)) + "?"


def preference_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": _prompt(rng), "chosen": "yes " * rng.randint(1, 3) + "good",
             "rejected": "no " * rng.randint(1, 3) + "bad"} for _ in range(n)]


def feedback_rows(n: int, seed: int) -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"], "label": bool(i % 2)}
            for i, r in enumerate(preference_rows(n, seed))]


def prompt_rows(n: int, seed: int) -> list[dict]:
    return [{"prompt": r["prompt"], "reference": "yes"} for r in preference_rows(n, seed)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def pref_config(model_dir, *overrides: str):
    """A tiny-model run config; `objective=NAME` overrides go first so later objective.* keys apply to it."""
    from whetstone.config import load_config

    first = [o for o in overrides if o.startswith("objective=")]
    rest = [o for o in overrides if not o.startswith("objective=")]
    base = [f"model={model_dir}", "train.lr=1e-3", "train.warmup=0.0", "train.log_every=1", "method.dropout=0.0",
            "eval.every=1000"]
    return load_config(None, first + base + rest)
