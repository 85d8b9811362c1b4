"""The run directory: config.yaml, metrics.jsonl, summary.json, weights, checkpoints.

    runs/r1/
      config.yaml      the resolved config (what --resume reads back)
      metrics.jsonl    one JSON object per logged step
      summary.json     final figures
      adapter/         PEFT adapter (lora, dora, qlora)   | model/  HF safetensors (full, freeze)
      checkpoints/     resumable state, newest last; `latest` names the newest
      report.html      the run's report (written by `finish`)

Every metrics row also goes to the trackers in `log.to` (train/trackers.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from whetstone.config import RunConfig, config_from_dict, dump_config, read_yaml
from whetstone.errors import WhetstoneError


class RunDirectory:
    def __init__(self, path: Path):
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.metrics_path = path / "metrics.jsonl"
        self._trackers = None  # opened by create(), or on the first row of a resumed run

    @classmethod
    def create(cls, path: str | Path, config: RunConfig, overwrite: bool = False) -> "RunDirectory":
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise WhetstoneError(
                    f"run directory {path} already exists. Pass --overwrite to replace it, "
                    f"--resume {path} to continue it, or choose another -o."
                )
            if not (path / "config.yaml").is_file():
                raise WhetstoneError(
                    f"--overwrite refused: {path} is not a whetstone run directory (no config.yaml), so it is not "
                    f"deleted. Choose an empty or new directory."
                )
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        (path / "config.yaml").write_text(dump_config(config))
        run._open_trackers(config)  # a missing tracker package fails now, not after the first steps
        return run

    @classmethod
    def open(cls, path: str | Path) -> tuple["RunDirectory", RunConfig]:
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise WhetstoneError(f"--resume {path}: not a run directory (no config.yaml in it).")
        config = config_from_dict(read_yaml(path / "config.yaml"), str(path / "config.yaml"))
        return cls(path), config

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
                config = config_from_dict(read_yaml(self.path / "config.yaml"), str(self.path / "config.yaml"))
            self._trackers = open_trackers(config.log, self.path, config.to_dict())
        return self._trackers

    def truncate_metrics(self, after_step: int) -> None:
        """Drop rows logged after the checkpoint we resume from: they will be logged again.

        The kept rows replace the file in one rename, so a crash here leaves the old file, never an empty one.
        """
        if not self.metrics_path.is_file():
            return
        rows = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("step", 0) <= after_step]
        tmp = self.path / ".metrics.jsonl.tmp"
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def write_json(self, name: str, payload: dict) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, self.path / name)
