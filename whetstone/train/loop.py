"""The training loop, top to bottom: setup -> fit -> save. One loop for every objective.

An offline objective (sft, classify, reward, dpo, kto) trains on prepared examples: one loop step takes
`grad_accum` micro-batches of `batch_size` examples on each process and one optimizer step. Objectives return
a loss SUMMED over their units (supervised tokens for SFT); we divide by the units of the whole step, counted
before the first backward, so that 8 x 1, 2 x 4 and 2 processes x 4 all take the same step. The order of
examples depends only on (seed, epoch), so a checkpoint only has to remember how many steps are done.

An online objective (ppo, grpo: objectives/online.py) makes its own data: one loop step is a round that
samples, scores and updates, calling this loop's optimizer step for each of its updates.

Either way this file keeps setup, resume, the optimizer step with its NaN guard, logging, checkpoints and the
summary; how the processes share the work is the strategy's (strategy.py).
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from whetstone.config import ONLINE_OBJECTIVES, RunConfig, TrainConfig
from whetstone.data.augment import augment_for_run
from whetstone.data.batches import StepPlan, example_lengths
from whetstone.data.dataset import DataStats, load_splits, plan_mixture, summarize_preparation
from whetstone.data.mixture import Mixture
from whetstone.data.packing import sequence_tokens
from whetstone.errors import WhetstoneError
from whetstone.evaluate.final import final_evaluation
from whetstone.evaluate.loss import objective_loss
from whetstone.methods import apply_method, count_parameters, is_adapter_model
from whetstone.methods.lora import interpolate_toward_base
from whetstone.models import load_model, load_tokenizer
from whetstone.objectives import objective_for
from whetstone.objectives.base import OnlineObjective, OptimizerStep, StepOutput
from whetstone.rundir import RunDir
from whetstone.train import distributed
from whetstone.train.checkpoint import StopSignal, TrainState, latest_checkpoint, save_checkpoint
from whetstone.train.device import (Precision, announce_precision, autocast_context, base_dtype, peak_memory_mb,
                                    precision_entries, resolve_device, resolve_precision)
from whetstone.train.fast_path import resolve_fast_path
from whetstone.train.resume import starting_point
from whetstone.train.run_dir import RunDirectory
from whetstone.train.strategy import Single, strategy_for

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


def say(message: str) -> None:
    """Print on the main process only."""
    if distributed.is_main():
        print(message, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------
# What one step of each kind of objective does.


class OfflineSteps:
    """An offline objective's steps: micro-batches of prepared examples, then one optimizer step."""

    eval_before_training = False
    logs_every_step = False  # a row every train.log_every steps, each the mean of its window
    train_mode = True

    def __init__(self, objective, context, strategy, train_set, eval_set, plan: StepPlan, config: RunConfig,
                 device, autocast, pad_id: int):
        self.objective, self.context, self.strategy = objective, context, strategy
        self.train_set, self.eval_set, self.plan, self.config = train_set, eval_set, plan, config
        self.device, self.autocast, self.pad_id = device, autocast, pad_id
        self.total_steps = self.optimizer_steps = plan.total_steps
        self.steps_per_epoch = plan.steps_per_epoch
        self.can_evaluate = eval_set is not None
        # Per-task losses are logged when the training set holds several tasks (loss/<task> in metrics.jsonl).
        self.task_names = sorted({t or "default" for t in train_set.tasks})
        self.task_of = [t or "default" for t in train_set.tasks] if len(self.task_names) > 1 else None

    def step(self, index: int, optimizer_step: OptimizerStep) -> StepOutput:
        t_step = time.perf_counter()
        cfg, strategy = self.config.train, self.strategy
        shares = self.plan.micro_batches(index, cfg.seed, distributed.world()[0])
        examples = self.train_set.examples
        # An empty share (ragged epoch end, several processes) still runs a forward and backward,
        # on a stand-in example with weight 0, so that every process joins each all-reduce.
        batches = [self.objective.collate([examples[i] for i in (idx or [0])], self.pad_id) for idx in shares]
        weights = [1.0 if idx else 0.0 for idx in shares]
        # The whole step's units (supervised tokens for SFT), across micro-batches and processes.
        step_units = distributed.sum_across(sum(self.objective.units(b) * w for b, w in zip(batches, weights)))
        loss_sum, metrics, task_sums, tokens, read = 0.0, {}, {}, 0, 0
        for i, (batch, weight) in enumerate(zip(batches, weights)):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with strategy.accumulating(last_micro_batch=i == len(batches) - 1):
                with self.autocast():
                    out = strategy.loss(batch)
                strategy.backward(out.loss_sum * (weight * strategy.grad_scale / max(step_units, 1)))
            loss_sum += float(out.loss_sum.detach()) * weight
            if self.task_of is not None and out.row_loss is not None and weight:
                for example, loss, units in zip(shares[i], out.row_loss.tolist(), out.row_units.tolist()):
                    sums = task_sums.setdefault(self.task_of[example], [0.0, 0])
                    sums[0], sums[1] = sums[0] + loss, sums[1] + units
            for key, value in out.metrics.items():
                metrics[key] = metrics.get(key, 0.0) + float(value) * weight
            tokens += sequence_tokens(batch) if weight else 0
            read += int(batch["attention_mask"].sum()) if weight else 0
        grad_norm, lr = optimizer_step(loss_sum, [self.train_set.origins[i] for idx in shares for i in idx])
        return StepOutput(loss_sum=distributed.sum_across(loss_sum), units=step_units,
                          tokens=int(distributed.sum_across(tokens)),  # real tokens of every process
                          tokens_read=int(distributed.sum_across(read)), supervised_tokens=int(step_units), lr=lr,
                          seconds=time.perf_counter() - t_step, grad_norm=grad_norm,
                          metrics={k: distributed.sum_across(v) for k, v in metrics.items()}, task_sums=task_sums)

    def task_losses(self, window: LogWindow) -> dict:
        """loss/<task> of the log window, where the training set holds several tasks."""
        row = {}
        for task in self.task_names if self.task_of is not None else []:
            # Every process logs the same steps and iterates the same names: the all-reduces line up.
            loss, units = (distributed.sum_across(x) for x in window.tasks.get(task, [0.0, 0]))
            if units:
                row[f"loss/{task}"] = round(loss / units, 6)
        return row

    def evaluate(self) -> dict:
        """The dev set's loss (and the objective's metrics), as logged: eval_loss, eval_ppl (sft), eval_<metric>."""
        cfg = self.config.train
        with self.strategy.evaluating():  # FSDP: the model's outer weights are gathered by the loss wrapper
            results = objective_loss(self.strategy.model, self.objective, self.eval_set, cfg.batch_size, self.pad_id,
                                     self.device, self.context, self.autocast, self.config.eval.max_batches)
        self.strategy.model.train()
        out = {"eval_loss": round(results["loss"], 6)}
        if self.config.objective.name == "sft":
            out["eval_ppl"] = round(math.exp(min(results["loss"], 50.0)), 4)
        return out | {f"eval_{key}": round(value, 6) for key, value in results.items() if key != "loss"}

    def restore(self, extra: dict) -> None:
        """Nothing beyond the checkpoint's weights, optimizer and step."""

    def finish(self) -> None:
        """Nothing to remove before saving."""


