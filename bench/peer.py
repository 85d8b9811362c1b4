"""whetstone against TRL + PEFT, side by side in one run: SFT-LoRA and DPO-LoRA.

    .venv/bin/python bench/peer.py                 # the embedded model (about 15 minutes on 2 cores)
    .venv/bin/python bench/peer.py --quick         # a tiny random model, a few steps: checks the harness
    .venv/bin/python bench/peer.py --kinds sft --steps 30 --ours-set train.gradient_checkpointing=true

What is compared: the same model, the same batches (the peer reads its file in the order
whetstone draws the records), LoRA rank and alpha on all linear layers, batch size, max_length, learning
rate (constant, no warmup), steps, AdamW without weight decay, clipping at 1.0. Every other
setting is each tool's default: whetstone with no throughput switch (packing and share_prompt
on, train.precision auto: bf16 on a CPU with bf16 instructions), TRL with its own (the model
loaded by TRL in its config's dtype, bf16 autocast, gradient checkpointing). Each side trains
in a fresh process, one after the other (2 cores: never at once), and reports

    real tokens/s   non-padding tokens of the training sequences (DPO: chosen and rejected, each
                    with its prompt) per second of training (model loading excluded). With
                    objective.share_prompt, whetstone reads a shared prompt once and counts it
                    once per sequence, as the peer reads it: both count the same training tokens,
                    so the ratio is that of the training seconds (also printed)
    peak RSS        the training process's maximum resident memory (model loading included)
    MFU             the FLOPs of the tokens each side put through the model (bench/mfu.py's
                    count: whetstone's tokens_read, the peer's tokens) per second, against the
                    matmul peak measured here at the precision that side trained in
    final loss      the mean training loss of the last 5 steps, and for SFT the loss of the
                    final adapter on 200 held-out records, both measured by whetstone's eval

The peer is installed by this script into its own virtual environment (runs/peer/venv,
reused on later runs): torch from this machine's pip (the same 2.13 CPU build), and the
trl / peft / transformers versions in PEER_PACKAGES.

Data (runs/peer/data, built each run from files in the repo, which were built from text on
this machine): every single-turn record of examples/{stdlib_qa,translation,summarization,
knowledge_base,sentiment}, at most --max-length tokens once templated, shuffled with seed 0.
DPO pairs: each record's answer is chosen, and the answer of the next record from the same
file is rejected.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from mfu import config_flops_per_token, matmul_peak  # bench/mfu.py: the same FLOP count and matmul peak

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "peer"
PEER_PACKAGES = ["torch==2.13.0", "trl==1.16.0", "peft==0.21.2", "transformers==5.24.0", "accelerate", "datasets"]
SOURCES = ["stdlib_qa/train.jsonl", "translation/train.jsonl", "summarization/train.jsonl",
           "knowledge_base/train.jsonl", "sentiment/sft_train.jsonl"]
HELD_OUT = 200


# ---------------------------------------------------------------------------
# Data: the same records, in each tool's format.


def single_turn(record: dict) -> tuple[str, str] | None:
    """(question, answer) of a one-question record, from either record shape the examples use."""
    if "prompt" in record and "completion" in record:
        return str(record["prompt"]), str(record["completion"])
    messages = record.get("messages") or []
    if len(messages) == 2 and messages[0]["role"] == "user" and messages[1]["role"] == "assistant":
        return messages[0]["content"], messages[1]["content"]
    return None


def build_data(tokenizer, max_length: int, limit: int | None) -> dict[str, Path]:
    """Write the SFT and DPO files for both tools; return their paths."""
    from whetstone.data.batches import epoch_order

    data = WORK / "data"
    data.mkdir(parents=True, exist_ok=True)
    pairs: list[tuple[str, str, str, str]] = []  # (source, question, answer, rejected answer)
    for source in SOURCES:
        rows = [single_turn(json.loads(line)) for line in (ROOT / "examples" / source).read_text().splitlines()]
        rows = [r for r in rows if r is not None]
        for (question, answer), (_, other) in zip(rows, rows[1:] + rows[:1]):
            if other.strip() != answer.strip():
                pairs.append((source, question, answer, other))

    def length(question: str, answer: str) -> int:
        conversation = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return len(tokenizer.apply_chat_template(conversation, tokenize=True)["input_ids"])

    pairs = [p for p in pairs if max(length(p[1], p[2]), length(p[1], p[3])) <= max_length]
    random.Random(0).shuffle(pairs)
    held_out, train = pairs[:HELD_OUT], pairs[HELD_OUT:]
    train = train[:limit] if limit else train
    user = lambda q: [{"role": "user", "content": q}]  # noqa: E731
    assistant = lambda a: [{"role": "assistant", "content": a}]  # noqa: E731
    files = {
        "ours_sft": [{"messages": user(q) + assistant(a)} for _, q, a, _ in train],
        "peer_sft": [{"prompt": user(q), "completion": assistant(a)} for _, q, a, _ in train],
        "ours_dpo": [{"prompt": q, "chosen": a, "rejected": r} for _, q, a, r in train],
        "peer_dpo": [{"prompt": user(q), "chosen": assistant(a), "rejected": assistant(r)} for _, q, a, r in train],
        "held_out": [{"messages": user(q) + assistant(a)} for _, q, a, _ in held_out],
    }
    # The peer reads its files in order, which is the order whetstone draws its first epoch in.
    order = epoch_order(len(train), seed=0, epoch=0)
    for name in ("peer_sft", "peer_dpo"):
        files[name] = [files[name][i] for i in order]
    paths = {}
    for name, rows in files.items():
        paths[name] = data / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    lengths = sorted(length(q, a) for _, q, a, _ in train)
    print(f"data: {len(train)} training records from {len(SOURCES)} files (tokens per record: median "
          f"{lengths[len(lengths) // 2]}, max {lengths[-1]}), {len(held_out)} held out", flush=True)
    return paths


# ---------------------------------------------------------------------------
# The two sides.


def peer_python(reuse: bool) -> Path:
    """The peer's own environment, created on first use."""
    venv = WORK / "venv"
    python = venv / "bin" / "python"
    if not python.exists() or not reuse:
        print(f"installing the peer into {venv} ({', '.join(PEER_PACKAGES)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def run_peer(python: Path, kind: str, model_dir: str, data: Path, args, out: Path) -> dict:
    command = [str(python), str(ROOT / "bench" / "peer_trl.py"), kind, "--model", model_dir, "--data", str(data),
               "--out", str(out), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length), "--lr", str(args.lr[kind]), "--r", str(args.r),
               "--alpha", str(args.alpha)]
    if args.peer_no_checkpointing:
        command.append("--no-gradient-checkpointing")
    if args.peer_fp32:
        command.append("--fp32")
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "adapter": str(out / "adapter")}


