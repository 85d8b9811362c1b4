"""Where a run starts: step 0 for a new run; for `--resume`, a checkpoint it can prove belongs to it.

`--resume` continues from the checkpoint `checkpoints/latest` names, or from the newest complete
one when that pointer is lost. Without a complete checkpoint it starts again from step 0, and says
so, only when the run stopped before its first checkpoint; when step directories are there but
broken, or metrics.jsonl shows that a checkpoint was written, it refuses rather than start again
and cut metrics.jsonl. And it refuses when the data, the base model or the batch-shaping config
differ from what the checkpoint recorded (train/fingerprint.py), unless `--accept-changes` says
to go on; the run then records what it accepted (summary.json `accepted_changes`, carried by
every later checkpoint).

Both loops (loop.py, online.py) start through `starting_point` and `Start.restore`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from whetstone.config import RunConfig
from whetstone.errors import WhetstoneError
from whetstone.rundir import RunDir, resolve_paths
from whetstone.train import distributed
from whetstone.train.checkpoint import (
    CHECKPOINT_FILES,
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    pointed_checkpoint,
    step_directories,
)
from whetstone.train.fingerprint import fingerprint_changes, resolved_fingerprint, run_fingerprint
from whetstone.train.run_dir import RunDirectory


@dataclass
class Start:
    checkpoint: Path | None  # None: step 0
    fingerprint: dict  # of this run's inputs now
    accepted: list[dict] = field(default_factory=list)  # changes this resume accepts ({"step", "changes"})

    def restore(self, model, optimizer, scheduler, restore=None) -> TrainState:
        """The state to train on from: the checkpoint's, loaded into model, optimizer and scheduler; or a fresh one."""
        state = TrainState()
        if self.checkpoint is not None:
            state = load_checkpoint(self.checkpoint, model, optimizer, scheduler, restore=restore)
        state.fingerprint = self.fingerprint  # later checkpoints record the inputs they trained on
        state.accepted_changes = state.accepted_changes + self.accepted
        return state


def starting_point(run: RunDirectory, config: RunConfig, resume: bool, accept_changes: bool = False) -> Start:
    """Where this run starts. Raises a WhetstoneError when `--resume` cannot continue it as the same run."""
    fingerprint = run_fingerprint(config)
    if not resume:
        return Start(None, fingerprint)
    checkpoint = latest_checkpoint(run.checkpoints)
    if checkpoint is None:
        _check_restart(run, config.train.checkpoint_every)
        return Start(None, fingerprint)
    if checkpoint.name != pointed_checkpoint(run.checkpoints):
        _say(f"warning: {run.checkpoints / 'latest'} is missing, unreadable or names an incomplete checkpoint; "
             f"resuming from the newest complete one, {checkpoint.name}", sys.stderr)
    recorded = json.loads((checkpoint / "state.json").read_bytes())["train_state"]
    if not recorded.get("fingerprint"):
        _say(f"{checkpoint.name} was written before checkpoints recorded their inputs; they are not checked")
        return Start(checkpoint, fingerprint)
    changes = fingerprint_changes(_as_read_back(recorded["fingerprint"], run), fingerprint)
    if not changes:
        return Start(checkpoint, fingerprint)
    listed = "; ".join(line for lines in changes.values() for line in lines)
    if not accept_changes:
        what = " and ".join(_GROUP_NAMES[group] for group in changes)
        raise WhetstoneError(
            f"--resume {run.path}: the {what} changed since {checkpoint.name} was written: {listed}. Resuming "
            f"would continue this run's optimizer state and data order on different inputs. Put the originals "
            f"back, or, to continue on the changed inputs on purpose, run "
            f"`whetstone train --resume {run.path} --accept-changes`; the run then records what it accepted."
        )
    _say(f"--accept-changes: resuming {run.path} from {checkpoint.name} on changed inputs: {listed}")
    return Start(checkpoint, fingerprint, [{"step": int(recorded["step"]), "changes": changes}])


def _as_read_back(recorded: dict, run: RunDirectory) -> dict:
    """The checkpoint's fingerprint with its relative paths resolved as the run's config is read back
    (RunDir.raw_config): an unchanged run resumed from another directory compares equal."""
    workdir = RunDir(run.path).workdir
    return recorded if workdir is None else resolved_fingerprint(recorded, lambda tree: resolve_paths(tree, workdir))


_GROUP_NAMES = {"data": "training data", "model": "base model", "config": "batch-shaping config"}


def _check_restart(run: RunDirectory, checkpoint_every: int) -> None:
    """No complete checkpoint: start again from step 0 only when no checkpoint can have been written yet."""
    steps = step_directories(run.checkpoints) if run.checkpoints.is_dir() else []
    if steps:
        lacking = "; ".join(f"{p.name} {_what_is_missing(p)}" for p in steps)
        raise WhetstoneError(
            f"--resume {run.path}: none of its {len(steps)} checkpoints is complete ({lacking}), so it cannot "
            f"continue. Nothing was changed. Start it again from step 0 in a new directory: "
            f"`whetstone train {run.config_path} -o NEW_DIR`."
        )
    logged = max((row.get("step", 0) for row in run.read_metrics()), default=0)
    # The loop logs step s before it checkpoints step s, so a crash can leave the row of a checkpoint
    # step without its checkpoint; a row after the first checkpoint step proves that one was written.
    if logged > checkpoint_every:
        raise WhetstoneError(
            f"--resume {run.path}: metrics.jsonl logged steps up to {logged}, so the checkpoint of step "
            f"{checkpoint_every} (train.checkpoint_every) was written, but {run.checkpoints} holds none now; resuming "
            f"would start again from step 0 and drop those steps. Nothing was changed. Put the checkpoints back, or "
            f"start again in a new directory: `whetstone train {run.config_path} -o NEW_DIR`."
        )
    if logged:
        _say(f"{run.path} stopped before its first checkpoint (step {checkpoint_every}); starting again from step 0, "
             f"so the rows of metrics.jsonl up to step {logged} are logged again")
    else:
        _say(f"{run.path} has no checkpoint and no logged step yet; starting from step 0")


def _what_is_missing(path: Path) -> str:
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    return f"lacks {', '.join(missing)}" if missing else "has an unreadable state.json"


def _say(message: str, file=None) -> None:
    if distributed.is_main():
        print(message, file=file or sys.stdout, flush=True)
