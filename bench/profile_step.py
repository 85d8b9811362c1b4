"""Where one training step's time goes: attention, MLP, LM head and loss, optimizer, collation, the rest.

    # one (kind, precision) per locked command (this machine's 2 cores are shared)
    flock /tmp/torch.lock .venv/bin/python bench/profile_step.py sft --precision fp32
    flock /tmp/torch.lock .venv/bin/python bench/profile_step.py dpo --precision bf16
    # AdamW's implementations side by side, the same run otherwise: one training run each, in one command
    flock /tmp/torch.lock .venv/bin/python bench/profile_step.py sft --optimizer loop,fused
    # AdamW + clipping alone on the embedded model's LoRA parameters: each implementation in turn, interleaved
    flock /tmp/torch.lock .venv/bin/python bench/profile_step.py optimizer

The step is whetstone's own: `whetstone.train.dispatch.train` runs the embedded model (smollm2-135m-instruct)
with the settings that are about to become the default: LoRA r 16, alpha 32, all linear layers; batch 8,
max_length 256, `data.packing: true`, `objective.share_prompt: true`; fp32, or `train.precision: bf16`
with `model.dtype: auto` (a bf16 frozen base under bf16 autocast). SFT trains on
examples/stdlib_qa/train.jsonl, DPO on examples/preferences/pairs_train.jsonl (sigmoid loss, the
reference is the model with its adapters off). The loop runs 2 warm-up steps, then --steps steps
timed without the profiler (the step time reported), then --steps steps under torch.profiler (the
breakdown), then one step whose op shapes are recorded to count its FLOPs (recording shapes slows
every op, so the timed profile records none), and stops. Nothing in whetstone is changed: the
script only wraps the loop's own `objective_for`, `build_optimizer` and `clip_and_measure`, and
the model's modules, in named ranges.

How time is attributed. Forward pre/post hooks push a named range around each decoder layer's
self_attn and mlp, around every q/k/v/o and gate/up/down projection, and inside those around the
frozen base layer and LoRA's A and B. The chunked LM head + cross-entropy (models/forward.py), the
objective's loss call, collation, the optimizer step, zero_grad and clipping get ranges too.
Every profiled op's SELF time (its time minus its children's) goes to the innermost range around
it, so nothing counts twice. Backward ops run outside any range; each is attributed through the
profiler's sequence numbers to the forward op whose autograd node it executes, and so to that
op's range ("forward and backward both count to their module"). A range's own Python (the module's
forward code between ops) counts to it. Two things remain: "AccumulateGrad" (writing LoRA's .grad,
no forward op) and the step's time outside every profiled op: the loop's Python, the autograd
engine's scheduling between nodes, hooks. The profiler itself costs time; its overhead is printed
(profiled against unprofiled step time), and the shares are of the profiled step.

Limits: a backward node whose forward op carries no sequence number (a few views, the chunked
head's custom Function) lands in "backward, not matched". Ops that one module computes for all
layers (rotary tables, the attention mask) are "other". Attention's core FLOPs (sdpa) are not in
the profiler's count: the FLOP/s figures are matrix multiplies only (aten::mm, addmm, bmm,
baddbmm, forward and backward, LoRA's and the head's included), against the best rate of an n x n
torch.mm measured in the same command (bench/mfu.py's method; bf16 the same way). On a CPU
without avx512_bf16 / amx_bf16 the bf16 matmul is emulated and its "peak" is measured, not assumed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.mfu import matmul_peak  # noqa: E402
from whetstone.train.device import cpu_supports_bf16  # noqa: E402

DEFAULT = ["method.name=lora", "method.r=16", "method.alpha=32", "method.targets=all-linear", "method.dropout=0.0",
           "data.max_length=256", "data.packing=true", "objective.share_prompt=true", "data.eval=null",
           "train.batch_size=8", "train.grad_accum=1", "train.max_steps=100", "train.log_every=1",
           "train.checkpoint_every=1000", "model.dtype=auto"]
KINDS = {
    "sft": ("configs/sft_lora.yaml", [f"data.train={ROOT / 'examples/stdlib_qa/train.jsonl'}"]),
    "dpo": ("configs/dpo.yaml", [f"data.train={ROOT / 'examples/preferences/pairs_train.jsonl'}",
                                 "objective.precompute_reference=false"]),
}
OPTIMIZERS = {  # AdamW's implementation, set on its param groups: torch reads them at every step
    "built": None,  # as whetstone.train.loop.build_optimizer makes it
    "loop": {"foreach": False, "fused": False},  # one tensor at a time, in Python: torch's CPU default
    "foreach": {"foreach": True, "fused": False},
    "fused": {"foreach": False, "fused": True},
}
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
BACKWARD = "autograd::engine::evaluate_function: "

# Rows of the table: (label, the categories it sums). A category is the innermost range's name.
ROWS = [
    ("attention: q/k/v/o projections", ["attn.frozen", "attn.lora", "attn.lora_glue"]),
    ("   frozen base matmul", ["attn.frozen"]),
    ("   LoRA A and B", ["attn.lora"]),
    ("   LoRA scale and add", ["attn.lora_glue"]),
    ("attention: sdpa, rotary, reshapes", ["attn.core"]),
    ("MLP: gate/up/down projections", ["mlp.frozen", "mlp.lora", "mlp.lora_glue"]),
    ("   frozen base matmul", ["mlp.frozen"]),
    ("   LoRA A and B", ["mlp.lora"]),
    ("   LoRA scale and add", ["mlp.lora_glue"]),
    ("MLP: SiLU(gate) x up", ["mlp.core"]),
    ("LM head and loss (chunked)", ["head"]),
    ("objective: masks, gathers, loss", ["objective"]),
    ("optimizer: step, zero_grad, clipping", ["optimizer.step", "optimizer.zero_grad", "optimizer.clip"]),
    ("   AdamW step", ["optimizer.step"]),
    ("   zero_grad", ["optimizer.zero_grad"]),
    ("   clip_grad_norm_", ["optimizer.clip"]),
    ("data collation", ["collate"]),
    ("other ops: norms, embedding, residuals, rotary tables, masks", ["other"]),
    ("backward: AccumulateGrad", ["accumulate_grad"]),
    ("backward, not matched to a forward op", ["backward_unmatched"]),
    ("Python and untraced (loop, autograd engine, hooks)", ["untraced"]),
]


# ---------------------------------------------------------------------------
# Ranges: named profiler ranges around the model's parts and the loop's calls.


def range_hooks(name: str):
    """(enter, leave): hooks that open a named profiler range and close it again, e.g. before and after a module."""
    opened: list[record_function] = []

    def enter(*_):
        opened.append(record_function(f"ws::{name}"))
        opened[-1].__enter__()

    def leave(*_):
        opened.pop().__exit__(None, None, None)

    return enter, leave


class Ranges:
    """Forward hooks that put the model's parts in named ranges; `remove` takes them off again."""

    def __init__(self):
        self.handles = []

    def around(self, module: torch.nn.Module, name: str) -> None:
        enter, leave = range_hooks(name)
        self.handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def install(self, model: torch.nn.Module) -> None:
        from whetstone.models.forward import unwrap

        decoder = unwrap(model).get_decoder()
        self.around(decoder, "other")  # norms, embedding, rotary tables, masks, residual adds
        for layer in decoder.layers:
            for area, block in (("attn", layer.self_attn), ("mlp", layer.mlp)):
                self.around(block, f"{area}.core")
                for child in block.children():
                    if hasattr(child, "base_layer"):  # peft's LoRA Linear: base(x) + B(A(x)) * scale
                        self.around(child, f"{area}.lora_glue")
                        self.around(child.base_layer, f"{area}.frozen")
                        for adapter in (*child.lora_A.values(), *child.lora_B.values()):
                            self.around(adapter, f"{area}.lora")
                    elif isinstance(child, torch.nn.Linear):  # a projection LoRA does not wrap
                        self.around(child, f"{area}.frozen")

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def in_range(name: str, fn):
    def wrapped(*args, **kwargs):
        with record_function(f"ws::{name}"):
            return fn(*args, **kwargs)
    return wrapped


