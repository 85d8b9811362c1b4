"""Benchmark `whetstone data check` on a large JSONL file.

    .venv/bin/python bench/data_check.py                 # 1,000,000 records, about 300 MB
    .venv/bin/python bench/data_check.py --records 100000

Generates chat records (with planted exact duplicates, near duplicates and
PII) in a temporary directory, then runs the check in a fresh process per
configuration, with and without near-duplicate detection, and prints
records/s and peak RSS. Targets: peak RSS under 1.5 GB, at least 20,000
records/s, and near-dedup cost growing linearly with the record count.
CPU-heavy: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

EXACT_EVERY = 100  # every 100th record repeats one 50 records earlier
NEAR_EVERY = 200  # every 200th (+7) nearly repeats one 30 records earlier
PII_EVERY = 100  # every 100th (+13) carries an email and a phone number

CHILD = """
import json, resource, sys, time
from whetstone.data.check import check_file
start = time.perf_counter()
report = check_file(sys.argv[1], near_dedup=sys.argv[2] == "1")
seconds = time.perf_counter() - start
print(json.dumps({
    "seconds": seconds,
    "rows": report.rows,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "exact_groups": len(report.exact_duplicates),
    "near_groups": len(report.near_duplicates or []),
    "pii": {k: s.count for k, s in report.pii.items()},
}))
"""


def generate(path: str, records: int, seed: int = 0) -> None:
    """Write ``records`` chat rows of about 300 bytes each, in chunks."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, size=rng.integers(3, 9))) for _ in range(20_000)])
    recent: list[tuple[str, str]] = []
    with open(path, "w", encoding="utf-8") as out:
        for start in range(0, records, 10_000):
            n = min(10_000, records - start)
            questions = vocab[rng.integers(0, len(vocab), size=(n, 32))]
            answers = vocab[rng.integers(0, len(vocab), size=(n, 10))]
            lines = []
            for k in range(n):
                i = start + k
                user, assistant = " ".join(questions[k]) + "?", " ".join(answers[k]) + "."
                if i % EXACT_EVERY == 0 and i >= 50:
                    user, assistant = recent[-50]
                elif i % NEAR_EVERY == 7 and i >= 30:
                    user, assistant = recent[-30][0], recent[-30][1].rsplit(" ", 1)[0] + " changed."
                elif i % PII_EVERY == 13:
                    user += f" Write to user{i}@example.com or call +1 415 555 {i % 10000:04d}."
                recent = recent[-63:] + [(user, assistant)]
                messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
                lines.append(json.dumps({"messages": messages}))
            out.write("\n".join(lines) + "\n")


def run_check(path: str, near_dedup: bool) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, path, "1" if near_dedup else "0"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dir", help="where to write the data (default: a temporary directory, deleted after)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "bench.jsonl")
        start = time.perf_counter()
        generate(path, args.records)
        size_mb = os.path.getsize(path) / 2**20
        print(f"generated {args.records:,} records, {size_mb:.0f} MB, in {time.perf_counter() - start:.0f} s")
        print(f"{'configuration':<26}{'records/s':>12}{'seconds':>10}{'peak RSS MB':>13}  findings")
        for near in (False, True):
            result = run_check(path, near)
            name = "check, near-dedup on" if near else "check, near-dedup off"
            findings = (
                f"exact groups {result['exact_groups']}, near groups {result['near_groups']}, PII {result['pii']}"
            )
            rate = result["rows"] / result["seconds"]
            print(f"{name:<26}{rate:>12,.0f}{result['seconds']:>10.1f}{result['peak_rss_mb']:>13.0f}  {findings}")


if __name__ == "__main__":
    main()
