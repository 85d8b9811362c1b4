"""`whetstone train`: a config with `stages:` is a pipeline of runs (stages.py); any other is one run (loop.py)."""

from __future__ import annotations

from pathlib import Path

from whetstone.config import RunConfig
from whetstone.rundir import RunDir
from whetstone.train.loop import StepCallback, fit
from whetstone.train.stages import run_pipeline


def train(config: RunConfig | None, run_dir: str | Path | None = None, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True, on_step: StepCallback | None = None,
          accept_changes: bool = False, trust_remote_code: bool = False, allow_pickle: bool = False) -> dict:
    """Run (or resume) a training run or a pipeline; return the summary that is also written to summary.json.

    For --resume (`config` None), the run directory's own config decides which. The arguments are those of
    loop.fit; the grants are what a resumed run's model may do.
    """
    options = {"resume": resume, "overwrite": overwrite, "progress": progress, "on_step": on_step,
               "accept_changes": accept_changes, "trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    if _is_pipeline(config, run_dir, resume):
        return run_pipeline(config, run_dir, **options)
    return fit(config, run_dir, **options)


def _is_pipeline(config: RunConfig | None, run_dir, resume: bool) -> bool:
    if resume:  # a directory that is not a run: the single-run loop says so
        return RunDir(run_dir).is_pipeline()
    return bool(config is not None and config.stages)