class _ChunkedHeadInRange:
    """Stands in for forward.py's _ChunkedHeadCrossEntropy: the same Function, its apply inside a 'head' range."""

    def __init__(self, function):
        self.function = function

    def apply(self, *args):
        with record_function("ws::head"):
            return self.function.apply(*args)


# ---------------------------------------------------------------------------
# One profiled training run.


@dataclasses.dataclass
class Profile:
    label: str
    step_ms: float  # mean wall time of a step without the profiler
    step_tokens: float  # real tokens per step of those steps, as the loop counts them
    step_positions: float  # positions the model computes per step of those steps: rows x length, padding too
    profiled_ms: float  # mean wall time of a profiled step
    profiled_tokens: float
    profiled_positions: float
    ms: dict[str, float]  # category -> ms per profiled step
    reference_ms: float  # DPO: the reference's forward, already inside the categories
    flops: dict[str, float]  # category -> matmul FLOPs per position, counted in one more step
    ops: dict[tuple[str, str], float]  # (category, op) -> ms per profiled step

    @property
    def overhead(self) -> float:
        """The profiler's cost: time per token profiled against unprofiled (the windows hold different batches)."""
        return (self.profiled_ms / self.profiled_tokens) / (self.step_ms / self.step_tokens) - 1


def build_config(kind: str, precision: str):
    from whetstone.config import load_config

    path, extra = KINDS[kind]
    return load_config(ROOT / path, DEFAULT + extra + [f"train.precision={precision}"])


