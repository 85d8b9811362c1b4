"""The one prepared check for a lent GPU: CUDA tests, bf16 training speed and memory against the planner, the peer.

    bench/gpu_check.sh [OUT.json] [--steps 30] [--peak-tflops 989] [--set KEY=VALUE ...]

It writes ONE JSON file (default $OUT/gpu_check.json when $OUT is set, else runs/gpu_check.json), rewritten after
every stage, so a run cut short still leaves what it measured. Without a CUDA GPU it writes
{"skipped": "no CUDA GPU", ...} and exits 0. In order, each stage in a fresh process with a timeout taken from
--budget-s (default 460 s: the whole check fits 8 minutes):

1. tests: `pytest -m cuda` (the tests that need a GPU; they skip without one).
2. runs: `whetstone train configs/sft_lora.yaml` for --steps steps, train.precision bf16 and model.dtype auto, with
   model.attn_implementation sdpa, and flash_attention_2 too where flash_attn is installed:
     smollm2-135m-instruct (embedded)  lora, qlora (bitsandbytes; skipped, with the reason, without it), full
     llama-1b (random init)            lora; TinyLlama's shape (22 layers, hidden 2048, MLP 5632, 32 query and
                                       4 key/value heads), with the embedded model's tokenizer and so its vocabulary
   Each run reports tokens/s (summary.json), MFU = tokens/s x the planner's FLOPs per token / the card's dense
   bf16 peak, and its peak torch.cuda.max_memory_allocated (summary.json's peak_memory_mb on CUDA) against the
   peak `whetstone plan --device cuda` predicts from config.json alone for the same config.
3. peer: bench/peer.py's SFT case against TRL on the same card (--kinds sft --steps N --json), folded in as is.

tokens/s counts the whole run's training time, its first (warm-up) steps included, so it is a little below the
steady rate. MFU counts the FLOPs of the standard computation (head at every position; attention's T^2 left out),
as bench/mfu.py does.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sft_lora.yaml"
EMBEDDED = "smollm2-135m-instruct"

# Dense bf16 tensor-core peaks in TFLOP/s (datasheets print twice these "with sparsity"), by the name nvidia-smi
# prints. The first pattern that matches wins: the PCIe and NVL variants come before the SXM default.
PEAK_TFLOPS = (
    (r"H100.*PCIe", 756.0),  # 1,513 sparse
    (r"H[12]00.*NVL", 835.0),  # 1,671 sparse
    (r"H100", 989.0),  # SXM5, "NVIDIA H100 80GB HBM3": 1,979 sparse
    (r"H200", 989.0),  # SXM, the H100's compute with 141 GB
    (r"A100", 312.0),  # 624 sparse, SXM and PCIe alike
    (r"\bL4\b", 121.0),  # 242 sparse; \b keeps the L40 and L40S out
    (r"RTX 4090", 165.2),  # Ada whitepaper, bf16 with fp32 accumulate
)

# TinyLlama-1.1B's shape. The vocabulary is the tokenizer's (the embedded model's 49,152, not TinyLlama's 32,000),
# so every token id the data holds has an embedding: 1.17B parameters instead of 1.10B.
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632, "num_attention_heads": 32,
            "num_key_value_heads": 4, "max_position_embeddings": 2048, "tie_word_embeddings": False}

# Seconds each stage may take at most, within what --budget-s has left; the peer gets the rest.
STAGE_CAP_S = {"tests": 120, "plan": 60, "train": 120}
RESERVE_S = 5  # kept back to write the JSON


@dataclass
class Run:
    """One `whetstone train` of the check: which model, method and attention, or why it is skipped."""

    model: str  # "smollm2-135m-instruct" or "llama-1b"
    method: str
    attn: str
    skipped: str | None = None
    sets: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.model}-{self.method}-{self.attn}"


def peak_tflops_for(gpu_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its nvidia-smi name, or None for a card the table does not know."""
    for pattern, tflops in PEAK_TFLOPS:
        if re.search(pattern, gpu_name, re.IGNORECASE):
            return tflops
    return None


