"""Refactors keep behaviour: the shipped configs' metrics.jsonl losses, recorded before and after, then diffed.

    python bench/loss_diff.py record before.json      # on the old code
    python bench/loss_diff.py record after.json       # on the new code
    python bench/loss_diff.py diff before.json after.json

`record` trains each shipped config (demo, dpo, grpo, rlhf_reward then rlhf_ppo, stages) through the command line,
shortened with --set so that the five take minutes, not hours: a few steps each, logged every step, with an eval and
a checkpoint inside the run. It keeps every logged number of every metrics.jsonl row except the clocks and memory
(which differ between any two runs), as the logged strings. `diff` compares them string for string: the same
losses to the logged digits, or the first row and key where they part.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (config, overrides). rlhf_reward runs first: rlhf_ppo reads its run as the reward model.
RUNS: dict[str, tuple[str, list[str]]] = {
    "demo": ("configs/demo.yaml", ["train.epochs=1", "train.max_steps=6", "train.log_every=1",
                                   "train.checkpoint_every=3", "eval.every=3", "eval.max_batches=2"]),
    "dpo": ("configs/dpo.yaml", ["train.max_steps=4", "train.log_every=1", "eval.every=2", "eval.max_batches=2"]),
    "grpo": ("configs/grpo.yaml", ["train.max_steps=3", "train.log_every=1", "eval.every=2", "eval.max_batches=2"]),
    "rlhf_reward": ("configs/rlhf_reward.yaml", ["train.max_steps=4", "train.log_every=1", "eval.every=2",
                                                 "eval.max_batches=2"]),
    "rlhf_ppo": ("configs/rlhf_ppo.yaml", ["train.max_steps=2", "train.log_every=1", "eval.every=2",
                                           "eval.max_batches=1", "objective.reward=[{run: {rlhf_reward}}]"]),
    "stages": ("configs/stages.yaml", ["train.epochs=1", "train.max_steps=3", "train.log_every=1",
                                       "eval.every=3", "eval.max_batches=2"]),
}

# Keys that differ between any two runs of the same code.
CLOCKS = ("tokens_per_s", "elapsed_s", "time", "seconds", "rss", "memory", "mb", "per_s")


def _kept(key: str) -> bool:
    return not any(part in key.lower() for part in CLOCKS)


def _rows(run_dir: Path) -> dict[str, list[dict]]:
    """Every metrics.jsonl under the run (a stages run has one per stage), numbers kept as their logged text."""
    found = {}
    for path in sorted(run_dir.rglob("metrics.jsonl")):
        rows = []
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows.append({k: json.dumps(v) for k, v in row.items() if _kept(k)})
        found[str(path.relative_to(run_dir))] = rows
    return found


def record(out: Path, only: list[str]) -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, overrides) in RUNS.items():
            if only and name not in only and not (name == "rlhf_reward" and "rlhf_ppo" in only):
                continue
            run_dir = Path(tmp) / name
            sets = [o.replace("{rlhf_reward}", str(Path(tmp) / "rlhf_reward")) for o in overrides]
            command = [sys.executable, "-m", "whetstone", "train", config, "-o", str(run_dir), "--quiet"]
            for item in sets:
                command += ["--set", item]
            print(f"== {name}: {' '.join(command[3:])}", flush=True)
            done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if done.returncode != 0:
                raise SystemExit(f"{name}: the run failed (exit {done.returncode})")
            results[name] = _rows(run_dir)
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


def diff(before: dict, after: dict) -> int:
    """Prints one line per config and returns how many differ."""
    differing = 0
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a is None or b is None:
            print(f"{name:12s} only in {'after' if a is None else 'before'}")
            differing += 1
            continue
        values = sum(len(row) for rows in a.values() for row in rows)
        problem = _first_difference(a, b)
        print(f"{name:12s} {'DIFFERS: ' + problem if problem else f'identical ({values} logged values)'}")
        differing += bool(problem)
    return differing


def _first_difference(a: dict, b: dict) -> str | None:
    if sorted(a) != sorted(b):
        return f"metrics files {sorted(a)} vs {sorted(b)}"
    for path in sorted(a):
        if len(a[path]) != len(b[path]):
            return f"{path}: {len(a[path])} rows vs {len(b[path])}"
        for i, (ra, rb) in enumerate(zip(a[path], b[path])):
            for key in sorted(set(ra) | set(rb)):
                if ra.get(key) != rb.get(key):
                    return f"{path} row {i} {key}: {ra.get(key)} vs {rb.get(key)}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--only", nargs="*", default=[], choices=sorted(RUNS))
    dif = sub.add_parser("diff")
    dif.add_argument("before", type=Path)
    dif.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.verb == "record":
        record(args.out, args.only)
        return 0
    return 1 if diff(json.loads(args.before.read_text()), json.loads(args.after.read_text())) else 0


if __name__ == "__main__":
    raise SystemExit(main())
