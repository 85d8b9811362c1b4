"""Experiment trackers: TensorBoard, MLflow and Weights & Biases, fed from metrics.jsonl's stream.

Each tracker is a thin adapter with three calls: open (with the resolved config as
hyperparameters), log (one metrics.jsonl row), finish (summary.json). RunDirectory
calls them, so a tracker sees exactly the rows written to metrics.jsonl, and
metrics.jsonl stays the source of truth. A tracker's package is imported only when
`log.to` names it; a missing one is a one-sentence error before training starts.

A resumed run continues the same tracker run: the MLflow run id and the W&B run id
are kept in RUN_DIR/trackers.json.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from whetstone.errors import WhetstoneError
from whetstone.rundir import RunDir

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # tracker -> module it needs


def _require(tracker: str):
    try:
        return importlib.import_module(PACKAGES[tracker])
    except ImportError:
        raise WhetstoneError(
            f"log.to: {tracker!r} needs the Python package {PACKAGES[tracker]!r}, which is not installed. "
            f"Install it (`pip install {PACKAGES[tracker]}`{' or mlflow-skinny' if tracker == 'mlflow' else ''}) "
            f"or remove {tracker!r} from log.to."
        ) from None


def _scalars(row: dict) -> dict[str, float]:
    """The numeric fields of a metrics row, except `step`, which is the x axis."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, type(None))) else str(value)
    return flat


class TensorBoardTracker:
    """Event files in RUN_DIR/tensorboard (or log.tensorboard_dir): `tensorboard --logdir` reads them."""

    def __init__(self, log_dir: Path, config: dict):
        _require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in _flatten(config).items()), 0)

    def log(self, row: dict) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key.replace("eval_", "eval/", 1) if key.startswith("eval_") else f"train/{key}",
                                   value, row["step"])
        self.writer.flush()  # a crash keeps every logged step

    def finish(self, summary: dict) -> None:
        self.writer.close()


class MLflowTracker:
    """An MLflow run under experiment log.project, at log.mlflow_uri (else MLflow's own default)."""

    def __init__(self, uri: str | None, experiment: str, run_name: str, config: dict, run_id: str | None):
        _require("mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run = self.client.create_run(experiment_id, run_name=run_name)
            self.run_id = run.info.run_id
            # MLflow caps a param value at 6000 characters and a batch at 100 params.
            params = [Param(k, v[:6000]) for k, v in _flatten(config).items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[start : start + 100])
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")

    def log(self, row: dict) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(row["step"])) for k, v in _scalars(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict) -> None:
        from mlflow.entities import Metric

        final = [Metric(f"final.{k}", float(v), 0, int(summary.get("steps", 0)))
                 for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if final:
            self.client.log_batch(self.run_id, metrics=final)
        self.client.set_terminated(self.run_id, status="KILLED" if summary.get("stopped_early") else "FINISHED")


class WandbTracker:
    """A W&B run in project log.project; log.wandb_mode offline writes RUN_DIR/wandb for a later `wandb sync`."""

    def __init__(self, run_dir: Path, project: str, run_name: str, mode: str, config: dict, run_id: str | None):
        wandb = _require("wandb")
        self.run = wandb.init(project=project, name=run_name, dir=str(run_dir), mode=mode, config=config,
                              id=run_id, resume="allow" if run_id else None, reinit="create_new")
        self.run_id = self.run.id

    def log(self, row: dict) -> None:
        self.run.log(_scalars(row), step=int(row["step"]))

    def finish(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})
        self.run.finish(exit_code=1 if summary.get("stopped_early") else 0)


class Trackers:
    """Every configured tracker, fed the same rows."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, row: dict) -> None:
        for tracker in self.trackers:
            tracker.log(row)

    def finish(self, summary: dict) -> None:
        for tracker in self.trackers:
            tracker.finish(summary)
        self.trackers = []


def open_trackers(log_cfg, run_dir: Path, config: dict) -> Trackers:
    """Start every tracker in log_cfg.to (a LogConfig); reuse the tracker run ids of a resumed run."""
    if not log_cfg.to:
        return Trackers([])
    state_path = RunDir(run_dir).file(RunDir.TRACKERS)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    name = log_cfg.run_name or run_dir.resolve().name
    trackers = []
    for kind in log_cfg.to:
        if kind == "tensorboard":
            trackers.append(TensorBoardTracker(Path(log_cfg.tensorboard_dir or RunDir(run_dir).file(RunDir.TENSORBOARD)), config))
        elif kind == "mlflow":
            trackers.append(MLflowTracker(log_cfg.mlflow_uri, log_cfg.project, name, config, state.get("mlflow")))
            state["mlflow"] = trackers[-1].run_id
        elif kind == "wandb":
            trackers.append(WandbTracker(run_dir, log_cfg.project, name, log_cfg.wandb_mode, config,
                                         state.get("wandb")))
            state["wandb"] = trackers[-1].run_id
    if state:
        state_path.write_text(json.dumps(state, indent=2) + "\n")
    return Trackers(trackers)