def build_runs(steps: int, flash: bool, bnb: bool, extra_sets: list[str]) -> list[Run]:
    """Every run of the check, in the order it runs; qlora without bitsandbytes is listed, skipped."""
    runs = []
    for attn in ["sdpa"] + (["flash_attention_2"] if flash else []):
        for model, method in ((EMBEDDED, "lora"), (EMBEDDED, "qlora"), (EMBEDDED, "full"), ("llama-1b", "lora")):
            skipped = "bitsandbytes is not importable" if method == "qlora" and not bnb else None
            runs.append(Run(model, method, attn, skipped, run_sets(method, attn, steps, extra_sets)))
    return runs


def run_sets(method: str, attn: str, steps: int, extra_sets: list[str]) -> list[str]:
    """The --set overrides of one run (model.name is added where the model's directory is known)."""
    return [f"method.name={method}", f"model.attn_implementation={attn}", "train.precision=bf16", "model.dtype=auto",
            f"train.max_steps={steps}", "train.warmup=0.0", f"train.log_every={max(1, steps // 6)}",
            f"train.checkpoint_every={steps}", "data.eval=null", *extra_sets]


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: the FLOP/s the run's tokens stand for, over the card's peak."""
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)


def run_record(run: Run, summary: dict, layout: dict, plan_row: dict | None, peak_tflops: float) -> dict:
    """What the JSON says of one finished run: speed, MFU, and measured against predicted peak memory.

    `layout` is the run's resolved data.packing and objective.share_prompt (its config.yaml). MFU counts the
    tokens that went through the model (summary.json's tokens_read): with share_prompt a shared prefix counts
    once in them, and in `tokens` once per example, which would overstate the FLOPs.
    """
    read_per_s = summary.get("tokens_read", summary["tokens"]) / max(summary["train_s"], 1e-9)
    record = {"name": run.name, "model": run.model, "method": run.method, "attn": run.attn, "status": "ok",
              **layout, "steps": summary["steps"], "tokens": summary["tokens"], "train_s": summary["train_s"],
              "tokens_per_s": summary["tokens_per_s"], "tokens_read_per_s": round(read_per_s, 2),
              "train_loss": summary["train_loss"], "measured_peak_mb": summary["peak_memory_mb"]}
    if plan_row is None:
        return record
    predicted, overhead = plan_row["peak_mb"], plan_row["memory_mb"]["baseline"]
    record |= {
        "flops_per_token": plan_row["flops_per_token"],
        "tflops": round(read_per_s * plan_row["flops_per_token"] / 1e12, 2),
        "mfu": round(mfu(read_per_s, plan_row["flops_per_token"], peak_tflops), 4),
        "predicted_peak_mb": predicted,
        # max_memory_allocated never sees the CUDA context, which the plan's fixed overhead mostly is.
        "predicted_peak_less_overhead_mb": round(predicted - overhead, 1),
        "measured_over_predicted": round(summary["peak_memory_mb"] / predicted, 3),
        "measured_over_predicted_less_overhead": round(summary["peak_memory_mb"] / (predicted - overhead), 3),
    }
    return record


class Budget:
    """Seconds left of --budget-s; each stage's timeout is its cap or what is left, whichever is smaller."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def timeout(self, stage: str | None) -> float:
        cap = STAGE_CAP_S.get(stage, float("inf")) if stage else float("inf")
        return max(0.0, min(cap, self.left()))


def run_command(command: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run `command` from the repository root: its exit status, seconds, and the tail of its output."""
    if timeout <= 1:
        return {"rc": None, "error": "no time left in --budget-s", "wall_s": 0.0}
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-2000:]
        return {"rc": None, "error": f"timed out after {timeout:.0f} s",
                "wall_s": round(time.monotonic() - start, 1),
                "output_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail}
    return {"rc": done.returncode, "wall_s": round(time.monotonic() - start, 1), "stdout": done.stdout,
            "output_tail": (done.stdout + done.stderr)[-2000:]}


def whetstone(*args: str) -> list[str]:
    return [sys.executable, "-m", "whetstone", *args]


def optional_packages() -> dict[str, bool]:
    """Which of the packages some runs need are installed: flash_attn (flash_attention_2), bitsandbytes (qlora)."""
    return {name: importlib.util.find_spec(name) is not None for name in ("flash_attn", "bitsandbytes")}


def gpu_name() -> str:
    """The first GPU's name as nvidia-smi prints it (torch's name where nvidia-smi is missing)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    import torch

    return torch.cuda.get_device_name(0)


def build_llama_1b(path: Path) -> dict:
    """Write a random-init Llama of TinyLlama's shape in bf16, with the embedded model's tokenizer; its figures."""
    import torch
    from transformers import AutoModelForCausalLM

    from whetstone.models import load_tokenizer

    tokenizer = load_tokenizer(EMBEDDED)
    config = llama_1b_config(tokenizer)
    torch.manual_seed(0)
    with torch.device("cuda"):  # initialising 1.2B weights on the GPU takes a second; on the CPU, a minute
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return {"path": str(path), "params": params, "vocab": config.vocab_size, **LLAMA_1B}


def llama_1b_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **LLAMA_1B)


