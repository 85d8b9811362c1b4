"""`plan_methods`: count, probe and estimate every asked method; `render_table`: one row per method.

Time comes from the probe on this machine (`--device` is where it runs), or, with
`--device cuda` and no GPU here, from FLOPs: padded tokens x FLOPs/token / (peak x utilisation).
"""

from __future__ import annotations

import torch

from whetstone.config import RunConfig
from whetstone.errors import WhetstoneError
from whetstone.methods.freeze import transformer_blocks
from whetstone.objectives.preference import LOSSES
from whetstone.plan import estimate
from whetstone.plan.estimate import METHOD_NAMES, MethodPlan, Plan, PlanOptions
from whetstone.plan.probe import MethodProbe, prepare_run, probe_in_fresh_process, rss_bytes
from whetstone.train.device import resolve_precision
from whetstone.train.fast_path import resolve_fast_path


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHOD_NAMES]
    if unknown or not names:
        raise WhetstoneError(f"--methods: got {text!r}; give a comma-separated list of {', '.join(METHOD_NAMES)}, "
                             f"e.g. --methods full,lora.")
    return list(dict.fromkeys(names))


def plan_methods(config: RunConfig, options: PlanOptions) -> Plan:
    from whetstone.models import load_tokenizer

    if config.stages:
        raise WhetstoneError("plan: this config is a pipeline (stages:); plan each stage's config on its own.")
    config, _ = resolve_fast_path(config, "single")  # the probes run one process, with the run's own layout
    if options.analytic:
        from whetstone.plan.analytic import plan_analytic

        return plan_analytic(config, options)
    has_cuda = torch.cuda.is_available()
    if options.device == "cuda" and not has_cuda and options.peak_tflops is None:
        raise WhetstoneError("--device cuda: there is no GPU on this machine to probe, so the time must come from a "
                             "stated device peak; add --peak-tflops (e.g. 989 for an H100's bf16 dense peak).")
    probe_device = torch.device("cuda" if options.device == "cuda" and has_cuda else "cpu")
    notes = []
    reference = config.objective.name == "dpo" and not LOSSES[config.objective.loss].reference_free
    if config.objective.name == "dpo":
        notes.append("objective dpo: each micro-batch is planned as its chosen and rejected sequences"
                     + ("; the time and the FLOPs per token include the reference model's forward." if reference
                        else f"; loss {config.objective.loss} uses no reference model."))
    if resolve_precision(probe_device, config.train.precision).resolved != "fp32":
        notes.append(f"train.precision {config.train.precision} trains in bf16 on this {probe_device.type}, but the "
                     f"probe measures fp32 weights and activations: the run itself needs less.")
    tokenizer = load_tokenizer(config.model, config.data.chat_template)
    _, train_set, shape = prepare_run(config, tokenizer)  # the run's shape; each probe prepares its own copy
    # What the training process holds before its model: Python, torch, transformers, the tokenizer and the data.
    baseline = rss_bytes() if probe_device.type == "cpu" else 0.0
    largest = shape.largest()
    flops_time = options.device == "cuda" and not has_cuda
    time_source = (f"FLOPs at {options.peak_tflops} TFLOP/s x {options.utilisation:.0%} utilisation" if flops_time
                   else f"measured steps on {probe_device.type}")
    rows, lora_fit = [], None
    layers = len(transformer_blocks(estimate.build_meta_model(config.model)))
    for name in options.methods:
        method = estimate.method_config(config.method, name, layers)
        params = estimate.count_method_parameters(config.model, method)
        row = MethodPlan(method=name, params=params, flops_per_token=estimate.flops_per_token(params, name, reference),
                         output_bytes=estimate.output_bytes(params, name),
                         variants_bytes=estimate.variants_bytes(params, name, options.variants))
        if name == "qlora" and probe_device.type != "cuda":
            row.notes.append("qlora needs a CUDA GPU (bitsandbytes 4-bit); memory is estimated with lora's measured "
                             "activations, time is not measured here.")
            fit, timing = lora_fit, None
            if fit is None:
                fit = probe_in_fresh_process(config, estimate.method_config(config.method, "lora"), probe_device,
                                             measure_steps=False).fit
        else:
            probed = probe_in_fresh_process(config, method, probe_device, measure_steps=not flops_time)
            fit, timing = probed.fit, probed.time
            if name == "lora":
                lora_fit = fit
        row.memory = estimate.estimate_memory(params, name, fit, largest, baseline,
                                              config.train.gradient_checkpointing)
        if timing is not None and probe_device.type == "cpu":
            row.memory.allocator = _allocator(params, name, fit, shape, probed)
        if flops_time:
            row.seconds = (shape.total_padded_tokens() * row.flops_per_token
                           / (options.peak_tflops * 1e12 * options.utilisation))
        elif timing is not None:
            row.seconds = timing.seconds(shape)
            row.measured = {"first_step_s": round(timing.first_step, 3), "per_token_s": timing.per_token,
                            "per_step_s": round(timing.per_step, 3), "steps": timing.probed_steps}
            if config.train.gradient_checkpointing:
                # The probe ran without it; recomputing the forward adds about one forward (2N of 6N).
                row.seconds *= 1.33
        rows.append(row)
    plan = Plan(rows=rows, steps=shape.plan.total_steps, padded_tokens=shape.total_padded_tokens(), largest=largest,
                time_source=time_source, device=options.device, notes=notes)
    if options.budget is not None:
        plan.recommendation = estimate.recommend(rows, options.budget)
    return plan


