"""A run directory: the one place that knows the names of the files a run writes, and how to read them back.

    runs/r1/
      config.yaml      the resolved config (what --resume reads back)
      metrics.jsonl    one JSON object per logged step
      summary.json     final figures
      samples.jsonl    a few answers of the trained model (report/samples.py)
      augment.json     what data.augment trained on instead of data.train (data/augment.py)
      adapter/         PEFT adapter (lora, dora, qlora)   | model/  HF safetensors (full, freeze)
      checkpoints/     resumable state, newest last; `latest` names the newest
      report.html      the run's report
      stages/          a pipeline's stage runs, each a run directory (stages.json, stages.md, lineage.json)
      .whetstone-run   says whetstone created it, and in which working directory (whetstone/overwrite.py)

A config names its files (data, reward functions, a reward run) relative to the directory `train` ran in.
The marker records that directory, so `raw_config()` reads them back the same from anywhere.
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


class RunDir:
    """A run directory on disk: its paths, and its config, summary and metrics as read back."""

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    SAMPLES = "samples.jsonl"
    REPORT = "report.html"
    TRACKERS = "trackers.json"
    CANARIES = "canaries.json"
    KNOWLEDGE = "knowledge.json"
    AUGMENT = "augment.json"
    LABELS = "labels.json"
    STAGES_JSON = "stages.json"
    STAGES_MD = "stages.md"
    LINEAGE = "lineage.json"
    MARKER = ".whetstone-run"
    CHECKPOINTS = "checkpoints"
    ADAPTER = "adapter"
    MODEL = "model"
    MERGED = "merged"
    STAGES = "stages"
    EXPORT = "export"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def samples_path(self) -> Path:
        return self.path / self.SAMPLES

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    @property
    def marker_path(self) -> Path:
        return self.path / self.MARKER

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def adapter_dir(self) -> Path:
        return self.path / self.ADAPTER

    @property
    def model_dir(self) -> Path:
        return self.path / self.MODEL

    @property
    def merged_dir(self) -> Path:
        return self.path / self.MERGED

    @property
    def stages_dir(self) -> Path:
        return self.path / self.STAGES

    @property
    def weights_dir(self) -> Path:
        """adapter/ when the run trained an adapter (it holds adapter_config.json), else model/."""
        return self.adapter_dir if self.has_adapter() else self.model_dir

    def has_adapter(self) -> bool:
        """A finished adapter run: adapter/adapter_config.json is there."""
        return (self.adapter_dir / "adapter_config.json").is_file()

    def has_model(self) -> bool:
        """A finished full or freeze run: model/config.json is there."""
        return (self.model_dir / "config.json").is_file()

    # ------------------------------------------------------------------
    # Creating and opening.

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether `path` is a run directory: it holds config.yaml."""
        return (Path(path) / RunDir.CONFIG).is_file()

    @classmethod
    def open(cls, path: str | Path, flag: str = "--run") -> RunDir:
        """The run at `path`; a WhetstoneError naming `flag` (the option that named it) when it is not one."""
        if not cls.is_run(path):
            where = f"{flag} {path}" if flag else str(path)
            raise WhetstoneError(f"{where}: not a run directory (no {cls.CONFIG} in it); name a directory that "
                                 f"`whetstone train -o` wrote.")
        return cls(path)

    @classmethod
    def create(cls, target: str | Path, config: RunConfig, overwrite: bool) -> RunDir:
        """A new run (or pipeline) directory holding config.yaml; with `overwrite`, replacing an old run.

        The marker records the working directory, which the config's relative paths are relative to.
        """
        path = Path(target)
        if check_replaceable(path, RUN, overwrite):
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        write_marker(path, RUN, workdir=str(Path.cwd().resolve()))
        run = cls(path)
        run.config_path.write_text(dump_config(config))
        return run

    @property
    def workdir(self) -> Path | None:
        """The working directory the run was created in (None: not recorded, a run from before it was)."""
        try:
            recorded = json.loads(self.marker_path.read_text()).get("workdir")
        except (OSError, ValueError, AttributeError):
            return None
        return Path(recorded) if isinstance(recorded, str) and recorded else None

    # ------------------------------------------------------------------
    # Reading back.

    def raw_config(self) -> dict:
        """config.yaml as a dict, its relative paths resolved against the run's working directory (resolve_paths)."""
        raw = read_yaml(self.config_path)
        workdir = self.workdir
        return raw if workdir is None else resolve_paths(raw, workdir)

    def config(self, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> RunConfig:
        """The run's validated config, whose model gets only the powers the caller grants (run_model_config)."""
        from whetstone.models.load import run_model_config

        config = config_from_dict(self.raw_config(), str(self.config_path))
        config.model = run_model_config(config.model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                                        source=self.config_path)
        return config

    def is_pipeline(self) -> bool:
        """A pipeline directory: its config has stages (a stage's own config says `stages: []`)."""
        return self.is_run(self.path) and bool(read_yaml(self.config_path).get("stages"))

    def summary(self) -> dict | None:
        """summary.json, or None before the run wrote it."""
        return json.loads(self.summary_path.read_text()) if self.summary_path.is_file() else None

    def metrics(self) -> list[dict]:
        """The rows of metrics.jsonl (a line cut by a crash is dropped, with a warning); [] before the first."""
        return read_jsonl(self.metrics_path)

    def samples(self) -> list[dict]:
        """The rows of samples.jsonl; [] when there is none."""
        return read_jsonl(self.samples_path)

    def read_json(self, name: str) -> dict | None:
        """The JSON file `name` of the run, or None when it is absent."""
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_json(self, name: str, payload: dict) -> Path:
        """Write `name` in one rename: a crash leaves the old file, never half of the new one."""
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, self.path / name)
        return self.path / name


