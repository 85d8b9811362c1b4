"""`whetstone plan --device cuda --gpu NAME`: plan any size from config.json alone, without the weights.

Nothing is loaded or run: parameters are counted in closed form (architecture.py), activations
follow from the architecture (activations.py), and time from FLOPs at the GPU's datasheet peak.
Only the data is read, tokenized as `whetstone train` would, to find the run's steps and its
largest micro-batch.

The memory model of one GPU, training in bf16 (autocast over fp32 trainable weights, as
train/loop.py runs it; model.dtype auto keeps a frozen base in bf16):

    weights    frozen base weights  x 2 B (bf16)
               trainable weights    x 6 B: the fp32 weight (4) + the bf16 copy autocast makes of it
                                    and keeps for backward (2)
               qlora: targeted Linear weights x 0.516 B (NF4 + double-quantised absmax); the
                                    rest x 4 B: peft's prepare_model_for_kbit_training casts the
                                    embeddings, the head and the norms to fp32
    gradients  trainable x 4 B (fp32)
    optimizer  trainable x 8 B (AdamW, two fp32 moments)
    overhead   the CUDA context, cuBLAS workspaces and the caching allocator: 1 GiB
    activations, logits: activations.py at the run's largest padded micro-batch

So full fine-tuning costs 18 bytes per parameter (4 + 2 + 4 + 8) before activations: fp32 master
weights with no separate bf16 model. With `--gpus N` (FSDP full-shard or ZeRO-3) weights,
gradients and optimizer states are divided by N; activations and the overhead are not.

`--device cpu --memory SIZE --peak-tflops T` plans a CPU run the same way, in the precision the
run resolves to on this CPU (train.precision; bf16 keeps a bf16 base as above, fp32 keeps
everything at 4 B with no autocast copies). Its baseline is this process's resident memory after
reading the tokenizer and the data (Python, torch, transformers), which a training process also
holds, instead of the CUDA overhead; the activations are the CPU's (sdpa keeps k and v at their
own width).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from whetstone.config import MethodConfig, RunConfig
from whetstone.errors import WhetstoneError
from whetstone.plan import estimate
from whetstone.plan.activations import Regime, activation_model
from whetstone.plan.architecture import Architecture, adapted, parameter_count, read_architecture
from whetstone.plan.estimate import MemoryEstimate, MethodPlan, MicroBatchShape, ParameterCount, Plan, PlanOptions
from whetstone.plan.probe import prepare_run, rss_bytes
from whetstone.train.device import resolve_precision

GiB = 2**30
CUDA_OVERHEAD = 1.0 * GiB
BF16 = 2
TRAINABLE_WEIGHT_BYTES = 6  # fp32 weight + its bf16 autocast copy


@dataclass(frozen=True)
class Gpu:
    memory: float  # bytes, as nvidia-smi reports the total
    tflops: float  # dense bf16 tensor-core peak (no sparsity)
    datasheet: str


# Datasheet figures: memory in GB as sold (HBM/GDDR sizes are binary; nvidia-smi reports a little less on
# cards that reserve ECC or firmware memory), dense bf16 TFLOP/s (the datasheets print twice that "with sparsity").
GPUS = {
    "H100-80GB": Gpu(81559 * 2**20, 989.0, "https://www.nvidia.com/en-us/data-center/h100/ (SXM5: 1,979 sparse)"),
    "A100-40GB": Gpu(40960 * 2**20, 312.0, "https://www.nvidia.com/en-us/data-center/a100/ (624 sparse)"),
    "A100-80GB": Gpu(81920 * 2**20, 312.0, "https://www.nvidia.com/en-us/data-center/a100/ (624 sparse)"),
    "L4-24GB": Gpu(23034 * 2**20, 121.0, "https://www.nvidia.com/en-us/data-center/l4/ (242 sparse)"),
    "RTX4090-24GB": Gpu(24564 * 2**20, 165.2, "NVIDIA Ada GPU architecture whitepaper, bf16 with fp32 accumulate "
                                              "(330.4 sparse)"),
}


def resolve_gpu(name: str | None, memory: float | None, tflops: float | None) -> tuple[float, float, str]:
    """(memory bytes, peak TFLOP/s, label) from --gpu, or from --memory and --peak-tflops (which override it)."""
    if name is not None and name not in GPUS:
        raise WhetstoneError(f"--gpu: got {name!r}; known GPUs are {', '.join(GPUS)}. For another card give its "
                             f"memory and dense bf16 peak instead, e.g. --memory 48GB --peak-tflops 181.")
    gpu = GPUS.get(name) if name else None
    memory = memory if memory is not None else (gpu.memory if gpu else None)
    tflops = tflops if tflops is not None else (gpu.tflops if gpu else None)
    if memory is None or tflops is None:
        lacking = " and ".join(flag for flag, v in (("--memory", memory), ("--peak-tflops", tflops)) if v is None)
        raise WhetstoneError(f"the analytic plan needs the GPU's memory and peak: name one with --gpu "
                             f"({', '.join(GPUS)}) or add {lacking}.")
    return memory, tflops, name or f"{memory / GiB:.0f} GiB, {tflops:g} TFLOP/s"


def weight_bytes(params: ParameterCount, method: str, precision: str = "bf16") -> float:
    frozen = params.total - params.trainable
    if precision == "fp32":  # no autocast: every weight fp32, no bf16 copies
        return estimate.weight_bytes(params, method)
    if method == "qlora":
        rest = params.base_total - params.quantizable
        return params.quantizable * estimate.NF4_BYTES + rest * estimate.FP32 + params.trainable * TRAINABLE_WEIGHT_BYTES
    return frozen * BF16 + params.trainable * TRAINABLE_WEIGHT_BYTES


def plan_memory(arch: Architecture, params: ParameterCount, method: MethodConfig, shape: MicroBatchShape,
                attention: str, chunk: int | None, checkpointing: bool, gpus: int = 1,
                precision: str = "bf16", cuda: bool = True, baseline: float = CUDA_OVERHEAD) -> MemoryEstimate:
    """One GPU's (or, `cuda` False, one CPU process's) memory for `method` at the largest micro-batch `shape`
    (weights, grads, states sharded / gpus)."""
    regime = Regime(method=method.name, precision=precision, attention=attention, cuda=cuda,
                    adapted=tuple(leaf for leaf, _, _ in adapted(arch, method)) if method.name in (
                        "lora", "dora", "qlora") else (), r=method.r, top_blocks=method.top_blocks)
    acts = activation_model(arch, regime)
    return MemoryEstimate(
        baseline=baseline,
        weights=weight_bytes(params, method.name, precision) / gpus,
        gradients=params.trainable * estimate.FP32 / gpus,
        optimizer=params.trainable * estimate.ADAMW_BYTES / gpus,
        activations=acts.body(shape.batch, shape.length),
        activations_checkpointed=acts.checkpointed(shape.batch, shape.length),
        logits=acts.logits(shape.supervised, chunk),
        gradient_checkpointing=checkpointing,
    )


def tokenizer_for(directory: Path, config: RunConfig) -> tuple[object, str | None]:
    """The model directory's own tokenizer, or the embedded model's, with a note saying so."""
    from whetstone.config import EMBEDDED_MODEL
    from whetstone.models import load_tokenizer

    if any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        return load_tokenizer(str(directory), config.data.chat_template), None
    note = (f"{directory} has no tokenizer: the data's lengths are counted with the embedded model's "
            f"({EMBEDDED_MODEL}, 49k vocabulary); a larger vocabulary usually gives fewer tokens.")
    return load_tokenizer(EMBEDDED_MODEL, config.data.chat_template), note


def plan_analytic(config: RunConfig, options: PlanOptions) -> Plan:
    cuda = options.device == "cuda"
    memory, tflops, label = resolve_gpu(options.gpu, options.memory, options.peak_tflops)
    arch, directory = read_architecture(config.model.name)
    notes = [f"planned from {directory / 'config.json'} alone ({arch.model_type}, {arch.layers} layers, hidden "
             f"{arch.hidden}, {arch.heads}/{arch.kv_heads} heads, vocab {arch.vocab}); no weights were read."]
    precision = "bf16"
    if not cuda:
        resolved = resolve_precision(torch.device("cpu"), config.train.precision)
        precision = resolved.resolved
        notes.append(f"planned in {precision} (train.precision {resolved.asked}: {resolved.why}).")
    elif config.train.precision == "fp32":
        notes.append("planned in bf16 (train.precision: bf16 on this GPU); the config's fp32 would double the "
                     "frozen weights and most activations.")
    tokenizer, note = tokenizer_for(directory, config)
    notes += [note] if note else []
    _, train_set, shape = prepare_run(config, tokenizer)
    # A CPU run's process holds what this one holds now (Python, torch, transformers, the tokenizer, the data).
    baseline = CUDA_OVERHEAD if cuda else float(rss_bytes())
    largest = shape.largest()
    reference = config.objective.name == "dpo" and not _reference_free(config)
    rows = []
    for name in options.methods:
        method = estimate.method_config(config.method, name, arch.layers)
        params = parameter_count(arch, method)
        row = MethodPlan(method=name, params=params, flops_per_token=estimate.flops_per_token(params, name, reference),
                         output_bytes=estimate.output_bytes(params, name),
                         variants_bytes=estimate.variants_bytes(params, name, options.variants))
        row.memory = plan_memory(arch, params, method, largest, config.model.attn_implementation,
                                 config.train.logit_chunk, config.train.gradient_checkpointing, options.gpus,
                                 precision, cuda, baseline)
        row.seconds = (shape.total_padded_tokens() * row.flops_per_token
                       / (tflops * 1e12 * options.utilisation * options.gpus))
        rows.append(row)
    shards = f" x {options.gpus} GPUs, weights, gradients and optimizer states sharded (FSDP/ZeRO-3)" \
        if options.gpus > 1 else ""
    plan = Plan(rows=rows, steps=shape.plan.total_steps, padded_tokens=shape.total_padded_tokens(), largest=largest,
                time_source=f"FLOPs at {tflops:g} TFLOP/s x {options.utilisation:.0%} utilisation{shards}",
                device=f"cuda ({label})" if cuda else f"cpu ({memory / GiB:.0f} GiB, {tflops:g} TFLOP/s)",
                notes=notes, memory_note=MEMORY_NOTE if cuda else _cpu_memory_note(baseline, precision))
    budget = options.budget if options.budget is not None else memory
    plan.recommendation = estimate.recommend(rows, budget)
    return plan


def _cpu_memory_note(baseline: float, precision: str) -> str:
    weights = ("weights (frozen x 2 B; trainable x 6 B, fp32 + autocast's bf16 copy)" if precision == "bf16"
               else "weights (x 4 B)")
    return (f"memory in MB, for one CPU process in {precision}: peak = baseline {baseline / 2**20:,.0f} MB (this "
            f"process before any model) + {weights} + grads (x 4 B) + optim (AdamW x 8 B) + activations (analytic, "
            f"docs/plan.md) + logits")


def _reference_free(config: RunConfig) -> bool:
    from whetstone.objectives.preference import LOSSES

    return LOSSES[config.objective.loss].reference_free


MEMORY_NOTE = ("memory in MB, for one GPU in bf16: peak = 1 GiB CUDA context and allocator + weights (frozen "
               "x 2 B; trainable x 6 B, fp32 + autocast's bf16 copy; qlora: NF4 x 0.516 B, its fp32-cast rest x 4 B) "
               "+ grads (x 4 B) + optim (AdamW x 8 B) + activations (analytic, docs/plan.md) + logits (the chunked "
               "head's saved gradient and one chunk's workspace)")