def plan_model(model: str) -> str:
    """What `whetstone plan --device cuda --memory` can read: its analytic plan needs a config.json, so the embedded
    model is given as its converted HF directory (the same weights `whetstone train` loads)."""
    from whetstone.models.load import resolve_model

    return resolve_model(model).path if model == EMBEDDED else model


def plan_rows(sets: list[str], methods: list[str], memory_mb: float, peak_tflops: float, timeout: float) -> dict:
    """`whetstone plan --device cuda` from config.json alone for this card: {method: its row}, or {"error": ...}."""
    done = run_command(whetstone("plan", str(CONFIG), *[a for s in sets for a in ("--set", s)],
                                 "--methods", ",".join(methods), "--device", "cuda", "--memory", f"{memory_mb:.0f}MB",
                                 "--peak-tflops", str(peak_tflops), "--json"), timeout)
    if done["rc"] != 0:
        return {"error": done.get("error") or done["output_tail"]}
    plan = json.loads(done["stdout"][done["stdout"].index("{"):])
    return {row["method"]: row for row in plan["methods"]}


def run_tests(budget: Budget) -> dict:
    done = run_command([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "tests"], budget.timeout("tests"))
    done.pop("stdout", None)
    summary = done.get("output_tail", "").strip().splitlines()
    # pytest's last line: "3 passed, 2 skipped in 4.1s"; exit 5 means nothing was selected.
    return {**done, "summary": summary[-1] if summary else "", "passed": done["rc"] in (0, 5)}


def train_run(run: Run, model_path: str, work: Path, plan_row: dict | None, peak_tflops: float,
              budget: Budget) -> dict:
    out = work / "runs" / run.name
    done = run_command(whetstone("train", str(CONFIG), "-o", str(out), "--quiet", "--overwrite",
                                 "--set", f"model.name={model_path}", *[a for s in run.sets for a in ("--set", s)]),
                       budget.timeout("train"))
    if done["rc"] != 0:
        return {"name": run.name, "model": run.model, "method": run.method, "attn": run.attn, "status": "failed",
                "rc": done["rc"], "error": done.get("error"), "output_tail": done.get("output_tail")}
    summary = json.loads((out / "summary.json").read_text())
    return {**run_record(run, summary, run_layout(out), plan_row, peak_tflops), "wall_s": done["wall_s"]}


