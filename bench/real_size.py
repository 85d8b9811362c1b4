"""Issue 21 item 3: a real-size model on this CPU. LoRA on a random-init 1.17B Llama in bf16 with gradient
checkpointing, its peak RSS against `whetstone plan --device cpu` from config.json alone.

    .venv/bin/python bench/real_size.py [--steps 2] [--batch 2] [--max-length 64] [--keep DIR]

1. Build the model: TinyLlama-1.1B's shape (bench/gpu_check.py LLAMA_1B) with the embedded model's tokenizer and
   so its 49,152-token vocabulary (1.17B parameters), random weights, saved in bf16 (2.3 GB) with the tokenizer.
2. Plan it: `whetstone plan CONFIG --device cpu --memory 16GB --peak-tflops 0.01 --methods lora --json`, the
   analytic plan (no weights read), at the run's own config. Its `peak ckpt` is the prediction.
3. Train it: `whetstone train CONFIG` for --steps steps, train.precision bf16 (model.dtype auto: a bf16 base),
   gradient checkpointing on, on configs/sft_lora.yaml's data. summary.json gives the peak RSS and tokens/s.
Each stage runs in its own process, one after the other. On a CPU without bf16 instructions bf16 is emulated:
each step takes minutes, hence the short default shape; the memory figures do not depend on the speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from gpu_check import LLAMA_1B, llama_1b_config  # noqa: E402  (one definition of the 1B shape)

EMBEDDED = "smollm2-135m-instruct"
CONFIG = ROOT / "configs" / "sft_lora.yaml"


def build(path: Path) -> dict:
    """A random-init 1.17B Llama in bf16 with the embedded tokenizer, written to `path`."""
    import torch
    from transformers import AutoModelForCausalLM

    from whetstone.models import load_tokenizer

    tokenizer = load_tokenizer(EMBEDDED)
    config = llama_1b_config(tokenizer)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return {"params": params, "vocab": config.vocab_size, **LLAMA_1B}


def whetstone(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "whetstone", *args], capture_output=True, text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--keep", metavar="DIR", help="build the model here and keep it (reused when present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.keep) if args.keep else Path(tmp) / "llama-1b"
        started = time.perf_counter()
        if not (model_dir / "config.json").is_file():
            # A fresh process, so the build's memory is not counted in anything measured below.
            subprocess.run([sys.executable, __file__, "--build-only", str(model_dir)], check=True)
        built = time.perf_counter() - started
        shape = json.loads((model_dir / "shape.json").read_text())
        sets = [f"model.name={model_dir}", "train.precision=bf16", "train.gradient_checkpointing=true",
                f"train.batch_size={args.batch}", f"data.max_length={args.max_length}",
                f"train.max_steps={args.steps}", "eval.every=100000", "data.eval=null",
                f"data.train={ROOT / 'examples/stdlib_qa/train.jsonl'}"]
        set_args = [a for s in sets for a in ("--set", s)]
        plan = json.loads(whetstone("plan", str(CONFIG), *set_args, "--methods", "lora", "--device", "cpu",
                                    "--memory", "16GB", "--peak-tflops", "0.01", "--json").stdout)
        row = plan["methods"][0]
        predicted = row["peak_with_checkpointing_mb"]
        run = Path(tmp) / "run"
        started = time.perf_counter()
        whetstone("train", str(CONFIG), "-o", str(run), "--quiet", *set_args)
        wall = time.perf_counter() - started
        summary = json.loads((run / "summary.json").read_text())
    measured = summary["peak_memory_mb"]
    print(json.dumps({"model": shape, "build_s": round(built, 1), "plan": row["memory_mb"],
                      "plan_notes": plan["notes"], "summary": {k: summary.get(k) for k in (
                          "peak_memory_mb", "tokens_per_s", "tokens_read", "train_s", "precision", "model_dtype",
                          "train_loss")}, "train_wall_s": round(wall, 1)}, indent=1))
    print(f"1.17B Llama (random init), LoRA r 16 all-linear, bf16 base and autocast, gradient checkpointing, "
          f"batch {args.batch} x max_length {args.max_length}, {args.steps} steps:")
    print(f"  planned peak {predicted:,.0f} MB, measured peak RSS {measured:,.0f} MB: planner / measured = "
          f"{predicted / measured:.3f}; {summary['tokens_per_s']:.2f} tokens/s ({summary['precision']['why']})")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build-only":
        target = Path(sys.argv[2])
        (target / "shape.json").parent.mkdir(parents=True, exist_ok=True)
        figures = build(target)
        (target / "shape.json").write_text(json.dumps(figures))
    else:
        main()
