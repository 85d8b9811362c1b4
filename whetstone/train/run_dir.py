"""The run directory: config.yaml, metrics.jsonl, summary.json, weights, checkpoints.

    runs/r1/
      config.yaml      the resolved config (what --resume reads back)
      metrics.jsonl    one JSON object per logged step
      summary.json     final figures
      adapter/         PEFT adapter (lora, dora, qlora)   | model/  HF safetensors (full, freeze)
      checkpoints/     resumable state, newest last; `latest` names the newest
      report.html      the run's report (written by `finish`)
      .whetstone-run   says whetstone created it: what `train --overwrite` may replace (whetstone/overwrite.py)

Every metrics row also goes to the trackers in `log.to` (train/trackers.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from whetstone.config import RunConfig, config_from_dict, dump_config, read_yaml
from whetstone.errors import WhetstoneError
from whetstone.overwrite import DirectoryKind, check_replaceable, write_marker

# What `train --overwrite` may replace: a run or pipeline directory (whetstone/overwrite.py), with what
# train, eval, report, classify and export put at its top level.
RUN = DirectoryKind(
    "run directory", ".whetstone-run",
    entries=(".whetstone-run", ".*.tmp", "config.yaml", "metrics.jsonl", "summary.json", "adapter", "model",
             "checkpoints", "report.html", "samples.jsonl", "trackers.json", "tensorboard", "wandb",
             "canaries.json", "knowledge.json", "labels.json", "export", "stages", "stages.json", "stages.md",
             "lineage.json", "merged"),
    legacy=lambda path: (path / "config.yaml").is_file() and any(
        (path / name).exists() for name in ("metrics.jsonl", "checkpoints", "summary.json", "stages")),
    hint=", --resume {path} to continue it",
)


def create_run_directory(target: str | Path, config: RunConfig, overwrite: bool) -> Path:
    """A new run (or pipeline) directory holding config.yaml; with `overwrite`, replacing an old run."""
    path = Path(target)
    if check_replaceable(path, RUN, overwrite):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    write_marker(path, RUN)
    (path / "config.yaml").write_text(dump_config(config))
    return path


class RunDirectory:
    def __init__(self, path: Path):
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.metrics_path = path / "metrics.jsonl"
        self._trackers = None  # opened by create(), or on the first row of a resumed run

    @classmethod
    def create(cls, path: str | Path, config: RunConfig, overwrite: bool = False) -> "RunDirectory":
        path = create_run_directory(path, config, overwrite)
        run = cls(path)
        run._open_trackers(config)  # a missing tracker package fails now, not after the first steps
        return run

    @classmethod
    def open(cls, path: str | Path, *, trust_remote_code: bool = False,
             allow_pickle: bool = False) -> tuple["RunDirectory", RunConfig]:
        """An existing run and its config, whose model gets only the powers the caller grants (run_model_config)."""
        from whetstone.models.load import run_model_config

        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise WhetstoneError(f"--resume {path}: not a run directory (no config.yaml in it).")
        config = config_from_dict(read_yaml(path / "config.yaml"), str(path / "config.yaml"))
        config.model = run_model_config(config.model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                                        source=path / "config.yaml")
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
        kept = [line for line, row in _jsonl_lines(self.metrics_path) if row.get("step", 0) <= after_step]
        tmp = self.path / ".metrics.jsonl.tmp"
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def write_json(self, name: str, payload: dict) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, self.path / name)


def _jsonl_lines(path: Path) -> list[tuple[bytes, dict]]:
    """(line, row) for each JSON object line of `path`; a line that is not one is dropped, with a warning.

    A crash mid-append leaves a torn last line, and a power cut can leave a run of NUL bytes where the
    filesystem had grown the file but not yet written it: neither may stop a resume or a report.
    Bytes, not text: a cut can split a UTF-8 character.
    """
    out, dropped = [], []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:  # JSONDecodeError, or UnicodeDecodeError
                row = None
            if isinstance(row, dict):
                out.append((line, row))
            else:
                dropped.append(str(number))
    if dropped:
        print(f"warning: {path}: dropped unreadable line {', '.join(dropped)} (cut short by a crash?)",
              file=sys.stderr, flush=True)
    return out


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a .jsonl file the run writes (metrics.jsonl, samples.jsonl); [] when it is absent."""
    return [row for _, row in _jsonl_lines(path)] if path.is_file() else []
