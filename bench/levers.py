"""What each throughput lever buys on this machine, measured side by side (docs/performance.md).

    # one lever per locked command (this machine has 2 shared cores); each runs 'off' then 'on'
    flock /tmp/whetstone-cpu.lock .venv/bin/python bench/levers.py packing [--steps 12]
    ... levers.py logit_chunk | group_by_length | gradient_checkpointing | bf16 | precompute_reference
    ... levers.py dpo_logit_chunk                  # the chunked head in DPO's policy and reference passes
    ... levers.py share_prompt                     # packed DPO, each pair's prompt read once
    ... levers.py sft_share_prompt                 # packed SFT, each row's shared prefix read once
    # padding share of one epoch for each batching (tokenizer only, no training)
    flock /tmp/whetstone-cpu.lock .venv/bin/python bench/levers.py padding
    # peak RSS of one SFT forward + backward at batch 8 x 256, every token supervised, head chunked or not
    flock /tmp/whetstone-cpu.lock .venv/bin/python bench/levers.py head_memory
    # DPO policy forward + backward: chosen and rejected in one concatenated batch, or in two
    flock /tmp/whetstone-cpu.lock .venv/bin/python bench/levers.py dpo_forward

A lever runs `whetstone train` twice in fresh processes, the same config with the lever off and on:
the embedded model, LoRA r 16, batch 8, max_length 256, fp32, unpacked unless the lever packs (the
defaults that pack and share prompts are pinned off, so each lever is measured alone), examples/stdlib_qa (SFT) or
examples/preferences pairs (DPO, max_length 160), --steps steps, no evaluation. Figures come from
each run's summary.json: tokens_per_s (real, non-padding tokens per second of training steps; DPO
counts both rows of a pair), peak_memory_mb (the process's peak RSS), train_loss (the last step's)
and wall_s (start to saved weights, loading included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QA = ROOT / "examples/stdlib_qa/train.jsonl"
# Each lever is measured alone, against the plain layout: the defaults that turn levers on are pinned off here.
PLAIN = ["--set", "data.packing=false", "--set", "objective.share_prompt=false", "--set", "train.precision=fp32"]
SFT = PLAIN + ["--set", f"data.train={QA}", "--set", "data.eval=null"]
DPO = PLAIN + ["--set", f"data.train={ROOT / 'examples/preferences/pairs_train.jsonl'}", "--set", "data.eval=null"]

# lever -> (config, extra overrides for both runs, the overrides that turn it on)
LEVERS = {
    "packing": ("configs/sft_lora.yaml", SFT, ["data.packing=true"]),
    "logit_chunk": ("configs/sft_lora.yaml", SFT + ["--set", "train.logit_chunk=null"], ["train.logit_chunk=1024"]),
    # Grouping reorders within a step, so it needs several micro-batches per step: 2 x 4 = 8 examples per step.
    "group_by_length": ("configs/sft_lora.yaml", SFT + ["--set", "train.batch_size=2", "--set", "train.grad_accum=4"],
                        ["data.group_by_length=true"]),
    "gradient_checkpointing": ("configs/sft_lora.yaml", SFT, ["train.gradient_checkpointing=true"]),
    "bf16": ("configs/sft_lora.yaml", SFT, ["train.precision=bf16"]),
    "precompute_reference": ("configs/dpo.yaml", DPO, ["objective.precompute_reference=true"]),
    "dpo_logit_chunk": ("configs/dpo.yaml", DPO + ["--set", "train.logit_chunk=null"], ["train.logit_chunk=1024"]),
    # Both runs packed: the lever reads each pair's prompt once instead of twice (DPO), or the prefix a row's
    # examples share (the chat template's system prompt) once instead of once per example (SFT).
    "share_prompt": ("configs/dpo.yaml", DPO + ["--set", "data.packing=true"], ["objective.share_prompt=true"]),
    "sft_share_prompt": ("configs/sft_lora.yaml", SFT + ["--set", "data.packing=true"], ["objective.share_prompt=true"]),
}


def run(config: str, extra: list[str], on: list[str], steps: int, out: Path) -> dict:
    sets = [x for item in on for x in ("--set", item)]
    cmd = [sys.executable, "-m", "whetstone", "train", str(ROOT / config), "-o", str(out), "--quiet",
           "--set", f"train.max_steps={steps}", "--set", "train.log_every=1", *extra, *sets]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode:
        sys.exit(f"{' '.join(on) or 'baseline'}: whetstone train failed:\n{done.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def compare(lever: str, steps: int) -> None:
    config, extra, on = LEVERS[lever]
    with tempfile.TemporaryDirectory() as tmp:
        off_run = run(config, extra, [], steps, Path(tmp) / "off")
        on_run = run(config, extra, on, steps, Path(tmp) / "on")
    print(f"{lever}: {config} {' '.join(extra[1::2])}, {steps} steps; on = {' '.join(on)}")
    print(f"  {'':4} {'tokens/s':>9} {'peak RSS MB':>12} {'train_s':>8} {'wall_s':>7} {'last loss':>10}")
    for name, s in (("off", off_run), ("on", on_run)):
        print(f"  {name:4} {s['tokens_per_s']:9.1f} {s['peak_memory_mb']:12.0f} {s['train_s']:8.1f} {s['wall_s']:7.1f} "
              f"{s['train_loss']:10.6f}")
    print(f"  on/off: tokens/s x{on_run['tokens_per_s'] / off_run['tokens_per_s']:.2f}, "
          f"peak RSS x{on_run['peak_memory_mb'] / off_run['peak_memory_mb']:.2f}, "
          f"loss delta {on_run['train_loss'] - off_run['train_loss']:+.2e}")


def padding() -> None:
    """Padding share of one epoch of stdlib_qa with the embedded tokenizer, for each batching."""
    from whetstone.config import load_config
    from whetstone.data.batches import StepPlan, collate, example_lengths
    from whetstone.data.dataset import load_splits, tokenize
    from whetstone.data.packing import collate_packed, padding_fraction
    from whetstone.models import load_tokenizer

    config = load_config(ROOT / "configs/sft_lora.yaml", [f"data.train={QA}", "data.eval=null"])
    tokenizer = load_tokenizer(config.model, config.data.chat_template)
    records, _, _ = load_splits(config.data, 0)
    examples = tokenize(records, tokenizer, config.data).examples
    lengths = example_lengths(examples)
    pad, max_length = tokenizer.pad_token_id, config.data.max_length
    print(f"{len(examples)} examples, {sum(lengths)} tokens, length {min(lengths)}..{max(lengths)}")
    for batch, accum in ((8, 1), (2, 4)):
        for grouped in (False, True):
            plan = StepPlan.build(len(examples), batch, accum, 1, 1, None, lengths=lengths if grouped else None)
            micro = [m for s in range(plan.steps_per_epoch) for m in plan.micro_batches(s, seed=0)]
            for packed in (False, True):
                batches = [collate_packed([examples[i] for i in m], pad, max_length) if packed
                           else collate([examples[i] for i in m], pad) for m in micro]
                positions = sum(b["input_ids"].numel() for b in batches)
                print(f"  {batch} x {accum}, group_by_length={grouped!s:5}, packing={packed!s:5}: "
                      f"padding {padding_fraction(batches):6.1%}, {positions} positions for {sum(lengths)} tokens")


def head_memory() -> None:
    """Peak RSS of one forward + backward of SFT at batch 8 x 256 (all supervised), chunk 1024 vs all at once."""
    for chunk in ("1024", "None"):
        code = (
            "import resource, torch; from whetstone.config import ModelConfig; from whetstone.models import load_model;"
            "from whetstone.methods import apply_method; from whetstone.config import MethodConfig;"
            "from whetstone.objectives.sft import SFTContext, sft_loss;"
            "model, _ = load_model(ModelConfig()); model = apply_method(model, MethodConfig());"
            "torch.manual_seed(0); ids = torch.randint(0, 49152, (8, 256));"
            "batch = {'input_ids': ids, 'attention_mask': torch.ones_like(ids), 'labels': ids.clone()};"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            f"out = sft_loss(model, batch, SFTContext({chunk})); (out.loss_sum / out.units).backward();"
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "print(out.units, float(out.loss_sum / out.units), base / 1024, peak / 1024)"
        )
        line = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        units, loss, base, peak = line.split()[-4:]
        print(f"logit_chunk={chunk:5}: N={units} supervised tokens, loss {float(loss):.6f}, peak RSS {float(peak):.0f} MB "
              f"({float(peak) - float(base):.0f} MB above the loaded model)")


DPO_FORWARD = """
import resource, time, torch
from whetstone.config import load_config
from whetstone.data.dataset import load_splits
from whetstone.methods import apply_method
from whetstone.models import load_model, load_tokenizer
from whetstone.objectives.logprobs import pad_rows, sequence_logprobs
from whetstone.objectives.preference import collate_pairs, prepare_pairs
config = load_config(ROOT + "/configs/dpo.yaml", ["data.train=" + ROOT + "/examples/preferences/pairs_train.jsonl",
                                                   "data.eval=null"])