def profile_run(kind: str, precision: str, implementation: str, warmup: int, steps: int) -> Profile:
    """Train `warmup` + 2 x `steps` + 1 steps with whetstone's loop: time `steps`, profile `steps`, count FLOPs in 1."""
    from whetstone.models import forward
    from whetstone.objectives import logprobs
    from whetstone.train import dispatch, loop, strategy

    config = build_config(kind, precision)
    ranges, built = Ranges(), {}
    originals = (loop.objective_for, loop.build_optimizer, strategy.clip_and_measure, forward._ChunkedHeadCrossEntropy,
                 logprobs.Reference.logprobs)

    positions: list[int] = []  # input_ids.numel() of each micro-batch (batch 8 x 1: one per step)

    def objective_for(cfg):
        objective = originals[0](cfg)
        collate = in_range("collate", objective.collate)

        def collate_and_count(examples, pad_id):
            batch = collate(examples, pad_id)
            positions.append(batch["input_ids"].numel())
            return batch

        return dataclasses.replace(objective, collate=collate_and_count,
                                   units=in_range("collate", objective.units),
                                   loss=in_range("objective", objective.loss))

    def build_optimizer(model, cfg):
        optimizer = originals[1](model, cfg)
        for group in optimizer.param_groups:
            group.update(OPTIMIZERS[implementation] or {})
        enter, leave = range_hooks("optimizer.step")
        optimizer.register_step_pre_hook(enter)
        optimizer.register_step_post_hook(leave)
        optimizer.zero_grad = in_range("optimizer.zero_grad", optimizer.zero_grad)
        built["model"], built["implementation"] = model, implementation
        if OPTIMIZERS[implementation] is None:
            built["implementation"] += " (fused)" if optimizer.param_groups[0]["fused"] else " (torch's default)"
        return optimizer

    # Recording shapes (which FLOP counting needs) makes every op slower, and the small ops more so: the
    # timed profile records none, and one more step counts the FLOPs.
    timed = profile(activities=[ProfilerActivity.CPU])
    counted = profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True)
    a, b, c = warmup, warmup + steps, warmup + 2 * steps
    times: dict[int | str, float] = {}  # step -> perf_counter when the loop reported it done
    tokens: dict[int, int] = {}  # step -> real tokens trained on so far (the metrics row: log_every 1)

    def on_step(step: int, row: dict) -> bool:
        times[step], tokens[step] = time.perf_counter(), row["tokens"]
        if step == b:
            ranges.install(built["model"])
            timed.start()
            times["profiled"] = time.perf_counter()  # the profiled window starts once the profiler runs
        elif step == c:
            timed.stop()
            counted.start()
        elif step == c + 1:
            counted.stop()
            ranges.remove()
            return True
        return False

    loop.objective_for, loop.build_optimizer = objective_for, build_optimizer
    strategy.clip_and_measure = in_range("optimizer.clip", originals[2])
    forward._ChunkedHeadCrossEntropy = _ChunkedHeadInRange(originals[3])
    logprobs.Reference.logprobs = in_range("reference", originals[4])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dispatch.train(config, Path(tmp) / "run", progress=False, on_step=on_step)
    finally:
        (loop.objective_for, loop.build_optimizer, strategy.clip_and_measure, forward._ChunkedHeadCrossEntropy,
         logprobs.Reference.logprobs) = originals
    if c + 1 not in tokens:  # Ctrl-C or SIGTERM: the loop stopped at a step boundary, before the profile ended
        sys.exit(f"{kind}, {precision}: the run stopped after step {max(tokens, default=0)}, before step {c + 1}, "
                 f"which ends the profile")
    profiled = attribute(timed)
    ms = {k: v / 1000 / steps for k, v in profiled.us.items()}
    profiled_ms = 1000 * (times[c] - times["profiled"]) / steps
    ms["untraced"] = profiled_ms - sum(ms.values())
    flops = attribute(counted).flops
    assert len(positions) == c + 1, "one micro-batch per step"
    return Profile(label=f"{kind}, {precision}, AdamW {built['implementation']}",
                   step_ms=1000 * (times[b] - times[a]) / steps, step_tokens=(tokens[b] - tokens[a]) / steps,
                   step_positions=sum(positions[a:b]) / steps, profiled_ms=profiled_ms,
                   profiled_tokens=(tokens[c] - tokens[b]) / steps, profiled_positions=sum(positions[b:c]) / steps,
                   ms=ms, reference_ms=profiled.reference_us / 1000 / steps,
                   flops={k: v / positions[c] for k, v in flops.items()},
                   ops={k: v / 1000 / steps for k, v in profiled.ops.items()})


