"""The short measured probe: what this machine does with this model, in seconds.

For each method the probe loads the real model, applies the method and measures:

1. Activation bytes. Three small forward passes (batch 2; lengths L and 2L, every token
   supervised; 2L with half supervised) under `torch.autograd.graph.saved_tensors_hooks`, which
   sees every tensor autograd keeps for backward. Bytes are summed once per storage and
   parameters are left out (they are weights, not activations). The three sums give the three
   unknowns of `ActivationFit` exactly.
2. Step time. The run's own first optimizer steps (the same examples, in the same order, at
   the configured micro-batch): step 1 as it comes (it pays first-touch costs: optimizer state,
   allocator growth), then `steady_steps` more, timed in two parts: forward + backward, per padded
   token, and clipping + the AdamW step. A run of S steps is then predicted as
       t_1 + sum_{s=2..S} (t_optimizer + t_token * padded_tokens_s).
3. The baseline: resident memory before any model is loaded.

`probe_in_fresh_process` runs all of this for one method in a new Python process, as
`whetstone train` starts one: its step times are then the real run's, and its peak RSS (the
process's, over loading and the probed steps) is what the real run's first steps reach,
allocator caches and fragmentation included. In the planner's own process, after other
methods' probes, both read high.

The probe needs the data (it tokenizes the training set, as `whetstone train` does) but writes
nothing.
"""

from __future__ import annotations

import ctypes
import gc
import math
import resource
import time
from dataclasses import dataclass

import torch

from whetstone.config import MethodConfig, RunConfig
from whetstone.data.batches import StepPlan
from whetstone.plan.estimate import ActivationFit, MicroBatchShape


def rss_bytes() -> float:
    """Resident memory of this process now (Linux /proc), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc malloc_trim), so RSS shows live memory only."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: RSS keeps some freed memory, and the next probe's excess reads low


@dataclass
class RunShape:
    """The run's steps as the data makes them: padded size of every micro-batch."""

    plan: StepPlan
    steps: list[list[MicroBatchShape]]  # per optimizer step, its micro-batches
    indices: list[list[list[int]]]  # per step, per micro-batch, the example indices (the first few steps)

    def largest(self, first_steps: int | None = None) -> MicroBatchShape:
        micro = [m for step in self.steps[:first_steps] for m in step]
        return max(micro, key=lambda m: (m.batch * m.length, m.supervised))

    def padded_tokens(self, step: int) -> int:
        return sum(m.batch * m.length for m in self.steps[step])

    def total_padded_tokens(self) -> int:
        return sum(self.padded_tokens(s) for s in range(len(self.steps)))


@dataclass
class TimeFit:
    first_step: float  # seconds of the run's first step
    per_token: float  # forward + backward seconds per padded token
    per_step: float  # clip + optimizer step seconds
    probed_steps: int = 0

    def seconds(self, shape: RunShape) -> float:
        rest = sum(self.per_step + self.per_token * shape.padded_tokens(s) for s in range(1, len(shape.steps)))
        return self.first_step + rest


PLANNED = ("sft", "dpo")  # objectives whose steps the planner can shape and time


def prepare_run(config: RunConfig, tokenizer, keep_indices: int = 4):
    """The tokenized training set and the shape of every step, as the training loop would build them.

    Each micro-batch is collated by the run's own objective (packed when data.packing is on), so the
    shapes are the rows the model will see: a DPO micro-batch of B pairs is 2B sequences, and packed rows
    hold several sequences each.
    """
    from whetstone.data.dataset import load_splits, plan_mixture
    from whetstone.data.render import IGNORE
    from whetstone.errors import WhetstoneError
    from whetstone.objectives import objective_for
    from whetstone.train.loop import per_process_batch

    if config.objective.name not in PLANNED:
        raise WhetstoneError(f"plan: objective {config.objective.name} is not planned yet; the planner shapes and "
                             f"times objectives {' and '.join(PLANNED)}.")
    objective = objective_for(config)
    cfg = config.train
    records, _, stats = load_splits(config.data, cfg.seed)
    train_set = objective.prepare(records, tokenizer, config.data, stats)
    if not train_set.examples:
        raise WhetstoneError(f"data.train: no usable training examples ({stats.records} records read, "
                             f"{stats.dropped_no_labels} dropped by truncation). Raise data.max_length or check the "
                             f"data with `whetstone data check`.")
    mixture = plan_mixture(config.data, train_set.origins, stats)
    plan = StepPlan.build(len(train_set.examples), per_process_batch(cfg, 1), cfg.grad_accum, 1, cfg.epochs,
                          cfg.max_steps, mixture)
    steps, indices = [], []
    for step in range(plan.total_steps):
        shares = plan.micro_batches(step, cfg.seed)
        micro = []
        for idx in shares:
            batch = objective.collate([train_set.examples[i] for i in idx], tokenizer.pad_token_id)
            rows, length = batch["input_ids"].shape
            micro.append(MicroBatchShape(int(rows), int(length), int((batch["labels"][:, 1:] != IGNORE).sum())))
        steps.append(micro)
        if step < keep_indices:
            indices.append(shares)
    return objective, train_set, RunShape(plan, steps, indices)