@dataclass
class OptimizerSteps:
    """The optimizer step with the NaN guard, for every objective: clip, check, apply (or skip), advance the LR."""

    strategy: Single
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    cfg: TrainConfig
    state: TrainState
    run: RunDirectory

    def __call__(self, loss_sum: float, origins: list[str]) -> tuple[float, float]:
        """(gradient norm before clipping, learning rate of the step) for a step whose loss was `loss_sum`.

        A non-finite loss or gradient is never applied: the run stops with the records behind it, or, with
        train.skip_nonfinite, the step is skipped and counted.
        """
        lr = self.scheduler.get_last_lr()[0]
        grad_norm, applied = self.strategy.step(self.optimizer, self.cfg.max_grad_norm,
                                                lambda norm: distributed.all_finite(loss_sum, norm))
        if not applied:
            if not self.cfg.skip_nonfinite:
                raise _nonfinite_error(self.state.step + 1, loss_sum, grad_norm, origins, self.run)
            self.state.skipped_steps += 1
            say(f"step {self.state.step + 1}: non-finite loss or gradient, step skipped "
                f"(train.skip_nonfinite; {self.state.skipped_steps} so far); records: {', '.join(origins[:8])}")
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, lr


@dataclass
class LogWindow:
    """Sums since the last log line; a logged value is the window's mean per unit."""

    loss_sum: float = 0.0
    units: float = 0
    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, list] = field(default_factory=dict)  # task -> [loss sum, units], this process

    def add(self, out: StepOutput) -> None:
        self.loss_sum += out.loss_sum
        self.units += out.units
        self.tokens += out.tokens
        self.seconds += out.seconds
        self.steps += 1
        for key, value in out.metrics.items():
            self.metrics[key] = self.metrics.get(key, 0.0) + value
        for task, (loss, units) in out.task_sums.items():
            sums = self.tasks.setdefault(task, [0.0, 0])
            sums[0], sums[1] = sums[0] + loss, sums[1] + units

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.units, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def means(self) -> dict[str, float]:
        return {key: round(value / max(self.units, 1), 6) for key, value in self.metrics.items()}


