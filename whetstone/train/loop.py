"""The training loop, top to bottom: setup -> fit -> save.

One optimizer step takes `grad_accum` micro-batches of `batch_size` examples on
each process. Objectives return a loss SUMMED over their units (supervised
tokens for SFT); we divide by the units of the whole step, counted before the
first backward, so that 8 x 1, 2 x 4 and 2 processes x 4 all take the same
step. The order of examples depends only on (seed, epoch), so a checkpoint only
has to remember how many steps are done.
"""

from __future__ import annotations

import math
import random
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from whetstone.config import RunConfig, TrainConfig
from whetstone.data.batches import StepPlan, example_lengths
from whetstone.data.dataset import DataStats, load_splits, plan_mixture, summarize_preparation
from whetstone.data.packing import sequence_tokens
from whetstone.errors import WhetstoneError
from whetstone.evaluate.final import final_evaluation
from whetstone.evaluate.loss import objective_loss
from whetstone.methods import apply_method, count_parameters, is_adapter_model
from whetstone.methods.lora import interpolate_toward_base
from whetstone.models import load_model, load_tokenizer
from whetstone.objectives import objective_for
from whetstone.train import distributed
from whetstone.train.checkpoint import TrainState, save_checkpoint
from whetstone.train.device import (announce_precision, autocast_context, base_dtype, precision_entries,
                                    resolve_device, resolve_precision)
from whetstone.train.fast_path import resolve_fast_path
from whetstone.train.resume import starting_point
from whetstone.train.run_dir import RunDirectory

StepCallback = Callable[[int, dict], bool]  # (step, metrics row) -> True to stop after this step