@dataclasses.dataclass
class Attribution:
    us: dict[str, float]  # category -> self time of its ops and ranges, in microseconds
    flops: dict[str, float]  # category -> matmul FLOPs
    reference_us: float  # DPO: the reference forward's time, also counted in `us`
    ops: dict[tuple[str, str], float]  # (category, op name) -> self time in microseconds


def attribute(prof) -> Attribution:
    """Every op's self time and matmul FLOPs, by category, over the profile."""
    events = list(prof.events())
    threads = defaultdict(int)
    for e in events:
        threads[e.thread] += 1
    main = max(threads, key=threads.get)  # CPU autograd runs backward on the calling thread too

    def ranges_of(e) -> tuple[list[str], str | None]:
        """(the ws:: ranges around e, innermost first; the backward node e runs in, if any)."""
        names, node = [], None
        while e is not None:
            if e.name.startswith("ws::"):
                names.append(e.name[4:])
            elif e.name.startswith(BACKWARD):
                node = e
            e = e.cpu_parent
        return names, node

    def category(names: list[str]) -> str:
        inner = next((n for n in names if n != "reference"), None)
        return inner or "other"

    # Forward: every op with a sequence number; the last one recorded with a number is the op whose
    # autograd node took it (composite ops record the number their first child will take).
    seen = [(e, *ranges_of(e)) for e in events if e.thread == main]
    forward_category: dict[int, str] = {}
    for e, names, node in sorted(seen, key=lambda x: x[0].time_range.start):
        if node is None and e.sequence_nr >= 0:
            forward_category[e.sequence_nr] = category(names)
    out = Attribution(defaultdict(float), defaultdict(float), 0.0, defaultdict(float))
    for e, names, node in seen:
        if node is None:
            cat = category(names)
        elif "AccumulateGrad" in node.name:
            cat = "accumulate_grad"
        else:
            cat = forward_category.get(node.sequence_nr, "backward_unmatched")
        out.us[cat] += e.self_cpu_time_total
        out.ops[(cat, e.name)] += e.self_cpu_time_total
        if "reference" in names:
            out.reference_us += e.self_cpu_time_total
        if e.name in MATMULS:
            out.flops[cat] += e.flops or 0
    return out


