"""Core figures on this machine: embedded-model load times, and LoRA SFT throughput and memory.

    .venv/bin/python bench/load_and_train.py [--steps 30]

1. Cold load: dequantize the GGUF into an empty cache (a temp $WHETSTONE_CACHE), in a fresh process.
2. Warm load: the same, from the cache just written, in another fresh process.
3. LoRA SFT on the embedded model (configs/sft_lora.yaml: batch 8, max_length 256) for --steps steps,
   in a fresh process: real (non-padding) tokens/s and peak RSS, from its summary.json.
Each measurement runs alone, one after the other (this machine has 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOAD = (
    "import time; t = time.perf_counter();"
    "from whetstone.config import ModelConfig; from whetstone.models import load_model, load_tokenizer;"
    "load_tokenizer('smollm2-135m-instruct'); load_model(ModelConfig());"
    "print(time.perf_counter() - t)"
)


def timed_load(cache: str) -> float:
    out = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, check=True,
                         env={**os.environ, "WHETSTONE_CACHE": cache})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cold = timed_load(tmp)
        warm = timed_load(tmp)
        run = Path(tmp) / "run"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "whetstone", "train", str(ROOT / "configs/sft_lora.yaml"), "-o", str(run),
                        "--quiet", "--set", f"train.max_steps={args.steps}", "--set", "eval.every=100000",
                        "--set", f"data.train={ROOT / 'examples/stdlib_qa/train.jsonl'}",
                        "--set", f"data.eval={ROOT / 'examples/stdlib_qa/eval.jsonl'}"],
                       check=True, capture_output=True, env={**os.environ, "WHETSTONE_CACHE": tmp})
        wall = time.perf_counter() - start
        summary = json.loads((run / "summary.json").read_text())
    print(f"embedded model load, cold (GGUF -> cache): {cold:6.1f} s")
    print(f"embedded model load, warm (from cache):   {warm:6.1f} s")
    print(f"LoRA SFT, batch 8, max_length 256, {args.steps} steps: {summary['tokens_per_s']:.0f} real tokens/s, "
          f"peak RSS {summary['peak_memory_mb']:.0f} MB, {summary['tokens']} tokens in {summary['train_s']:.0f} s "
          f"of training ({wall:.0f} s with start-up and final eval)")


if __name__ == "__main__":
    main()