tokenizer = load_tokenizer(config.model, None)
pairs = prepare_pairs(load_splits(config.data, 0)[0][:48], tokenizer, config.data).examples
model, _ = load_model(config.model); model = apply_method(model, config.method); model.train()
pad, tokens, seconds = tokenizer.pad_token_id, 0, 0.0
for start in range(0, len(pairs), 8):
    group = pairs[start:start + 8]
    if CONCAT:  # one (2B, T) batch: chosen rows, then rejected rows
        batches = [collate_pairs(group, pad)]
    else:  # two (B, T) batches, each padded to its own longest row
        batches = [pad_rows([(e.chosen.input_ids, e.chosen.labels) for e in group], pad),
                   pad_rows([(e.rejected.input_ids, e.rejected.labels) for e in group], pad)]
    t = time.perf_counter()
    total = sum(sequence_logprobs(model, b)[0].sum() for b in batches)
    total.backward()
    seconds += time.perf_counter() - t if start else 0.0  # the first group warms up
    tokens += sum(int(b["attention_mask"].sum()) for b in batches) if start else 0
    model.zero_grad(set_to_none=True)
print(tokens / seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def dpo_forward() -> None:
    """DPO policy forward + backward over 48 pairs (batch 8): one concatenated (2B, T) batch vs two (B, T)."""
    rates = {}
    for concat in (False, True):
        code = f"ROOT = {str(ROOT)!r}; CONCAT = {concat}\n" + DPO_FORWARD
        line = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        rate, peak = (float(x) for x in line.split()[-2:])
        rates[concat] = rate
        print(f"  {'concatenated' if concat else 'separate':12}: {rate:6.1f} real tokens/s (forward + backward), "
              f"peak RSS {peak:.0f} MB")
    print(f"  concatenated / separate: x{rates[True] / rates[False]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lever", choices=[*LEVERS, "padding", "head_memory", "dpo_forward"])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    if args.lever == "padding":
        padding()
    elif args.lever == "head_memory":
        head_memory()
    elif args.lever == "dpo_forward":
        dpo_forward()
    else:
        compare(args.lever, args.steps)


if __name__ == "__main__":
    main()