# What `train --overwrite` may replace: a run or pipeline directory (whetstone/overwrite.py), with what
# train, eval, report, classify and export put at its top level.
RUN = DirectoryKind(
    "run directory", RunDir.MARKER,
    entries=(RunDir.MARKER, ".*.tmp", RunDir.CONFIG, RunDir.METRICS, RunDir.SUMMARY, RunDir.ADAPTER, RunDir.MODEL,
             RunDir.CHECKPOINTS, RunDir.REPORT, RunDir.SAMPLES, RunDir.TRACKERS, RunDir.TENSORBOARD, RunDir.WANDB,
             RunDir.CANARIES, RunDir.KNOWLEDGE, RunDir.LABELS, RunDir.EXPORT, RunDir.STAGES, RunDir.STAGES_JSON,
             RunDir.STAGES_MD, RunDir.LINEAGE, RunDir.MERGED),
    legacy=lambda path: RunDir.is_run(path) and any(
        (path / name).exists() for name in (RunDir.METRICS, RunDir.CHECKPOINTS, RunDir.SUMMARY, RunDir.STAGES)),
    hint=", --resume {path} to continue it",
)


def resolve_paths(tree, workdir: str | Path):
    """`tree` (a YAML tree) with each relative path that exists under `workdir` made absolute.

    A string counts as a path when it holds "/" or "." and names something under `workdir`; for a
    "file.py:function" reference, the part before the last ":". A hub id ("Org/Model") names
    nothing on disk, so it stays as it is, and so does a path that no longer exists.
    """
    if isinstance(tree, dict):
        return {key: resolve_paths(value, workdir) for key, value in tree.items()}
    if isinstance(tree, list):
        return [resolve_paths(value, workdir) for value in tree]
    if isinstance(tree, str):
        return _resolved_path(tree, Path(workdir))
    return tree


def _resolved_path(text: str, workdir: Path) -> str:
    if "/" not in text and "." not in text:
        return text
    if _names_relative(text, workdir):
        return str(workdir / text)
    path, colon, reference = text.rpartition(":")
    if colon and path and _names_relative(path, workdir):
        return f"{workdir / path}:{reference}"
    return text


def _names_relative(text: str, workdir: Path) -> bool:
    path = Path(text)
    return not path.is_absolute() and not text.startswith("~") and (workdir / path).exists()


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


def truncate_jsonl(path: Path, after_step: int) -> None:
    """Keep the rows of `path` up to `after_step`, replacing the file in one rename: a crash here leaves the
    old file, never an empty one."""
    if not path.is_file():
        return
    kept = [line for line, row in _jsonl_lines(path) if row.get("step", 0) <= after_step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in kept))
    os.replace(tmp, path)
