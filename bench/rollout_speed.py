"""Rollout throughput: sampled completion tokens per second of an online objective's rollout, three ways.

    python bench/rollout_speed.py [--prompts 8] [--new-tokens 24] [--repeats 3]

On the embedded model with the grpo example's prompts (examples/preferences/choices_train.jsonl), the same
sampling settings as configs/grpo.yaml (temperature 0.8, top-p 1):
    batched     whetstone's rollout (objectives/online.py sample_completions): every prompt at once,
                left-padded, with the KV cache
    one_by_one  the same sampler called on one prompt at a time (what a loop over prompts would do)
    no_cache    batched, with the KV cache off: every new token re-reads the whole sequence
The ways run interleaved, `repeats` times each, so that load on the machine hits each alike; each figure is the
median. Tokens are the completions' real tokens (through the first end of turn), the same count for the three
ways only in expectation (sampling differs), so the figure is tokens per second, and the ratio is of those.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from whetstone.config import EMBEDDED_MODEL, load_config  # noqa: E402
from whetstone.data.formats import load_records  # noqa: E402
from whetstone.models import load_model, load_tokenizer  # noqa: E402
from whetstone.objectives.online import sample_completions, tokenize_prompts  # noqa: E402


def timed(sample, prompts) -> tuple[int, float]:
    start = time.perf_counter()
    rollouts = sample(prompts)
    return sum(int(r.mask.sum()) for r in rollouts), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    config = load_config(ROOT / "configs/grpo.yaml", [f"objective.max_new_tokens={args.new_tokens}"])
    obj = config.objective
    tokenizer = load_tokenizer(config.model, config.data.chat_template)
    records = load_records(str(ROOT / "examples/preferences/choices_train.jsonl")).records[: args.prompts]
    prompts, _ = tokenize_prompts(records, tokenizer, config.data.max_length - obj.max_new_tokens)
    model, _ = load_model(config.model, device=torch.device("cpu"))
    model.eval()
    cpu = torch.device("cpu")
    uncached = partial(model.generate, use_cache=False)

    def batched(ps):
        return [sample_completions(model, tokenizer, ps, obj, cpu)]

    def one_by_one(ps):
        return [sample_completions(model, tokenizer, [p], obj, cpu) for p in ps]

    def no_cache(ps):
        original, model.generate = model.generate, uncached
        try:
            return [sample_completions(model, tokenizer, ps, obj, cpu)]
        finally:
            model.generate = original

    ways = {"batched": batched, "one_by_one": one_by_one, "no_cache": no_cache}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    torch.manual_seed(0)
    batched(prompts[:2])  # warm-up: the first generate pays for lazy initialisation
    for _ in range(args.repeats):
        for name, sample in ways.items():
            tokens, seconds = timed(sample, prompts)
            rates[name].append(tokens / seconds)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {"model": EMBEDDED_MODEL, "prompts": len(prompts), "max_new_tokens": args.new_tokens,
              "threads": torch.get_num_threads(), "tokens_per_s": {k: round(v, 1) for k, v in medians.items()},
              "batched_vs_one_by_one": round(medians["batched"] / medians["one_by_one"], 2),
              "batched_vs_no_cache": round(medians["batched"] / medians["no_cache"], 2)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