# ---------------------------------------------------------------------------
# Output.


def print_profile(p: Profile, peaks: dict[str, float], precision: str, top: int = 12) -> None:
    print(f"\n{p.label}: unprofiled {p.step_ms:,.0f} ms per step, {p.step_tokens:,.0f} real tokens per step "
          f"({1000 * p.step_tokens / p.step_ms:.1f} tokens/s); profiled {p.profiled_ms:,.0f} ms per step, "
          f"{p.profiled_tokens:,.0f} tokens per step (time per token {p.overhead:+.1%}: the profiler, and noise)")
    print(f"  {'':62} {'ms/step':>8} {'share':>6} {'GFLOP/s':>8}")
    for label, cats in ROWS:
        ms = sum(p.ms.get(c, 0.0) for c in cats)
        flops = sum(p.flops.get(c, 0.0) for c in cats) * p.profiled_positions  # per profiled step
        rate = f"{flops / ms / 1e6:8.1f}" if flops and ms > 0 else ""
        print(f"  {label:62} {ms:8.1f} {ms / p.profiled_ms:6.1%} {rate}")
    print(f"  {'total (profiled step)':62} {p.profiled_ms:8.1f} {1:6.1%}")
    if p.reference_ms:
        print(f"  (of which DPO's reference forward, in the rows above: {p.reference_ms:.1f} ms, "
              f"{p.reference_ms / p.profiled_ms:.1%})")
    heaviest = sorted(p.ops.items(), key=lambda item: -item[1])[:top]
    print("  heaviest ops (self time, forward and backward): " + "; ".join(
        f"{op} in {cat} {ms:.0f} ms" for (cat, op), ms in heaviest))
    # The timed, profiled and counted steps hold different batches: FLOPs are counted per position (the matmuls
    # of the decoder run over every position; the head's over supervised ones only, a small error). The head
    # runs in fp32 whatever the precision (models/forward.py logits_in_fp32), the other matmuls at `precision`.
    step_flops = sum(p.flops.values()) * p.step_positions
    at_peak_s = sum(f / (peaks["fp32"] if c == "head" else peaks[precision]) / 1e9 for c, f in p.flops.items())
    achieved = step_flops / (p.step_ms / 1000) / 1e9
    print(f"  matmul FLOPs {step_flops / 1e9:.0f} GFLOP per step ({sum(p.flops.values()) / 1e6:.0f} MFLOP per position, "
          f"{p.step_positions:.0f} positions) -> {achieved:.1f} GFLOP/s unprofiled: MFU {achieved / peaks[precision]:.1%} "
          f"of the {precision} peak ({peaks[precision]:.1f} GFLOP/s). At that peak these matmuls would take "
          f"{1000 * at_peak_s * p.step_positions:,.0f} ms, {1000 * at_peak_s * p.step_positions / p.step_ms:.0%} of "
          f"the unprofiled step.")


