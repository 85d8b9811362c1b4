"""`make demo`: fine-tune the embedded model on a small knowledge base, before and after.

1. asks the base model questions it was not trained on (held-out stdlib functions),
2. trains LoRA adapters on the training questions (configs/demo.yaml),
3. asks the same questions again, and prints both answers beside the reference.
"""

from __future__ import annotations

import json
import sys
import time
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from whetstone.config import load_config  # noqa: E402
from whetstone.errors import WhetstoneError  # noqa: E402
from whetstone.models.inference import generate_answers, load_for_inference  # noqa: E402
from whetstone.train.dispatch import train  # noqa: E402

N_QUESTIONS = 4


def held_out_questions() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (ROOT / "examples/stdlib_qa/eval.jsonl").read_text().splitlines()]
    picked = rows[:: max(1, len(rows) // N_QUESTIONS)][:N_QUESTIONS]
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in picked]


def ask(model, tokenizer, questions):
    return generate_answers(model, tokenizer, [[{"role": "user", "content": q}] for q, _ in questions],
                            max_new_tokens=60)


def main() -> int:
    start = time.perf_counter()
    questions = held_out_questions()
    run_dir = ROOT / "runs" / "demo"

    print("== 1. The base model answers held-out questions")
    model, tokenizer = load_for_inference("smollm2-135m-instruct")
    before = ask(model, tokenizer, questions)
    del model

    print("\n== 2. LoRA fine-tuning on the stdlib knowledge base (configs/demo.yaml)")
    config = load_config(ROOT / "configs/demo.yaml", [f"output={run_dir}"])
    summary = train(config, run_dir, overwrite=True)

    print("\n== 3. The tuned model answers the same questions")
    model, tokenizer = load_for_inference(run=str(run_dir))
    after = ask(model, tokenizer, questions)

    wrap = lambda text: textwrap.fill(text, 100, initial_indent="      ", subsequent_indent="      ")  # noqa: E731
    for (question, reference), b, a in zip(questions, before, after):
        print(f"\nQ: {question}")
        print("  reference:\n" + wrap(reference))
        print("  before:\n" + wrap(b))
        print("  after:\n" + wrap(a))
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    print(f"\ntrain loss {first['loss']:.3f} -> {summary['train_loss']:.3f}; held-out eval loss "
          f"{summary['eval_loss']:.3f} (perplexity {summary['eval_ppl']:.1f}); "
          f"{summary['tokens_per_s']:.0f} tokens/s; peak RSS {summary['peak_memory_mb']:.0f} MB")
    print(f"run directory: {run_dir}  (adapter in {run_dir / 'adapter'})")
    print(f"try it: .venv/bin/whetstone chat --run {run_dir}")
    print(f"demo took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WhetstoneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
