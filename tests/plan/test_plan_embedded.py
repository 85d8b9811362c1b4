"""The planner against real runs of the embedded model: peak memory within 25%, time within 30%.

One `whetstone plan` and three short `whetstone train` runs (full, freeze, lora; batch 8,
max_length 256, the stdlib QA data), each a fresh process, as a user would run them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
COMMON = ["--set", f"train.max_steps={STEPS}", "--set", "method.top_blocks=4", "--set", "eval.every=100000",
          "--set", f"data.train={ROOT / 'examples/stdlib_qa/train.jsonl'}",
          "--set", f"data.eval={ROOT / 'examples/stdlib_qa/eval.jsonl'}"]


def _whetstone(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "whetstone", *args], capture_output=True, text=True, cwd=ROOT,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _within(row: dict, summary: dict) -> bool:
    return (row["peak_mb"] == pytest.approx(summary["peak_memory_mb"], rel=0.25)
            and row["seconds"] == pytest.approx(summary["train_s"], rel=0.30))


def _plan(config: str, methods: str) -> dict:
    plan = json.loads(_whetstone("plan", config, "--methods", methods, "--json", *COMMON))
    assert plan["steps"] == STEPS
    return {row["method"]: row for row in plan["methods"]}


def _train(config: str, method: str, run: Path) -> dict:
    _whetstone("train", config, "-o", str(run), "--quiet", "--set", f"method.name={method}", *COMMON)
    return json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_predicted_peak_and_time_match_short_real_runs(tmp_path):
    """Each method's prediction against its real run; a method that misses is planned and run once more.

    A shared 2-core CI machine has bursts of contention that slow one process by a third, and glibc
    places freed memory differently from run to run. A second plan-and-run pair tells such a burst from
    a wrong prediction: a wrong model misses both times. Memory is asserted on the last pair. Contention
    only ever adds time, to the planner's timed probe as much as to the run, so time is asserted as the
    fastest prediction against the fastest run: a burst in either is then not counted, and a wrong time
    model still misses.
    """
    config = str(ROOT / "configs/sft_lora.yaml")
    predicted = _plan(config, "full,freeze,lora")
    lines, final, fastest = [], {}, {}
    for method in ("full", "freeze", "lora"):
        row, summary = predicted[method], _train(config, method, tmp_path / method)
        assert row["trainable_params"] == summary["trainable_params"]
        assert row["total_params"] == summary["total_params"]
        lines.append((method, row, summary))
        pairs = [(row, summary)]
        if not _within(row, summary):
            row, summary = _plan(config, method)[method], _train(config, method, tmp_path / f"{method}-again")
            lines.append((f"{method}*", row, summary))
            pairs.append((row, summary))
        final[method] = (row, summary)
        fastest[method] = (min(r["seconds"] for r, _ in pairs), min(s["train_s"] for _, s in pairs))
    print("\nmethod  predicted peak MB  measured  predicted s  measured  probe: first step s  ms/token  "
          "(* the second pair)")
    for method, row, summary in lines:
        timed = row["measured"]
        print(f"{method:<7} {row['peak_mb']:17.0f}  {summary['peak_memory_mb']:8.0f}  {row['seconds']:11.1f}  "
              f"{summary['train_s']:8.1f}  {timed['first_step_s']:19.2f}  {1e3 * timed['per_token_s']:8.3f}")
    for method, (row, summary) in final.items():
        assert row["peak_mb"] == pytest.approx(summary["peak_memory_mb"], rel=0.25), method
        predicted_s, measured_s = fastest[method]
        assert predicted_s == pytest.approx(measured_s, rel=0.30), method