def measure_peaks(precision: str) -> dict[str, float]:
    peak, n = matmul_peak()
    peaks = {"fp32": peak}
    print(f"matmul peak: fp32 {peak:.1f} GFLOP/s (torch.mm, n = {n}, {torch.get_num_threads()} threads)", end="")
    if precision == "bf16":
        peaks["bf16"], n = matmul_peak(sizes=(1024, 2048), repeats=3, dtype=torch.bfloat16)  # emulated: slow
        print(f"; bf16 {peaks['bf16']:.1f} GFLOP/s (n = {n}, b transposed)", end="")
    has, flag = cpu_supports_bf16()
    print(f"; CPU bf16 instructions: {flag if has else 'none'}")
    return peaks


# ---------------------------------------------------------------------------
# AdamW alone, on the embedded model's LoRA parameters.


def optimizer_only(repeats: int) -> None:
    """Clipping, AdamW's step and zero_grad on the default config's LoRA parameters, each implementation in turn."""
    from whetstone.methods import apply_method
    from whetstone.models import load_model
    from whetstone.train.loop import build_optimizer
    from whetstone.train.strategy import clip_and_measure

    config = build_config("sft", "fp32")
    model = apply_method(load_model(config.model)[0], config.method)
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"{len(params)} trainable tensors, {sum(p.numel() for p in params):,} parameters; "
          f"build_optimizer makes fused={build_optimizer(model, config.train).param_groups[0]['fused']}")
    optimizers = {}
    for name in ("loop", "foreach", "fused"):
        optimizers[name] = build_optimizer(model, config.train)
        for group in optimizers[name].param_groups:
            group.update(OPTIMIZERS[name])
    seconds: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # (clip, step, zero_grad)
    torch.manual_seed(0)
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    for i in range(repeats + 2):
        for name, optimizer in optimizers.items():  # interleaved, so that load on the machine hits each alike
            for p, g in zip(params, grads):
                p.grad = g.clone()
            t0 = time.perf_counter()
            clip_and_measure(model, config.train.max_grad_norm)
            t1 = time.perf_counter()
            optimizer.step()
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if i >= 2:  # two warm-up rounds: state allocation, first-call costs
                seconds[name].append((t1 - t0, t2 - t1, time.perf_counter() - t2))

    def median(name: str, part: int) -> float:
        return 1000 * sorted(x[part] for x in seconds[name])[repeats // 2]

    print(f"  medians of {repeats} rounds, ms:  {'clip':>6} {'step':>6} {'zero_grad':>9}   step: loop / this")
    for name in seconds:
        print(f"  {name:8} {median(name, 0):25.1f} {median(name, 1):6.1f} {median(name, 2):9.2f}   "
              f"x{median('loop', 1) / median(name, 1):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=[*KINDS, "optimizer"])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--optimizer", default="built",
                        help=f"comma-separated, one training run each, in this order: {', '.join(OPTIMIZERS)}")
    parser.add_argument("--warmup", type=int, default=2, help="at least 1")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20, help="optimizer: timed rounds per implementation")
    args = parser.parse_args()
    if args.kind == "optimizer":
        optimizer_only(args.repeats)
        return
    peaks = measure_peaks(args.precision)
    profiles = [profile_run(args.kind, args.precision, name, args.warmup, args.steps)
                for name in args.optimizer.split(",")]
    for p in profiles:
        print_profile(p, peaks, args.precision)
    if len(profiles) > 1:
        first = profiles[0]
        opt = lambda p: sum(p.ms.get(c, 0.0) for c in ("optimizer.step", "optimizer.zero_grad", "optimizer.clip"))  # noqa: E731
        for p in profiles[1:]:
            print(f"\n{p.label} against {first.label}: step {first.step_ms:,.0f} -> {p.step_ms:,.0f} ms "
                  f"(x{first.step_ms / p.step_ms:.3f} speed), optimizer {opt(first):.1f} -> {opt(p):.1f} ms "
                  f"(x{opt(first) / max(opt(p), 1e-9):.1f})")


if __name__ == "__main__":
    main()
