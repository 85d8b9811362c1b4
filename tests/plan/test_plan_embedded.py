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


@pytest.mark.slow
def test_predicted_peak_and_time_match_short_real_runs(tmp_path):
    config = str(ROOT / "configs/sft_lora.yaml")
    plan = json.loads(_whetstone("plan", config, "--methods", "full,freeze,lora", "--json", *COMMON))
    predicted = {row["method"]: row for row in plan["methods"]}
    assert plan["steps"] == STEPS
    lines = []
    for method in ("full", "freeze", "lora"):
        run = tmp_path / method
        _whetstone("train", config, "-o", str(run), "--quiet", "--set", f"method.name={method}", *COMMON)
        summary = json.loads((run / "summary.json").read_text())
        row = predicted[method]
        assert row["trainable_params"] == summary["trainable_params"]
        assert row["total_params"] == summary["total_params"]
        lines.append((method, row["peak_mb"], summary["peak_memory_mb"], row["seconds"], summary["train_s"]))
    print("\nmethod  predicted peak MB  measured  predicted s  measured")
    for method, peak, measured_peak, seconds, measured_s in lines:
        print(f"{method:<6}  {peak:17.0f}  {measured_peak:8.0f}  {seconds:11.1f}  {measured_s:8.1f}")
    for method, peak, measured_peak, seconds, measured_s in lines:
        assert peak == pytest.approx(measured_peak, rel=0.25), method
        assert seconds == pytest.approx(measured_s, rel=0.30), method
