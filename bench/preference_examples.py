"""The shipped preference examples on the embedded model: before / after figures, wall time, tokens/s.

    # one example per locked command (this machine has 2 shared cores); ppo needs reward first
    flock /tmp/whetstone-cpu.lock .venv/bin/python bench/preference_examples.py --only reward --out runs/bench
    flock /tmp/whetstone-cpu.lock .venv/bin/python bench/preference_examples.py --only ppo --out runs/bench
    ... --only dpo | kto | grpo
    # the table of every finished example in OUT, the PPO / GRPO curves, and an SVG of them (no training)
    .venv/bin/python bench/preference_examples.py --table --out runs/bench [--svg docs/preferences_curves.svg]

Each example trains its shipped config (configs/rlhf_reward.yaml, rlhf_ppo.yaml, dpo.yaml,
kto.yaml, grpo.yaml) unchanged into OUT/<run>; ppo scores with OUT/rlhf_reward. The figures
are read back from the run's summary.json and metrics.jsonl:

    reward   held-out pairwise accuracy and mean margin r_w - r_l     (eval_accuracy, eval_margin)
    dpo      held-out preference accuracy of the implicit reward      (eval_accuracy, eval_margin)
    kto      held-out accuracy: implicit reward on the label's side of z0   (eval_accuracy)
    ppo      mean held-out reward, KL to the reference (nats per completion)  (eval_reward, eval_kl)
    grpo     the same, with the programmatic rewards of examples/preferences/rewards.py

The offline loop evaluates only during training, so the "before" figure of reward / dpo / kto
is measured here: the run's own setup (same seed, so the same freshly initialised reward
head and LoRA weights) evaluated on the held-out set before any step, saved as before.json.
ppo / grpo evaluate before their first round themselves (metrics.jsonl step 0).

tokens/s is summary.json's: real (non-padding) tokens per second of training steps, not
counting model loading, evaluation or saving. reward / dpo: both rows of each pair (chosen
and rejected); kto: the matched and the mismatched (KL baseline) rows; ppo / grpo: prompt
plus sampled completion of every rollout, per second of the whole round (sampling, scoring,
the reference's and the policy's forwards, the updates). Wall is the run's wall_s: start to
saved weights, including loading and every evaluation.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = {  # name: (config, run directory under --out, the metric that is the acceptance figure)
    "reward": ("configs/rlhf_reward.yaml", "rlhf_reward", "eval_accuracy"),
    "ppo": ("configs/rlhf_ppo.yaml", "rlhf_ppo", "eval_reward"),
    "dpo": ("configs/dpo.yaml", "dpo", "eval_accuracy"),
    "kto": ("configs/kto.yaml", "kto", "eval_accuracy"),
    "grpo": ("configs/grpo.yaml", "grpo", "eval_reward"),
}
OFFLINE = ("reward", "dpo", "kto")


def example_config(name: str, out: Path):
    from whetstone.config import config_from_dict, read_yaml

    path, _, _ = EXAMPLES[name]
    raw = read_yaml(ROOT / path)
    for key in ("train", "eval"):
        if isinstance(raw["data"].get(key), str):
            raw["data"][key] = str(ROOT / raw["data"][key])
    for source in raw["objective"].get("reward") or []:
        if "run" in source:  # ppo scores with the reward model this bench trained
            source["run"] = str(out / Path(source["run"]).name)
        if "function" in source and source["function"].startswith("examples/"):
            source["function"] = str(ROOT / source["function"])
    return config_from_dict(raw, path)


def measure_before(config) -> dict:
    """Held-out metrics of an offline run's model before its first step: its setup replayed, then evaluated.

    The same calls in the same order as whetstone/train/loop.py, after the same seed, so the
    reward head and the LoRA weights start exactly as the run's did.
    """
    from whetstone.data.dataset import load_splits
    from whetstone.evaluate.loss import objective_loss
    from whetstone.methods import apply_method
    from whetstone.models import load_model, load_tokenizer
    from whetstone.objectives import OBJECTIVES
    from whetstone.train.device import autocast_context, resolve_device, resolve_precision
    from whetstone.train.loop import seed_everything

    cfg = config.train
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    objective = OBJECTIVES[config.objective.name]
    tokenizer = load_tokenizer(config.model, config.data.chat_template)
    train_records, eval_records, stats = load_splits(config.data, cfg.seed)
    train_set = objective.prepare(train_records, tokenizer, config.data, stats)
    eval_set = objective.prepare(eval_records, tokenizer, config.data, None)
    model, _ = load_model(config.model, device=device)
    model = apply_method(model, config.method)
    context = objective.setup(model, config, train_set)
    autocast = autocast_context(device, resolve_precision(device, cfg.precision))
    results = objective_loss(model, objective, eval_set, cfg.batch_size, tokenizer.pad_token_id, device, context,
                             autocast, config.eval.max_batches)
    return {f"eval_{k}": round(v, 6) for k, v in results.items()}


def run_example(name: str, out: Path, stop_after: int | None = None, resume: bool = False) -> None:
    """Train one example into OUT/<run>. stop_after / resume split a long run over two locked commands."""
    from whetstone.train.dispatch import train

    config = example_config(name, out)
    run = out / EXAMPLES[name][1]
    parts = _read(run / "bench.json").get("parts", []) if resume else []
    on_step = (lambda step, row: step >= stop_after) if stop_after else None
    if resume:  # a resumed run equals an uninterrupted one (tests/preference); wall_s then covers this part only
        t0 = time.perf_counter()
        train(None, run, resume=True, progress=False, on_step=on_step)
        _write_bench(run, parts + [round(time.perf_counter() - t0, 1)])
        return
    if name == "ppo" and not (out / "rlhf_reward" / "adapter").is_dir():
        raise SystemExit(f"ppo scores with {out / 'rlhf_reward'}: run --only reward --out {out} first.")
    before, before_s = {}, 0.0
    if name in OFFLINE:
        t0 = time.perf_counter()
        before = measure_before(config)
        before_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    train(config, run, overwrite=True, progress=False, on_step=on_step)
    if before:
        (run / "before.json").write_text(json.dumps({**before, "seconds": round(before_s, 1)}, indent=2) + "\n")
    _write_bench(run, [round(time.perf_counter() - t0, 1)])


def _write_bench(run: Path, parts: list[float]) -> None:
    """When and where it ran; parts: the seconds of each process that trained it (several if split)."""
    (run / "bench.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                "machine": f"{platform.machine()}, {_cores()} cores",
                                                "parts": parts}) + "\n")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------
# Reading the figures back.


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def figures(name: str, out: Path) -> dict | None:
    """Before / after of one finished example, from its run directory; None if it has not run."""
    run = out / EXAMPLES[name][1]
    summary = _read(run / "summary.json")
    if not summary:
        return None
    rows = _rows(run)
    bench = _read(run / "bench.json")
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    first, last = (evals[0], evals[-1]) if evals else ({}, {})
    if name in OFFLINE:
        before = _read(run / "before.json")
        keys = ["eval_accuracy"] + (["eval_margin"] if name != "kto" else ["eval_kl"])
    else:
        before = first  # step 0: before the first round
        keys = ["eval_reward", "eval_kl", "eval_response_length"]
        keys += sorted(k for k in last if k.startswith("eval_reward/"))
    return {
        "example": name,
        "before": {k: before.get(k) for k in keys},
        "after": {k: last.get(k) for k in keys},
        "steps": summary.get("steps", summary.get("rounds")),
        # A split run's summary.json times only its last process; bench.json has every part.
        "wall_s": sum(bench["parts"]) if len(bench.get("parts", [])) > 1 else summary.get("wall_s"),
        "train_s": summary.get("train_s"),
        "tokens": summary.get("tokens"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "before_measure_s": before.get("seconds"),
        **bench,
    }


def _num(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(results: list[dict]) -> str:
    lines = ["| example | held-out metric | before | after | steps / rounds | wall | train tokens/s | date |",
             "|---|---|---|---|---|---|---|---|"]
    labels = {"reward": "pairwise accuracy (margin r_w - r_l)", "dpo": "preference accuracy, implicit reward (margin)",
              "kto": "accuracy vs z0", "ppo": "mean reward of the RM (KL, nats)",
              "grpo": "mean reward choice + 0.5 format (KL, nats)"}
    for r in results:
        b, a = r["before"], r["after"]
        if r["example"] in OFFLINE:
            second = "eval_margin" if "eval_margin" in a else None
            before = _num(b["eval_accuracy"]) + (f" ({_num(b[second], 2)})" if second else "")
            after = _num(a["eval_accuracy"]) + (f" ({_num(a[second], 2)})" if second else "")
        else:
            before = f"{_num(b['eval_reward'])} ({_num(b['eval_kl'], 2)})"
            after = f"{_num(a['eval_reward'])} ({_num(a['eval_kl'], 2)})"
        lines.append(f"| {r['example']} | {labels[r['example']]} | {before} | {after} | {r['steps']} | "
                     f"{r['wall_s']:.0f} s | {r['tokens_per_s']:.0f} | {r.get('date', '-')} |")
    return "\n".join(lines)


def curve_table(name: str, out: Path) -> str:
    """Per round: train reward, train KL, response length, and the held-out figures where evaluated."""
    lines = [f"| {name} round | reward | kl | kl_coef | response length | held-out reward | held-out kl |",
             "|---|---|---|---|---|---|---|"]
    for r in _rows(out / EXAMPLES[name][1]):
        lines.append(f"| {r['step']} | {_num(r.get('reward'))} | {_num(r.get('kl'), 2)} | {_num(r.get('kl_coef'))} | "
                     f"{_num(r.get('response_length'), 1)} | {_num(r.get('eval_reward'))} | "
                     f"{_num(r.get('eval_kl'), 2)} |")
    return "\n".join(lines)


def curves_svg(out: Path, names=("ppo", "grpo")) -> str:
    """One standalone SVG: per-round reward and KL of each online example (held-out points as dots)."""
    from whetstone.report.charts import HEIGHT, PALETTE, WIDTH, Series, line_chart

    charts = []
    for name in names:
        rows = _rows(out / EXAMPLES[name][1])
        if not rows:
            continue

        def series(key, label, color, markers=False):
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            return Series(label, [p[0] for p in pts], [p[1] for p in pts], color, markers)

        charts.append(line_chart([series("reward", "train reward", PALETTE[0]),
                                  series("eval_reward", "held-out reward", PALETTE[1], True)],
                                 f"{name}: mean reward per round", x_label="round", y_label="reward"))
        charts.append(line_chart([series("kl", "train KL", PALETTE[2]),
                                  series("eval_kl", "held-out KL", PALETTE[3], True)],
                                 f"{name}: KL to the reference (nats per completion)", x_label="round",
                                 y_label="nats"))
    style = ("<style>.title{font:600 13px sans-serif}.tick,.legend,.label{font:11px sans-serif;fill:#3b4252}"
             ".grid{stroke:#e6e8ec}.axis{stroke:#8a93a3}</style>")
    placed = [c.replace("<svg ", f'<svg x="{WIDTH * (i % 2)}" y="{HEIGHT * (i // 2)}" ', 1)
              for i, c in enumerate(charts)]
    rows_n = (len(charts) + 1) // 2
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * WIDTH}" height="{HEIGHT * rows_n}" '
            f'viewBox="0 0 {2 * WIDTH} {HEIGHT * rows_n}"><rect width="100%" height="100%" fill="white"/>'
            + style + "".join(placed) + "</svg>\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(EXAMPLES), default=None,
                        help="run these examples (default: all, in order; ppo needs reward)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop (with a checkpoint) after this many steps / rounds, to finish later with --resume")
    parser.add_argument("--resume", action="store_true", help="continue the --only run in --out from its checkpoint")
    parser.add_argument("--table", action="store_true", help="only print the figures of the runs already in --out")
    parser.add_argument("--svg", type=Path, default=None, help="with --table: write the PPO / GRPO curves here")
    args = parser.parse_args()
    out = args.out.resolve()
    if not args.table:
        for name in args.only or list(EXAMPLES):
            run_example(name, out, args.stop_after, args.resume)
            if _read(out / EXAMPLES[name][1] / "summary.json").get("stopped_early"):
                print(f"{name}: stopped after {args.stop_after}; finish with --only {name} --resume", flush=True)
            else:
                print(json.dumps(figures(name, out), indent=2), flush=True)
        return
    results = [f for f in (figures(n, out) for n in EXAMPLES) if f is not None]
    print(markdown_table(results))
    for name in ("ppo", "grpo"):
        if (out / EXAMPLES[name][1] / "metrics.jsonl").is_file():
            print()
            print(curve_table(name, out))
    if args.svg:
        args.svg.write_text(curves_svg(out))
        print(f"\nwrote {args.svg}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