def run_ours(kind: str, model: str, data: Path, args, out: Path) -> dict:
    config = {
        "model": model,
        "method": {"name": "lora", "r": args.r, "alpha": args.alpha, "dropout": 0.0, "targets": "all-linear"},
        "objective": {"name": "sft"} if kind == "sft" else {"name": "dpo", "beta": 0.1, "loss": "sigmoid"},
        "data": {"train": str(data), "max_length": args.max_length},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "grad_accum": 1, "lr": args.lr[kind],
                  "warmup": 0.0, "schedule": "constant", "log_every": 1, "checkpoint_every": 100000, "seed": 0},
        "eval": {"every": 100000, "metrics": []},
    }
    path = out.with_suffix(".yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))  # JSON is YAML
    command = [sys.executable, "-m", "whetstone", "train", str(path), "-o", str(out), "--overwrite", "--quiet"]
    for item in args.ours_set:
        command += ["--set", item]
    subprocess.run(command, check=True, capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row and row.get("split", "train") == "train"]
    return {"tokens": summary["tokens"], "tokens_read": summary["tokens_read"], "seconds": summary["train_s"],
            "tokens_per_s": summary["tokens_per_s"], "peak_rss_mb": summary["peak_memory_mb"], "losses": losses,
            "adapter": str(out / "adapter"), "precision": summary["precision"]["resolved"],
            "model_dtype": summary["model_dtype"]}


def held_out_loss(model: str, adapter: str, data: Path) -> float:
    done = subprocess.run([sys.executable, "-m", "whetstone", "eval", "--model", model, "--adapter", adapter,
                           "--data", str(data), "--metrics", "loss", "--json"],
                          check=True, capture_output=True, text=True)
    return float(json.loads(done.stdout)["eval"]["loss"])


# ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny random model and 6 steps: checks the harness")
    parser.add_argument("--kinds", default="sft,dpo")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 30; quick 6)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--sft-lr", type=float, default=2e-4)
    parser.add_argument("--dpo-lr", type=float, default=5e-5)
    parser.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a --set for whetstone's runs (e.g. data.packing=true); repeatable")
    parser.add_argument("--peer-no-checkpointing", action="store_true",
                        help="turn off TRL's default gradient checkpointing")
    parser.add_argument("--peer-fp32", action="store_true", help="turn off TRL's default bf16 autocast")
    parser.add_argument("--reinstall", action="store_true", help="rebuild the peer's environment")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    args.steps = args.steps or (6 if args.quick else 30)
    args.lr = {"sft": args.sft_lr, "dpo": args.dpo_lr}

    sys.path.insert(0, str(ROOT))
    from whetstone.config import load_config
    from whetstone.models.load import load_tokenizer, resolve_model

    if args.quick:
        from whetstone.models.tiny import build_tiny_model

        model = str(build_tiny_model(WORK / "tiny-model"))
        model_dir = model
    else:
        model = "smollm2-135m-instruct"
        model_dir = resolve_model(model).path  # the dequantized HF directory, which TRL loads as well
    paths = build_data(load_tokenizer(model), args.max_length, None)
    python = peer_python(reuse=not args.reinstall)
    peaks = matmul_peaks()
    print("matmul peak (GFLOP/s, torch.mm): " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()), flush=True)
    results = {}
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        ours = run_ours(kind, model, paths[f"ours_{kind}"], args, WORK / "runs" / f"ours-{kind}")
        peer = run_peer(python, kind, model_dir, paths[f"peer_{kind}"], args, WORK / "runs" / f"peer-{kind}")
        flops, _, _ = config_flops_per_token(load_config(WORK / "runs" / f"ours-{kind}" / "config.yaml", []))
        for side in (ours, peer):
            side["final_loss"] = sum(side["losses"][-5:]) / len(side["losses"][-5:])
            read = side.get("tokens_read", side["tokens"])  # the peer reads every token it counts
            peak = peaks.get(side["precision"])
            side["mfu"] = read / side["seconds"] * flops / 1e9 / peak if peak else None
            if kind == "sft":
                side["held_out_loss"] = held_out_loss(model, side["adapter"], paths["held_out"])
        results[kind] = {"ours": ours, "peer": peer, "wall_s": round(time.perf_counter() - t0, 1)}
        print(table(kind, ours, peer, args), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "results": results,
                                               "matmul_peak_gflops": peaks}, indent=2) + "\n")


