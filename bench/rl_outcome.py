"""The RL outcome table (docs/preferences.md "Outcome table"): every GRPO variant on the arithmetic task, one budget.

    flock /tmp/whetstone-cpu.lock .venv/bin/python bench/rl_outcome.py run [--out runs/rl_outcome] [--minutes 6]
                                                                       [--only grpo dapo ...] [--set KEY=VALUE ...]
    .venv/bin/python bench/rl_outcome.py table [--out runs/rl_outcome]

`run` trains configs/rl_arithmetic.yaml once per variant, one after another (never two at once: on a small CPU
they would slow each other), each with the same training-time budget `train.max_minutes` (default: the config's),
into OUT/VARIANT. `table` reads those run directories and prints the markdown table:

- accuracy before / after: the held-out reward, which is numeric_match alone, so the share of the 100 held-out
  problems answered right; one sample per problem at the training temperature and a fixed seed. "before" is the
  first run's step-0 evaluation: it is the same for every variant (the base model, the seed), so the later runs
  skip it (eval.before: false);
- KL: held-out, nats per completion (the sum over its tokens of log pi - log pi_ref), after training;
- rounds: rounds (rollout, score, update) that fit the budget; dynamic sampling (dapo) spends more per round;
- rollout tokens/s: completion tokens sampled per second of sampling, the median over the run's rounds;
- train / wall: minutes of training steps (the budget) and of the whole run (loading, both evaluations, saving).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp")
CONFIG = ROOT / "configs/rl_arithmetic.yaml"


def run(out: Path, variants: list[str], minutes: float | None, overrides: list[str]) -> None:
    whetstone = Path(sys.executable).parent / "whetstone"
    for n, variant in enumerate(variants):
        # The held-out evaluation before training is the same for every variant (the same base model, LoRA's B
        # starting at zero, the same seed), so only the first run makes it.
        sets = [f"objective.variant={variant}", *overrides] + (["eval.before=false"] if n else [])
        if minutes is not None:
            sets.append(f"train.max_minutes={minutes}")
        command = [str(whetstone), "train", str(CONFIG), "-o", str(out / variant), "--overwrite", "--quiet"]
        for item in sets:
            command += ["--set", item]
        print(f"{variant}: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True)


def row(run_dir: Path, summary: dict, before: float) -> dict:
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["rollout_tokens_per_s"] for r in rounds if "rollout_tokens_per_s" in r]
    return {"variant": run_dir.name, "before": before, "after": summary["eval_reward"],
            "kl": summary["eval_kl"], "rounds": summary["steps"], "length": summary.get("eval_response_length"),
            "rollout_tokens_per_s": statistics.median(rates) if rates else None,
            "train_min": summary["train_s"] / 60, "wall_min": summary["wall_s"] / 60}


def table(out: Path) -> str:
    summaries = {v: json.loads((out / v / "summary.json").read_text()) for v in VARIANTS
                 if (out / v / "summary.json").is_file()}
    befores = [s["eval_reward_before"] for s in summaries.values() if "eval_reward_before" in s]
    if not befores:
        raise SystemExit(f"no run in {out} evaluated before training (the first variant `run` trains does)")
    rows = [row(out / v, summary, befores[0]) for v, summary in summaries.items()]
    lines = ["| variant | accuracy before | accuracy after | change (points) | KL (nats) | rounds | answer tokens "
             "| rollout tokens/s | train (min) | wall (min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {100 * r['before']:.0f}% | {100 * r['after']:.0f}% | "
                     f"{100 * (r['after'] - r['before']):+.0f} | {r['kl']:.2f} | {r['rounds']} | {r['length']:.1f} | "
                     f"{r['rollout_tokens_per_s']:.1f} | {r['train_min']:.1f} | {r['wall_min']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("run", "table"))
    parser.add_argument("--out", type=Path, default=ROOT / "runs/rl_outcome")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--minutes", type=float, default=None, help="train.max_minutes of every run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config override")
    args = parser.parse_args()
    if args.mode == "run":
        run(args.out, args.only, args.minutes, args.set)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