def lr_multiplier(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine/linear decay to 0, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def per_process_batch(cfg: TrainConfig, world_size: int) -> int:
    """Micro-batch size of one process: train.batch_size, or derived from train.global_batch_size."""
    if cfg.global_batch_size is None:
        return cfg.batch_size
    per_step = cfg.grad_accum * world_size
    if cfg.global_batch_size % per_step:
        raise WhetstoneError(
            f"train.global_batch_size={cfg.global_batch_size} cannot be split over {world_size} processes x "
            f"{cfg.grad_accum} accumulation steps; use a multiple of {per_step}."
        )
    return cfg.global_batch_size // per_step


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices only: decaying norm gains and biases towards 0 hurts and saves nothing.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # On CPU torch's default AdamW updates one tensor at a time, several ops each from Python, and LoRA has
    # hundreds of small tensors (420 on the embedded model): the fused kernel does the same arithmetic in one
    # call, 51 -> 11 ms a step there (bench/profile_step.py optimizer), equal up to float rounding
    # (tests/test_optimizer_step.py). Plain CPU tensors only: FSDP's DTensor shards and other devices keep
    # torch's default (on CUDA, already the batched foreach kernels), which their tests cover.
    fused = all(p.device.type == "cpu" and type(p) is torch.nn.Parameter for p in params) or None
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's own peak resident memory: VmHWM of /proc/self/status, else ru_maxrss.

    Not ru_maxrss first: Linux carries a parent's peak across fork and exec, so a run started by a
    large process (a notebook, a test runner, a benchmark) would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class StopSignal:
    """Ctrl-C or SIGTERM ask the loop to stop at the next step boundary and checkpoint.

    A second Ctrl-C interrupts at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
              f"(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _say(message: str) -> None:
    if distributed.is_main():
        print(message, flush=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    config: RunConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: StepCallback | None = None,
    accept_changes: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict:
    """Run (or resume) one training run; return the summary that is also written to summary.json.

    `accept_changes`: resume even though the data, base model or batch-shaping config changed (train/resume.py).
    `trust_remote_code`, `allow_pickle`: what a resumed run's model may do. The run's own config.yaml asking is
    not enough (models/load.py run_model_config); a new run's config is the caller's own and says it there.
    """
    from whetstone.train.online import is_online, train_online  # ppo and grpo generate their data: their own loop

    grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    if is_online(config, run_dir, resume):
        return train_online(config, run_dir, resume=resume, overwrite=overwrite, progress=progress, on_step=on_step,
                            accept_changes=accept_changes, **grants)
    from whetstone.train.stages import is_pipeline, run_pipeline  # a config with stages: one run per stage

    if is_pipeline(config, run_dir, resume):
        return run_pipeline(config, run_dir, resume=resume, overwrite=overwrite, progress=progress, on_step=on_step,
                            accept_changes=accept_changes, **grants)
    t_start = time.perf_counter()

    # ---- setup -----------------------------------------------------------------
    if resume:
        run, config = RunDirectory.open(run_dir, **grants)
    elif (run_dir or config.output) is None:
        raise WhetstoneError("no run directory: pass -o DIR or set output: in the config.")
    strategy = distributed.resolve_strategy(config)  # ddp, fsdp or deepspeed; fails here, before any work
    config, layout = resolve_fast_path(config, strategy)  # config.yaml keeps the resolved layout for a resume
    if not resume:
        target = run_dir or config.output
        run = RunDirectory.create(target, config, overwrite) if distributed.is_main() else RunDirectory(Path(target))
    _say(layout)
    cfg = config.train
    rank, world_size = distributed.world()
    device = resolve_device(cfg.device)
    distributed.init(device)
    precision = resolve_precision(device, cfg.precision)
    dtype = base_dtype(config, precision)  # refuses a base the method cannot train on, before any work
    announce_precision(precision, _say)
    autocast = autocast_context(device, precision)
    _seed_everything(cfg.seed)

    objective = objective_for(config)
    tokenizer = load_tokenizer(config.model, config.data.chat_template)
    train_records, eval_records, data_stats = load_splits(config.data, cfg.seed)
    train_set = objective.prepare(train_records, tokenizer, config.data, data_stats)
    eval_set = objective.prepare(eval_records, tokenizer, config.data, None) if eval_records else None
    summarize_preparation(data_stats, config.data)
    start = starting_point(run, config, resume, accept_changes)  # a resume that cannot go on stops here
    if len(train_set.examples) == 0:
        raise WhetstoneError(
            f"data.train: no usable training examples ({data_stats.records} records read, "
            f"{data_stats.dropped_no_labels} dropped by truncation). Raise data.max_length or check the data "
            f"with `whetstone data check`."
        )
    _say(f"data: {data_stats.records} training records ({data_stats.explanation}), "
         f"{data_stats.eval_records} eval records")
    for note in data_stats.notes:
        _say(f"data: {note}")
    mixture = plan_mixture(config.data, train_set.origins, data_stats)
    for source in mixture.describe() if mixture else []:
        _say(f"data: mixture {source['task']}: {source['examples']} examples, {source['probability']:.1%} of the "
             f"draws ({source['per_epoch']} per epoch)")
    # Per-task losses are logged when the training set holds several tasks (loss/<task> in metrics.jsonl).
    task_names = sorted({t or "default" for t in train_set.tasks})
    task_of = [t or "default" for t in train_set.tasks] if len(task_names) > 1 else None

    model, resolved = load_model(config.model, device=device, quantize_4bit=config.method.name == "qlora", dtype=dtype)
    model = apply_method(model, config.method, autocast_bf16=precision.resolved == "bf16")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    context = objective.setup(model, config, train_set)  # may attach a head (classify, reward): count after it
    trainable, total = count_parameters(model)
    _say(f"model: {config.model.name} on {device.type}; method {config.method.name}: "
         f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)")
    runner = distributed.LossRunner(model, objective, context, device, strategy)  # FSDP shards the model here
    optimizer = build_optimizer(model, cfg)
    runner.start(optimizer, config)  # DeepSpeed: its engine takes over backward, clipping and the optimizer step
    plan = StepPlan.build(len(train_set.examples), per_process_batch(cfg, world_size), cfg.grad_accum, world_size,
                          cfg.epochs, cfg.max_steps, mixture,
                          example_lengths(train_set.examples) if config.data.group_by_length else None)
    warmup_steps = math.ceil(cfg.warmup * plan.total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, plan.total_steps, warmup_steps, cfg.schedule)
    )
    state = start.restore(model, optimizer, scheduler, restore=runner.restore(optimizer))
    if start.checkpoint is not None:
        _say(f"resumed from {start.checkpoint} at step {state.step} of {plan.total_steps}")
    if resume and distributed.is_main():  # the only writer: another rank reading mid-rewrite would keep nothing
        run.truncate_metrics(state.step)
    pad_id = tokenizer.pad_token_id

    # ---- fit -------------------------------------------------------------------
    model.train()
    window = _new_window()
    last_row: dict = {}
    stopped_early = False
    bar = tqdm(total=plan.total_steps, initial=state.step, unit="step", dynamic_ncols=True,
               disable=not progress or not distributed.is_main(), file=sys.stderr)
    with StopSignal() as stop:
        while state.step < plan.total_steps:
            t_step = time.perf_counter()
            step = state.step
            shares = plan.micro_batches(step, cfg.seed, rank)
            # An empty share (ragged epoch end, several processes) still runs a forward and backward,
            # on a stand-in example with weight 0, so that every process joins each all-reduce.
            batches = [objective.collate([train_set.examples[i] for i in (idx or [0])], pad_id) for idx in shares]
            weights = [1.0 if idx else 0.0 for idx in shares]
            # The whole step's units (supervised tokens for SFT), across micro-batches and processes.
            step_units = distributed.sum_across(sum(objective.units(b) * w for b, w in zip(batches, weights)))
            step_loss_sum, step_metrics, step_tokens, step_read = 0.0, {}, 0, 0
            for i, (batch, weight) in enumerate(zip(batches, weights)):
                batch = {k: v.to(device) for k, v in batch.items()}
                with runner.accumulating(last_micro_batch=i == len(batches) - 1):
                    with autocast():
                        out = runner(batch)
                    runner.backward(out.loss_sum * (weight * runner.grad_scale / max(step_units, 1)))
                step_loss_sum += float(out.loss_sum.detach()) * weight
                if task_of is not None and out.row_loss is not None and weight:
                    for example, loss, units in zip(shares[i], out.row_loss.tolist(), out.row_units.tolist()):
                        sums = window["tasks"].setdefault(task_of[example], [0.0, 0])
                        sums[0], sums[1] = sums[0] + loss, sums[1] + units
                for key, value in out.metrics.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + float(value) * weight
                step_tokens += sequence_tokens(batch) if weight else 0
                step_read += int(batch["attention_mask"].sum()) if weight else 0
            step_tokens = int(distributed.sum_across(step_tokens))  # real tokens of every process
            state.tokens += step_tokens
            state.tokens_read += int(distributed.sum_across(step_read))
            # DeepSpeed clips and steps in one call, and skips a non-finite gradient itself (checked below).
            grad_norm = runner.step() if runner.engine is not None else _clip_and_measure(model, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            if not distributed.all_finite(step_loss_sum, grad_norm):
                origins = [train_set.origins[i] for idx in shares for i in idx]
                if not cfg.skip_nonfinite:
                    raise _nonfinite_error(state.step + 1, step_loss_sum, grad_norm, origins, run)
                state.skipped_steps += 1
                _say(f"step {state.step + 1}: non-finite loss or gradient, step skipped "
                     f"(train.skip_nonfinite; {state.skipped_steps} so far); records: {', '.join(origins[:8])}")
                optimizer.zero_grad(set_to_none=True)
            elif runner.engine is None:  # under DeepSpeed, runner.step() applied it
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.supervised_tokens += int(step_units)

            seconds = time.perf_counter() - t_step
            state.train_seconds += seconds
            window["loss_sum"] += distributed.sum_across(step_loss_sum)
            window["units"] += step_units
            window["tokens"] += step_tokens
            for key, value in step_metrics.items():
                window["metrics"][key] = window["metrics"].get(key, 0.0) + distributed.sum_across(value)
            window["seconds"] += seconds
            window["steps"] += 1
            loss_now = window["loss_sum"] / max(window["units"], 1)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_now:.4f}", tok_s=f"{window['tokens'] / max(window['seconds'], 1e-9):.0f}")

            done = state.step == plan.total_steps
            do_eval = eval_set is not None and (state.step % config.eval.every == 0 or done)
            if state.step % cfg.log_every == 0 or do_eval or done:
                last_row = {
                    "step": state.step,
                    "epoch": round(state.step / plan.steps_per_epoch, 4),
                    "loss": round(loss_now, 6),
                    "lr": lr,
                    "grad_norm": round(grad_norm, 6),
                    "tokens": state.tokens,
                    "tokens_per_s": round(window["tokens"] / max(window["seconds"], 1e-9), 2),
                    "elapsed_s": round(time.perf_counter() - t_start, 3),
                }
                for key, value in window["metrics"].items():
                    last_row[key] = round(value / max(window["units"], 1), 6)
                for task in task_names if task_of is not None else []:
                    # Every process logs the same steps and iterates the same names: the all-reduces line up.
                    loss, units = (distributed.sum_across(x) for x in window["tasks"].get(task, [0.0, 0]))
                    if units:
                        last_row[f"loss/{task}"] = round(loss / units, 6)
                if do_eval:
                    with runner.evaluating():  # FSDP: the model's outer weights are gathered by the loss wrapper
                        results = objective_loss(model, objective, eval_set, cfg.batch_size, pad_id, device, context,
                                                 autocast, config.eval.max_batches)
                    last_row.update(_eval_entries(results, config.objective.name))
                    model.train()
                if distributed.is_main():
                    run.append_metrics(last_row)
                window = _new_window()
            wants_stop = distributed.any_across(stop.requested or (on_step is not None and on_step(state.step, last_row)))
            if state.step % cfg.checkpoint_every == 0 or done or wants_stop:
                full_state = runner.gather_state(optimizer)  # FSDP: every process joins the gather
                if distributed.is_main():
                    save_checkpoint(run.checkpoints, model, optimizer, scheduler, state, cfg.keep_checkpoints,
                                    full_state)
            if wants_stop and not done:
                stopped_early = True
                break
    bar.close()

    # ---- save ------------------------------------------------------------------
    # Weights first: a failure in the end-of-training evaluation must not cost the trained model.
    final, interpolated = {}, {}
    if not stopped_early and config.method.interpolate != 1.0:
        interpolate_toward_base(model, config.method.interpolate)
        _say(f"method.interpolate: kept {100 * config.method.interpolate:g}% of the adapter's change")
        if eval_set is not None:  # the dev loss of the model that is saved, not of the one before the step back
            with runner.evaluating():
                results = objective_loss(model, objective, eval_set, cfg.batch_size, pad_id, device, context,
                                         autocast, config.eval.max_batches)
            interpolated = _eval_entries(results, config.objective.name)
    full_weights = None if stopped_early else runner.gather_weights(is_adapter_model(model))  # FSDP: a collective
    if distributed.is_main() and not stopped_early:
        _save_weights(model, tokenizer, run.path, resolved.path, full_weights)
        # End-of-training metrics, forgetting probe and canaries, as far as config.eval and data.canaries ask.
        final = final_evaluation(model, tokenizer, config, run.path, eval_records)
    summary = _summary(config, run, state, plan, data_stats, trainable, total, device, t_start, stopped_early) | final
    summary |= precision_entries(precision, dtype)
    if interpolated:
        summary |= {"eval_loss_before_interpolation": summary["eval_loss"]} | interpolated
    if mixture is not None:
        summary["data"]["mixture"] = mixture.describe()
    if distributed.is_main():
        run.write_json("summary.json", summary)
        run.finish(summary)  # report.html is written; trackers get the summary and close
    if stopped_early:
        _say(f"stopped at step {state.step} of {plan.total_steps}; continue with: whetstone train --resume {run.path}")
    else:
        _say(f"done: {run.path} (train loss {summary['train_loss']}, eval loss {summary['eval_loss']})")
    distributed.shutdown()
    return summary


def _nonfinite_error(step: int, loss_sum: float, grad_norm: float, origins: list[str], run) -> WhetstoneError:
    from whetstone.train.checkpoint import latest_checkpoint

    last = latest_checkpoint(run.checkpoints)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
    return WhetstoneError(
        f"step {step}: the loss ({loss_sum}) or the gradient norm ({grad_norm}) is not finite, so the run stopped "
        f"before applying it; {kept}. The step's records: {', '.join(origins[:16])}"
        f"{' ...' if len(origins) > 16 else ''}. Lower train.lr, check those records, or set "
        f"train.skip_nonfinite: true to skip such steps and count them."
    )


def _eval_entries(results: dict, objective: str) -> dict:
    """A dev-set evaluation's figures as logged: eval_loss, eval_ppl (sft) and eval_<metric>."""
    out = {"eval_loss": round(results["loss"], 6)}
    if objective == "sft":
        out["eval_ppl"] = round(math.exp(min(results["loss"], 50.0)), 4)
    return out | {f"eval_{key}": round(value, 6) for key, value in results.items() if key != "loss"}


def _new_window() -> dict:
    """Sums since the last log line; a logged value is the window's mean per unit."""
    return {"loss_sum": 0.0, "units": 0, "tokens": 0, "seconds": 0.0, "steps": 0, "metrics": {},
            "tasks": {}}  # task -> [loss sum, units]


def _clip_and_measure(model: torch.nn.Module, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP: a DTensor of per-shard partial norms; reducing them is a collective
        norm = norm.full_tensor()
    return float(norm)


def _save_weights(model, tokenizer, run_path: Path, base_path: str, state_dict: dict | None = None) -> None:
    """`state_dict`: the full weights gathered from FSDP shards; by default save_pretrained reads the model."""
    extra = {} if state_dict is None else {"state_dict": state_dict}
    if is_adapter_model(model):
        # Point the adapter at a base that plain peft can load on this machine.
        for peft_config in model.peft_config.values():
            peft_config.base_model_name_or_path = base_path
        model.save_pretrained(run_path / "adapter", **extra)
        tokenizer.save_pretrained(run_path / "adapter")
    else:
        model.save_pretrained(run_path / "model", safe_serialization=True, **extra)
        tokenizer.save_pretrained(run_path / "model")


def _summary(config: RunConfig, run: RunDirectory, state: TrainState, plan: StepPlan, data_stats: DataStats,
             trainable: int, total: int, device: torch.device, t_start: float, stopped_early: bool) -> dict:
    rows = run.read_metrics()
    evals = [r for r in rows if "eval_loss" in r]
    return {
        "train_loss": rows[-1]["loss"] if rows else None,
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "eval_ppl": evals[-1].get("eval_ppl") if evals else None,
        "steps": state.step,
        "total_steps": plan.total_steps,
        "stopped_early": stopped_early,
        "tokens": state.tokens,
        "supervised_tokens": state.supervised_tokens,
        "tokens_read": state.tokens_read,
        "skipped_steps": state.skipped_steps,
        "accepted_changes": state.accepted_changes,  # what --accept-changes let a resume continue on
        "tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 2),
        "train_s": round(state.train_seconds, 3),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": round(100 * trainable / total, 4),
        "method": config.method.name,
        "device": device.type,
        "data": {
            "format": data_stats.format,
            "records": data_stats.records,
            "eval_records": data_stats.eval_records,
            "skipped_invalid": data_stats.skipped_invalid,
            "truncated": data_stats.truncated,
            "dropped_no_labels": data_stats.dropped_no_labels,
        },
    }
