"""The run directory as the training loop writes it: config.yaml at the start, metrics rows as it goes,
summary.json and report.html at the end. The names of its files live in whetstone/rundir.py.

Every metrics row also goes to the trackers in `log.to` (train/trackers.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from whetstone.config import RunConfig, config_from_dict
from whetstone.rundir import RunDir, truncate_jsonl


def create_run_directory(target: str | Path, config: RunConfig, overwrite: bool) -> Path:
    """A new run (or pipeline) directory holding config.yaml; with `overwrite`, replacing an old run."""
    return RunDir.create(target, config, overwrite).path


class RunDirectory:
    """The writer of one run: `dir` is the RunDir it writes, whose paths it passes on."""

    def __init__(self, path: str | Path):
        self.dir = RunDir(path)
        self.path = self.dir.path
        self.checkpoints = self.dir.checkpoints
        self.metrics_path = self.dir.metrics_path
        self._trackers = None  # opened by create(), or on the first row of a resumed run

    @property
    def config_path(self) -> Path:
        return self.dir.config_path

    @property
    def summary_path(self) -> Path:
        return self.dir.summary_path

    @property
    def adapter_dir(self) -> Path:
        return self.dir.adapter_dir

    @property
    def model_dir(self) -> Path:
        return self.dir.model_dir

    @property
    def stages_dir(self) -> Path:
        return self.dir.stages_dir

    @classmethod
    def create(cls, path: str | Path, config: RunConfig, overwrite: bool = False) -> RunDirectory:
        run = cls(RunDir.create(path, config, overwrite).path)
        run._open_trackers(config)  # a missing tracker package fails now, not after the first steps
        return run

    @classmethod
    def open(cls, path: str | Path, *, trust_remote_code: bool = False,
             allow_pickle: bool = False) -> tuple[RunDirectory, RunConfig]:
        """An existing run and its config, whose model gets only the powers the caller grants (run_model_config)."""
        found = RunDir.open(path, flag="--resume")
        return cls(found.path), found.config(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        self._open_trackers().log(row)

    def finish(self, summary: dict) -> None:
        """The run ended (summary.json is written): write report.html, then close the trackers."""
        from whetstone.report import write_report

        write_report(self.path)  # first: it is local, and must not depend on a tracker's server
        self._open_trackers().finish(summary)

    def _open_trackers(self, config: RunConfig | None = None):
        if self._trackers is None:
            from whetstone.train.trackers import open_trackers

            if config is None:
                config = config_from_dict(self.dir.raw_config(), str(self.dir.config_path))
            self._trackers = open_trackers(config.log, self.path, config.to_dict())
        return self._trackers

    def truncate_metrics(self, after_step: int) -> None:
        """Drop rows logged after the checkpoint we resume from: they will be logged again."""
        truncate_jsonl(self.metrics_path, after_step)

    def read_metrics(self) -> list[dict]:
        return self.dir.metrics()

    def write_json(self, name: str, payload: dict) -> None:
        self.dir.write_json(name, payload)
