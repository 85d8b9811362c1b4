"""Model FLOPs utilisation of a finished run: its training FLOP/s against this machine's measured matmul peak.

    flock /tmp/whetstone-cpu.lock .venv/bin/python bench/mfu.py runs/peer/runs/ours-sft [RUN ...]

The peak is measured here, in the same command: the best of a few fp32 square matrix
multiplies (torch.mm, n = 1024 to 3072), in GFLOP/s, with torch's threads as whetstone trains
with them. A run's FLOP/s is summary.json's tokens_per_s times the planner's FLOPs per token for
its method and objective (whetstone/plan/estimate.py: 6N when every weight trains, 2N +
2N_backward + 2N_trainable on a frozen base, plus 2N for a DPO reference's forward). Attention's
T^2 FLOPs are left out, as the planner leaves them out, so the figure is a slight underestimate.
That is MFU as usually defined: the FLOPs of the standard computation, the head at every
position. whetstone runs the head only where there are labels, so for SFT the FLOPs really
executed are fewer; they are printed too ("executed"), from summary.json's supervised_tokens.
A run with objective.share_prompt counts a shared prompt once per sequence but reads it once,
so the FLOP/s come from summary.json's tokens_read (the tokens through the model), not tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def matmul_peak(sizes=(1024, 2048, 3072), repeats: int = 5, dtype: torch.dtype = torch.float32) -> tuple[float, int]:
    """(best GFLOP/s of an n x n torch.mm in `dtype`, the n that reached it).

    bf16's second matrix is transposed, as a Linear layer's weight is: on a CPU without bf16 instructions torch's
    fallback runs the plain layout about 10x slower (0.7-1.8 against 7-11 GFLOP/s on an AVX2 EPYC).
    """
    best, best_n = 0.0, sizes[0]
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        b = b.t() if dtype == torch.bfloat16 else b
        torch.mm(a, b)  # warm-up: threads, caches
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            rate = 2 * n**3 / (time.perf_counter() - start) / 1e9
            if rate > best:
                best, best_n = rate, n
    return best, best_n


def run_flops_per_token(run: Path) -> tuple[float, float | None, str]:
    """(FLOPs per token, the head's share of them (SFT only; else None), the method), as the planner counts them."""
    from whetstone.config import load_config

    return config_flops_per_token(load_config(run / "config.yaml", []))


def config_flops_per_token(config) -> tuple[float, float | None, str]:
    """run_flops_per_token for a RunConfig."""
    from whetstone.objectives.preference import LOSSES
    from whetstone.plan import estimate

    params = estimate.count_method_parameters(config.model, config.method)
    reference = config.objective.name == "dpo" and not LOSSES[config.objective.loss].reference_free
    head = estimate.build_meta_model(config.model).get_output_embeddings().weight.numel()
    # The head's share: forward and input gradient (and its weight gradient when it trains), per token.
    head_flops = (6.0 if config.method.name == "full" else 4.0) * head + (2.0 * head if reference else 0.0)
    return (estimate.flops_per_token(params, config.method.name, reference),
            head_flops if config.objective.name == "sft" else None, config.method.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (summary.json and config.yaml)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    peak, n = matmul_peak()
    print(f"matmul peak: {peak:.1f} GFLOP/s (fp32 torch.mm, n = {n}, {torch.get_num_threads()} threads)")
    for run in args.runs:
        summary = json.loads((run / "summary.json").read_text())
        flops, head_flops, method = run_flops_per_token(run)
        read_per_s = summary.get("tokens_read", summary["tokens"]) / summary["train_s"]
        achieved = read_per_s * flops / 1e9
        line = (f"{run}: {method}, {read_per_s:.1f} tokens read/s x {flops / 1e9:.3f} GFLOP/token = "
                f"{achieved:.1f} GFLOP/s; MFU {achieved / peak:.1%}")
        if head_flops is not None:  # SFT: supervised_tokens counts labelled tokens (other objectives count units)
            unlabelled = 1.0 - summary["supervised_tokens"] / summary["tokens"]
            executed = read_per_s * (flops - head_flops * unlabelled) / 1e9
            line += f"; executed (head at the {1 - unlabelled:.0%} labelled tokens only) {executed / peak:.1%}"
        print(line)


if __name__ == "__main__":
    main()