def _allocator(params, name: str, fit, shape, probed: MethodProbe) -> float:
    """The probe process's peak beyond the memory model at the probed steps' own largest micro-batch."""
    model = estimate.estimate_memory(params, name, fit, shape.largest(probed.time.probed_steps), 0.0, False)
    return max(0.0, probed.process_peak - probed.rss_before_load - model.peak_with(False))


_COLUMNS = ("method", "total", "trainable", "%", "weights", "grads", "optim", "acts", "acts ckpt", "logits",
            "alloc", "peak", "peak ckpt", "GFLOP/tok", "time", "output", "K variants")


def render_table(plan: Plan, variants: int) -> str:
    """The plan as an aligned text table (memory and storage in MB), with its assumptions under it."""
    rows = []
    for r in plan.rows:
        p, m = r.params, r.memory
        mb = lambda x: f"{x / 2**20:,.0f}"
        rows.append((
            r.method, f"{p.total / 1e6:,.1f}M", f"{p.trainable / 1e6:,.2f}M", f"{p.trainable_pct:.2f}",
            mb(m.weights), mb(m.gradients), mb(m.optimizer), mb(m.activations), mb(m.activations_checkpointed),
            mb(m.logits), mb(m.allocator), mb(m.peak_with(False)), mb(m.peak_with(True)),
            f"{r.flops_per_token / 1e9:.2f}",
            estimate._duration(r.seconds) if r.seconds is not None else "-", mb(r.output_bytes),
            mb(r.variants_bytes),
        ))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(_COLUMNS)]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    big = plan.largest
    out = [line(_COLUMNS), line(["-" * w for w in widths]), *(line(row) for row in rows), ""]
    out.append(plan.memory_note + f"; the largest micro-batch is {big.batch} x {big.length} tokens "
               f"({big.supervised} supervised)." if plan.memory_note else
               f"memory in MB, for one process: peak = baseline {plan.rows[0].memory.baseline / 2**20:,.0f} MB "
               f"(the process before its model) + weights + grads + optim (AdamW, 2 fp32 moments) + activations "
               f"+ logits + alloc (what a fresh process running the run's first steps held beyond those); "
               f"the largest micro-batch is {big.batch} x {big.length} tokens ({big.supervised} supervised).")
    out.append(f"time: {plan.steps} optimizer steps, {plan.padded_tokens:,} padded tokens; {plan.time_source}. "
               f"FLOPs/token: 6N when every weight trains, 2N + 2N_backward + 2N_trainable on a frozen base.")
    out.append(f"storage: output = adapter (trainable x 4 B) or whole model (total x 4 B); K variants = {variants} "
               f"adapters + one base, or {variants} whole models.")
    for r in plan.rows:
        out += [f"{r.method}: {note}" for note in r.notes]
    out += plan.notes
    if plan.recommendation:
        out.append(plan.recommendation)
    return "\n".join(out)