def matmul_peaks() -> dict[str, float]:
    """{precision: GFLOP/s} of torch.mm here: fp32, and bf16 where the CPU has bf16 instructions (emulated bf16 runs
    at about 1 GFLOP/s, no peak to measure a run against)."""
    import torch

    from whetstone.train.device import cpu_supports_bf16

    peaks = {"fp32": matmul_peak()[0]}
    if cpu_supports_bf16()[0]:
        peaks["bf16"] = matmul_peak(dtype=torch.bfloat16)[0]
    return peaks


def table(kind: str, ours: dict, peer: dict, args) -> str:
    rows = [("real tokens/s", "tokens_per_s", "{:.1f}", True), ("training seconds", "seconds", "{:.1f}", False),
            ("peak RSS (MB)", "peak_rss_mb", "{:.0f}", False), ("tokens trained on", "tokens", "{:d}", None),
            ("MFU (at its precision's peak)", "mfu", "{:.1%}", None),
            ("final loss (last 5 steps)", "final_loss", "{:.4f}", None)]
    if "held_out_loss" in ours:
        rows.append(("held-out loss", "held_out_loss", "{:.4f}", None))
    lines = [f"\n{kind.upper()}-LoRA: {args.steps} steps, batch {args.batch_size}, max_length {args.max_length}, "
             f"r {args.r}, lr {args.lr[kind]}; whetstone {ours['precision']} on a {ours['model_dtype']} base, "
             f"TRL + PEFT {peer['precision']} on a {peer['model_dtype']} base"
             f"{' with gradient checkpointing' if peer['gradient_checkpointing'] else ''}",
             f"| {'':29} | {'whetstone':>10} | {'TRL + PEFT':>10} | {'ratio':>6} |", f"|{'-' * 31}|{'-' * 12}|{'-' * 12}|{'-' * 8}|"]
    for name, key, fmt, _ in rows:
        a, b = ours[key], peer[key]
        ratio = f"{a / b:.2f}x" if a is not None and b else "-"
        shown = [fmt.format(v) if v is not None else "-" for v in (a, b)]
        lines.append(f"| {name:29} | {shown[0]:>10} | {shown[1]:>10} | {ratio:>6} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