def _synthetic_batch(batch: int, length: int, supervised_from: int, vocab: int, generator) -> dict:
    input_ids = torch.randint(0, vocab, (batch, length), generator=generator)  # (B, T)
    labels = input_ids.clone()
    labels[:, :supervised_from] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def saved_bytes(model: torch.nn.Module, objective, batch: dict, context) -> int:
    """Bytes of the distinct storages autograd saves for backward in one loss, parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr != 0:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = objective.loss(model, batch, context)
    del out
    return sum(seen.values())


def measure_activations(model, objective, context, vocab: int, max_length: int, device) -> ActivationFit:
    """Solve a*tokens + b*B*T^2 + c*supervised + d = bytes from four probes.

    (batch, length, supervised from): (2, T, 0), (2, 2T, 0), (2, 2T, T), (1, T, 0): the lengths
    separate a from b, the half-supervised probe gives c, and batch 1 against batch 2 gives d.
    """
    long_len = max(8, min(max_length, 128))
    short_len = long_len // 2
    generator = torch.Generator().manual_seed(0)
    rows, sizes = [], []
    for batch_size, length, first in ((2, short_len, 0), (2, long_len, 0), (2, long_len, long_len // 2),
                                      (1, short_len, 0)):
        batch = _synthetic_batch(batch_size, length, first, vocab, generator)
        batch = {k: v.to(device) for k, v in batch.items()}
        # Labels shift by one: position t predicts token t + 1, so the first label never counts.
        supervised = batch_size * (length - max(first, 1))
        rows.append([batch_size * length, batch_size * length**2, supervised, 1.0])
        sizes.append(float(saved_bytes(model, objective, batch, context)))
    solution = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(sizes, dtype=torch.float64))
    a, b, c, d = (max(0.0, float(x)) for x in solution)
    return ActivationFit(per_token=a, per_batch_len2=b, per_supervised=c, constant=d)


def measure_time(model, objective, context, train_set, shape: RunShape, config: RunConfig, pad_id: int, device,
                 steady_steps: int = 2) -> TimeFit:
    """Run the run's own first 1 + steady_steps optimizer steps and time them (the weights change; nothing is kept)."""
    from whetstone.train.loop import build_optimizer

    optimizer = build_optimizer(model, config.train)
    params = [p for p in model.parameters() if p.requires_grad]
    n_steps = min(1 + steady_steps, len(shape.indices))
    first = compute = opt = 0.0
    tokens = 0
    model.train()
    for step in range(n_steps):
        t0 = time.perf_counter()
        batches = [objective.collate([train_set.examples[i] for i in idx], pad_id) for idx in shape.indices[step]]
        units = max(1, sum(objective.units(b) for b in batches))
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = objective.loss(model, batch, context)
            (out.loss_sum / units).backward()
        _sync(device)
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, config.train.max_grad_norm or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t2 = time.perf_counter()
        if step == 0:
            first = t2 - t0
        else:
            compute, opt, tokens = compute + (t1 - t0), opt + (t2 - t1), tokens + shape.padded_tokens(step)
    if n_steps == 1:  # a one-step run: the first step is all there is
        fit = TimeFit(first_step=first, per_token=first / max(shape.padded_tokens(0), 1), per_step=0.0)
    else:
        fit = TimeFit(first_step=first, per_token=compute / max(tokens, 1), per_step=opt / (n_steps - 1))
    fit.probed_steps = n_steps
    return fit


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class MethodProbe:
    fit: ActivationFit
    time: TimeFit | None
    load_seconds: float
    rss_before_load: float  # live memory before this method's model (freed memory handed back first)
    process_peak: float = 0.0  # the process's peak RSS after loading and the timed steps (VmHWM)


def probe_method(config: RunConfig, method: MethodConfig, objective, train_set, shape: RunShape, tokenizer,
                 device, measure_steps: bool = True) -> MethodProbe:
    """Load the model, apply `method`, and measure its step time (if asked), then its activations.

    The steps come first, so that the process's peak after them is the one a real run's first steps reach,
    before the activation probes allocate anything a run never would.
    """
    from whetstone.methods import apply_method
    from whetstone.models import load_model
    from whetstone.train.device import peak_rss_mb

    release_freed_memory()
    rss_before_load = rss_bytes()
    t0 = time.perf_counter()
    torch.manual_seed(config.train.seed)
    model, _ = load_model(config.model, device=device)
    model = apply_method(model, method)
    load_seconds = time.perf_counter() - t0
    model.train()
    context = objective.setup(model, config, train_set)
    timing = None
    if measure_steps:
        timing = measure_time(model, objective, context, train_set, shape, config, tokenizer.pad_token_id, device)
    process_peak = peak_rss_mb() * 2**20
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if objective.name != "sft":  # per sequence, a DPO row keeps what an SFT row keeps; the reference keeps nothing
        from whetstone.objectives import OBJECTIVES

        objective = OBJECTIVES["sft"]
        context = objective.setup(model, config, train_set)
    fit = measure_activations(model, objective, context, vocab, config.data.max_length, device)
    del model, context
    return MethodProbe(fit=fit, time=timing, load_seconds=load_seconds, rss_before_load=rss_before_load,
                       process_peak=process_peak)


def probe_in_fresh_process(config: RunConfig, method: MethodConfig, device, measure_steps: bool = True) -> MethodProbe:
    """probe_method in a new Python process (spawned, as `whetstone train` starts): it loads the tokenizer and
    prepares the data again, so that nothing the planner's process holds or has freed shows in its memory."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_probe_child, (config, method, str(device), measure_steps))


def _probe_child(config: RunConfig, method: MethodConfig, device: str, measure_steps: bool) -> MethodProbe:
    from whetstone.models import load_tokenizer

    tokenizer = load_tokenizer(config.model, config.data.chat_template)
    objective, train_set, shape = prepare_run(config, tokenizer)
    return probe_method(config, method, objective, train_set, shape, tokenizer, torch.device(device), measure_steps)