# ---------------------------------------------------------------------------
# Setup.


@dataclass
class Setup:
    """Everything a run holds once it is set up, for the fit and the save."""

    config: RunConfig
    run: RunDirectory
    device: torch.device
    precision: Precision
    dtype: torch.dtype
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module
    base_path: str
    steps: object  # OfflineSteps, or an online objective's rounds
    strategy: Single
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    state: TrainState
    trainable: int
    total: int
    eval_records: list
    data_stats: DataStats | None = None
    mixture: Mixture | None = None


def _open_run(config: RunConfig | None, run_dir, resume: bool, overwrite: bool,
              grants: dict) -> tuple[RunDirectory, RunConfig, str]:
    """(the run directory, its config with the resolved layout, the strategy); fails before any work."""
    if resume:
        run, config = RunDirectory.open(run_dir, **grants)
    elif (run_dir or config.output) is None:
        raise WhetstoneError("no run directory: pass -o DIR or set output: in the config.")
    if config.objective.name in ONLINE_OBJECTIVES and distributed.world()[1] > 1:
        raise WhetstoneError(f"objective {config.objective.name} runs on one process; launch it without "
                             f"torchrun/accelerate.")
    strategy = distributed.resolve_strategy(config)  # ddp, fsdp or deepspeed; fails here, before any work
    config, layout = resolve_fast_path(config, strategy)  # config.yaml keeps the resolved layout for a resume
    if not resume:
        target = run_dir or config.output
        run = RunDirectory.create(target, config, overwrite) if distributed.is_main() else RunDirectory(Path(target))
    say(layout)
    return run, config, strategy