def run_layout(run_dir: Path) -> dict:
    """data.packing and objective.share_prompt as the run resolved them (its config.yaml)."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return {"packing": config["data"].get("packing"), "share_prompt": config["objective"].get("share_prompt")}


def run_peer(steps: int, work: Path, budget: Budget) -> dict:
    path = work / "peer.json"
    done = run_command([sys.executable, str(ROOT / "bench" / "peer.py"), "--kinds", "sft", "--steps", str(steps),
                        "--json", str(path)], budget.timeout(None))
    done.pop("stdout", None)
    if done["rc"] == 0 and path.is_file():
        return {"status": "ok", "wall_s": done["wall_s"], **json.loads(path.read_text())}
    return {"status": "failed", **done}


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)  # a reader (or a kill) never sees half a file


def default_output() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else ROOT / "runs" / "gpu_check.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=None,
                        help="the JSON file to write (default $OUT/gpu_check.json when $OUT is set, else "
                             "runs/gpu_check.json)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per training run (default 30)")
    parser.add_argument("--peer-steps", type=int, default=30, help="steps of bench/peer.py's SFT case (default 30)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense bf16 peak in TFLOP/s; default: looked up by the nvidia-smi name "
                             "(H100, H200, A100, L4, RTX 4090), required for another card")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one more --set for every training run (e.g. train.batch_size=16); repeatable")
    parser.add_argument("--budget-s", type=float, default=460.0,
                        help="seconds the whole check may take; each stage's timeout comes out of it (default 460)")
    parser.add_argument("--skip", action="append", default=[], choices=("tests", "runs", "peer"),
                        help="leave a stage out; repeatable")
    parser.add_argument("--work", type=Path, default=None,
                        help="where run directories and the 1B model go (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.peer_steps < 1:
        parser.error(f"--steps and --peer-steps: got {args.steps} and {args.peer_steps}; give 1 or more.")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        parser.error(f"--peak-tflops: got {args.peak_tflops}; give the card's dense bf16 peak, e.g. 989.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    output = args.output or default_output()
    started = time.monotonic()
    import torch

    if not torch.cuda.is_available():
        write({"skipped": "no CUDA GPU", "torch": torch.__version__, "torch_cuda": torch.version.cuda}, output)
        print(f"no CUDA GPU: nothing to check; wrote {output}")
        return 0
    name = gpu_name()
    peak = args.peak_tflops or peak_tflops_for(name)
    memory_mb = torch.cuda.get_device_properties(0).total_memory / 2**20
    result = {"gpu": {"name": name, "memory_mb": round(memory_mb), "peak_tflops_bf16": peak},
              "torch": torch.__version__, "torch_cuda": torch.version.cuda, "steps": args.steps, "sets": args.set}
    if peak is None:
        result["error"] = (f"--peak-tflops: no dense bf16 peak is known for {name!r}; give it, e.g. "
                           f"--peak-tflops 989 for an H100 SXM.")
        write(result, output)
        print(result["error"], file=sys.stderr)
        return 2
    result["available"] = available = optional_packages()
    flash, bnb = available["flash_attn"], available["bitsandbytes"]
    write(result, output)

    if "tests" not in args.skip:
        result["tests"] = run_tests(budget)
        write(result, output)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = args.work or Path(tmp)
        if "runs" not in args.skip:
            result["runs"] = []
            paths: dict[str, str | None] = {EMBEDDED: EMBEDDED}
            plans: dict[tuple[str, str], dict] = {}
            runs = build_runs(args.steps, flash, bnb, args.set)
            for run in runs:
                if run.skipped:
                    result["runs"].append({"name": run.name, "status": "skipped", "reason": run.skipped})
                    continue
                if run.model not in paths:
                    try:
                        result["llama_1b"] = build_llama_1b(work / run.model)
                        paths[run.model] = result["llama_1b"]["path"]
                    except Exception as exc:  # noqa: BLE001 (recorded: the other runs still go on)
                        result["llama_1b"] = {"error": f"{type(exc).__name__}: {exc}"}
                        paths[run.model] = None
                if paths[run.model] is None:
                    result["runs"].append({"name": run.name, "status": "failed", "reason": "the model was not built"})
                    continue
                key = (run.model, run.attn)
                if key not in plans:  # one plan per model and attention, for all its methods
                    methods = [r.method for r in runs if (r.model, r.attn) == key and not r.skipped]
                    plans[key] = plan_rows([f"model.name={plan_model(paths[run.model])}", *run.sets], methods,
                                           memory_mb, peak, budget.timeout("plan"))
                    if "error" in plans[key]:
                        result.setdefault("plan_errors", {})[run.model + "-" + run.attn] = plans[key]["error"]
                result["runs"].append(train_run(run, paths[run.model], work, plans[key].get(run.method), peak,
                                                budget))
                write(result, output)
        if "peer" not in args.skip:
            result["peer"] = run_peer(args.peer_steps, work, budget)
    result["wall_s"] = round(time.monotonic() - started, 1)
    write(result, output)
    print(json.dumps({"runs": [{k: r.get(k) for k in ("name", "status", "tokens_per_s", "mfu",
                                                      "measured_over_predicted")} for r in result.get("runs", [])],
                      "tests": result.get("tests", {}).get("summary"), "wall_s": result["wall_s"]}, indent=1))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