def set_up(config: RunConfig | None, run_dir, resume: bool, overwrite: bool, accept_changes: bool,
           grants: dict) -> Setup:
    run, config, strategy_name = _open_run(config, run_dir, resume, overwrite, grants)
    cfg = config.train
    device = resolve_device(cfg.device)
    distributed.init(device)
    precision = resolve_precision(device, cfg.precision)
    dtype = base_dtype(config, precision)  # refuses a base the method cannot train on, before any work
    announce_precision(precision, say)
    autocast = autocast_context(device, precision)
    # data.augment: train on the reworded file. Before the seed: a teacher loading must not move the RNG.
    config = augment_for_run(config, run.dir, *distributed.world())
    seed_everything(cfg.seed)

    objective = objective_for(config)
    online = isinstance(objective, OnlineObjective)
    tokenizer = load_tokenizer(config.model, config.data.chat_template)
    train_records, eval_records, data_stats = load_splits(config.data, cfg.seed)
    if online:
        prompts = objective.prepare(train_records, eval_records, tokenizer, config)
    else:
        train_set, eval_set = _prepare_examples(objective, train_records, eval_records, tokenizer, config, data_stats)
    start = starting_point(run, config, resume, accept_changes)  # a resume that cannot go on stops here
    if not online:
        _describe_examples(train_set, data_stats)
        mixture = plan_mixture(config.data, train_set.origins, data_stats)
        for source in mixture.describe() if mixture else []:
            say(f"data: mixture {source['task']}: {source['examples']} examples, {source['probability']:.1%} of the "
                f"draws ({source['per_epoch']} per epoch)")

    model, resolved = load_model(config.model, device=device, quantize_4bit=config.method.name == "qlora", dtype=dtype)
    model = apply_method(model, config.method, autocast_bf16=precision.resolved == "bf16")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if online:  # the rounds hold the reference, the value head (ppo) and the rewards
        steps = objective.setup(model, config, prompts, tokenizer, device, autocast)
        say(steps.describe())
        strategy = strategy_for("single", model, objective, None, device)
    else:
        context = objective.setup(model, config, train_set, eval_set)  # may attach a head (classify, reward)
        strategy = strategy_for(strategy_name, model, objective, context, device)  # FSDP shards the model here
    trainable, total = count_parameters(model)
    say(f"model: {config.model.name} on {device.type}; method {config.method.name}: "
        f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)")
    optimizer = build_optimizer(model, cfg)
    strategy.attach(optimizer, config)  # DeepSpeed: its engine takes over backward, clipping and the optimizer step
    if not online:
        plan = StepPlan.build(len(train_set.examples), per_process_batch(cfg, distributed.world()[1]), cfg.grad_accum,
                              distributed.world()[1], cfg.epochs, cfg.max_steps, mixture,
                              example_lengths(train_set.examples) if config.data.group_by_length else None)
        steps = OfflineSteps(objective, context, strategy, train_set, eval_set, plan, config, device, autocast,
                             tokenizer.pad_token_id)
    warmup_steps = math.ceil(cfg.warmup * steps.optimizer_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, steps.optimizer_steps, warmup_steps, cfg.schedule)
    )
    state = start.restore(model, optimizer, scheduler, restore=strategy.restore(optimizer))
    steps.restore(state.extra)
    if start.checkpoint is not None:
        say(f"resumed from {start.checkpoint} at step {state.step} of {steps.total_steps}")
    if resume and distributed.is_main():  # the only writer: another rank reading mid-rewrite would keep nothing
        run.truncate_metrics(state.step)
    return Setup(config, run, device, precision, dtype, tokenizer, model, resolved.path, steps, strategy, optimizer,
                 scheduler, state, trainable, total, eval_records, None if online else data_stats,
                 None if online else mixture)


def _prepare_examples(objective, train_records, eval_records, tokenizer, config: RunConfig, data_stats: DataStats):
    train_set = objective.prepare(train_records, tokenizer, config.data, data_stats)
    eval_set = objective.prepare(eval_records, tokenizer, config.data, None) if eval_records else None
    summarize_preparation(data_stats, config.data)
    return train_set, eval_set


def _describe_examples(train_set, data_stats: DataStats) -> None:
    if len(train_set.examples) == 0:
        raise WhetstoneError(
            f"data.train: no usable training examples ({data_stats.records} records read, "
            f"{data_stats.dropped_no_labels} dropped by truncation). Raise data.max_length or check the data "
            f"with `whetstone data check`."
        )
    say(f"data: {data_stats.records} training records ({data_stats.explanation}), "
        f"{data_stats.eval_records} eval records")
    for note in data_stats.notes:
        say(f"data: {note}")


# ---------------------------------------------------------------------------
# The loop.


def fit(
    config: RunConfig | None,
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
    """Run (or resume) one training run of any objective; return the summary that is also written to summary.json.

    `accept_changes`: resume even though the data, base model or batch-shaping config changed (train/resume.py).
    `trust_remote_code`, `allow_pickle`: what a resumed run's model may do. The run's own config.yaml asking is
    not enough (models/load.py run_model_config); a new run's config is the caller's own and says it there.
    """
    t_start = time.perf_counter()
    grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    s = set_up(config, run_dir, resume, overwrite, accept_changes, grants)
    stopped_early = train_steps(s, progress, on_step, t_start)
    summary = save(s, stopped_early, t_start)
    distributed.shutdown()
    return summary


def train_steps(s: Setup, progress: bool, on_step: StepCallback | None, t_start: float) -> bool:
    """Steps until the last one (or a stop request); True when the run stopped early."""
    cfg, steps, state, run = s.config.train, s.steps, s.state, s.run
    optimizer_step = OptimizerSteps(s.strategy, s.optimizer, s.scheduler, cfg, state, run)
    s.model.train(steps.train_mode)  # online rounds run in eval mode (objectives/online.py)
    if steps.eval_before_training and s.config.eval.before and steps.can_evaluate and state.step == 0:
        before = steps.evaluate()  # the held-out figures before any update, as step 0
        if distributed.is_main():
            run.append_metrics({"step": 0, **before})
        say("before training: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items() if v is not None))
    window = LogWindow()
    bar = tqdm(total=steps.total_steps, initial=state.step, unit="step", dynamic_ncols=True,
               disable=not progress or not distributed.is_main(), file=sys.stderr)
    with StopSignal() as stop:
        while state.step < steps.total_steps:
            out = steps.step(state.step, optimizer_step)
            state.step += 1
            state.tokens += out.tokens
            state.tokens_read += out.tokens_read
            state.supervised_tokens += out.supervised_tokens
            state.train_seconds += out.seconds
            state.extra.update(out.extra)
            window.add(out)
            bar.update(1)
            bar.set_postfix(loss=f"{window.loss:.4f}", tok_s=f"{window.tokens_per_s:.0f}")

            out_of_time = cfg.max_minutes is not None and distributed.any_across(
                state.train_seconds >= 60 * cfg.max_minutes)  # every process stops at the same step
            done = state.step == steps.total_steps or out_of_time
            do_eval = steps.can_evaluate and (state.step % s.config.eval.every == 0 or done)
            row = {}
            if state.step % cfg.log_every == 0 or do_eval or done or steps.logs_every_step:
                row = _log_row(s, window, out, t_start) | (steps.evaluate() if do_eval else {})
                if distributed.is_main():
                    run.append_metrics(row)
                window = LogWindow()
            wants_stop = distributed.any_across(stop.requested or (on_step is not None and on_step(state.step, row)))
            if state.step % cfg.checkpoint_every == 0 or done or wants_stop:
                full_state = s.strategy.gather_state(s.optimizer)  # FSDP: every process joins the gather
                if distributed.is_main():
                    save_checkpoint(run.checkpoints, s.model, s.optimizer, s.scheduler, state, cfg.keep_checkpoints,
                                    full_state)
            if wants_stop and not done:
                bar.close()
                return True
            if out_of_time:
                say(f"train.max_minutes: {cfg.max_minutes:g} minutes of training reached at step {state.step} of "
                    f"{steps.total_steps}")
                break
    bar.close()
    return False


def _log_row(s: Setup, window: LogWindow, out: StepOutput, t_start: float) -> dict:
    """The metrics.jsonl row of the window that ends at this step."""
    steps = s.steps
    row = {"step": s.state.step}
    if steps.steps_per_epoch is not None:
        row["epoch"] = round(s.state.step / steps.steps_per_epoch, 4)
    row |= {"loss": round(window.loss, 6), "lr": out.lr}
    if out.grad_norm is not None:
        row["grad_norm"] = round(out.grad_norm, 6)
    row |= {"tokens": s.state.tokens, "tokens_per_s": round(window.tokens_per_s, 2),
            "elapsed_s": round(time.perf_counter() - t_start, 3)}
    row |= window.means()
    if isinstance(steps, OfflineSteps):
        row |= steps.task_losses(window)
    return row | out.entries


# ---------------------------------------------------------------------------
# Save.


def save(s: Setup, stopped_early: bool, t_start: float) -> dict:
    """Weights, the end-of-training evaluation and summary.json; returns the summary."""
    config, run = s.config, s.run
    # Weights first: a failure in the end-of-training evaluation must not cost the trained model.
    final, interpolated = {}, {}
    s.steps.finish()
    if not stopped_early and config.method.interpolate != 1.0:
        interpolate_toward_base(s.model, config.method.interpolate)
        say(f"method.interpolate: kept {100 * config.method.interpolate:g}% of the adapter's change")
        if s.steps.can_evaluate:  # the dev figures of the model that is saved, not of the one before the step back
            interpolated = s.steps.evaluate()
    full_weights = None if stopped_early else s.strategy.gather_weights(is_adapter_model(s.model))  # FSDP: collective
    if distributed.is_main() and not stopped_early:
        save_weights(s.model, s.tokenizer, run, s.base_path, full_weights)
        # End-of-training metrics, forgetting probe and canaries, as far as config.eval and data.canaries ask.
        final = final_evaluation(s.model, s.tokenizer, config, run.path, s.eval_records)
    summary = _summary(s, stopped_early, t_start) | final
    summary |= precision_entries(s.precision, s.dtype)
    if interpolated:
        summary |= {"eval_loss_before_interpolation": summary["eval_loss"]} | interpolated
    if distributed.is_main():
        run.write_json(RunDir.SUMMARY, summary)
        run.finish(summary)  # report.html is written; trackers get the summary and close
    if stopped_early:
        say(f"stopped at step {s.state.step} of {s.steps.total_steps}; continue with: whetstone train --resume "
            f"{run.path}")
    else:
        shown = [f"{key.replace('_', ' ')} {summary[key]}" for key in ("train_loss", "eval_loss", "eval_reward")
                 if summary.get(key) is not None]
        say(f"done: {run.path} ({', '.join(shown)})")
    return summary


def save_weights(model, tokenizer, run: RunDirectory, base_path: str, state_dict: dict | None = None) -> None:
    """The adapter (run.adapter_dir) or the full model (run.model_dir), with the tokenizer beside it.

    `state_dict`: the full weights gathered from FSDP shards; by default save_pretrained reads the model.
    """
    extra = {} if state_dict is None else {"state_dict": state_dict}
    if is_adapter_model(model):
        # Point the adapter at a base that plain peft can load on this machine.
        for peft_config in model.peft_config.values():
            peft_config.base_model_name_or_path = base_path
        model.save_pretrained(run.adapter_dir, **extra)
        tokenizer.save_pretrained(run.adapter_dir)
    else:
        model.save_pretrained(run.model_dir, safe_serialization=True, **extra)
        tokenizer.save_pretrained(run.model_dir)


def _nonfinite_error(step: int, loss_sum: float, grad_norm: float, origins: list[str], run) -> WhetstoneError:
    last = latest_checkpoint(run.checkpoints)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
    return WhetstoneError(
        f"step {step}: the loss ({loss_sum}) or the gradient norm ({grad_norm}) is not finite, so the run stopped "
        f"before applying it; {kept}. The step's records: {', '.join(origins[:16])}"
        f"{' ...' if len(origins) > 16 else ''}. Lower train.lr, check those records, or set "
        f"train.skip_nonfinite: true to skip such steps and count them."
    )


def _summary(s: Setup, stopped_early: bool, t_start: float) -> dict:
    state, rows = s.state, s.run.read_metrics()
    losses = [r for r in rows if "loss" in r]
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    last_eval = {k: v for k, v in evals[-1].items() if k.startswith("eval_")} if evals else {}
    summary = {
        "train_loss": losses[-1]["loss"] if losses else None,
        "eval_loss": last_eval.get("eval_loss"),
        "eval_ppl": last_eval.get("eval_ppl"),
        **last_eval,
        "steps": state.step,
        "total_steps": s.steps.total_steps,
        "stopped_early": stopped_early,
        "time_budget_reached": (s.config.train.max_minutes is not None and not stopped_early
                                and state.step < s.steps.total_steps),
        "tokens": state.tokens,
        "supervised_tokens": state.supervised_tokens,
        "tokens_read": state.tokens_read,
        "skipped_steps": state.skipped_steps,
        "accepted_changes": state.accepted_changes,  # what --accept-changes let a resume continue on
        "tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 2),
        "train_s": round(state.train_seconds, 3),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "peak_memory_mb": round(peak_memory_mb(s.device), 1),
        "trainable_params": s.trainable,
        "total_params": s.total,
        "trainable_pct": round(100 * s.trainable / s.total, 4),
        "method": s.config.method.name,
        "objective": s.config.objective.name,
        "device": s.device.type,
    }
    if s.steps.eval_before_training and evals and evals[0]["step"] == 0:
        summary |= {f"{k}_before": v for k, v in evals[0].items() if k.startswith("eval_")}
    if s.data_stats is not None:
        d = s.data_stats
        summary["data"] = {"format": d.format, "records": d.records, "eval_records": d.eval_records,
                           "skipped_invalid": d.skipped_invalid, "truncated": d.truncated,
                           "dropped_no_labels": d.dropped_no_labels}
        if s.mixture is not None:
            summary["data"]["mixture"] = s.mixture.describe()
    return summary
