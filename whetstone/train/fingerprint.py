"""What a run trains on, as a fingerprint that `--resume` compares before it continues.

Every checkpoint's state.json holds the fingerprint of the inputs it was trained on, in three groups:

    data    the SHA-256 of the bytes of every data file the config names (train, eval, replay);
            a hub dataset by its name (the config has no revision to pin it by)
    model   the base model: the embedded model's package version; a hub id's revision; for a
            local directory or .gguf file, each file that shapes the model (see `model_files`)
    config  the config fields that decide which examples make up each step

Each group is a flat {label: value} dict, so two fingerprints compare key by key and a change is
named by its label (a file, a config key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from whetstone.config import DataConfig, ModelConfig, RunConfig
from whetstone.models.embedded import EMBEDDED

# Files of a model directory hashed in full: small, and they change the model or its tokens.
_SMALL_SUFFIXES = (".json", ".model", ".txt", ".jinja", ".tiktoken")
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def data_files(cfg: DataConfig) -> list[tuple[str, str, str | None, float | None]]:
    """(role, path, task, weight) of every data source the config names: train, eval and replay."""
    sources = [] if isinstance(cfg.train, str) else cfg.train
    files = [("train", cfg.train, None, 1.0)] if isinstance(cfg.train, str) else []
    files += [("train", s.path, s.task, s.weight) for s in sources]
    files += [("eval", s.eval, s.task, None) for s in sources if s.eval]
    files += [("eval", cfg.eval, None, None)] if cfg.eval else []
    files += [("replay", path, "replay", cfg.replay.fraction) for path in (cfg.replay.paths if cfg.replay else [])]
    return files


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes, read in 1 MiB blocks; None when `path` is not a file (a hub dataset name)."""
    if not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_file_digest(path: Path) -> str:
    """A weight file's size, mtime and, for safetensors, its JSON header, hashed together.

    Not the tensors: reading GBs on every start and resume would cost minutes. Size and mtime
    change when a file is rewritten or replaced; the header (names, dtypes, shapes, offsets)
    changes with the architecture even where a copy kept the mtime (cp -p, rsync -t). A tensor
    edited in place with its mtime set back goes unnoticed: the price of not reading them.
    """
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}|{stat.st_mtime_ns}|".encode())
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            header_length = int.from_bytes(f.read(8), "little")  # the format's first 8 bytes: u64 LE
            digest.update(f.read(min(header_length, 100 << 20)))  # capped: a torn file must not read GBs
    return digest.hexdigest()


def model_files(directory: Path) -> dict[str, str]:
    """{file name: digest} of a model or adapter directory: weights by `weights_file_digest`,
    config and tokenizer files by their bytes; other files (README.md) do not change the model."""
    out = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        if path.suffix in _WEIGHT_SUFFIXES:
            out[path.name] = weights_file_digest(path)
        elif path.suffix in _SMALL_SUFFIXES:
            out[path.name] = file_sha256(path)
    return out


def _model_fingerprint(cfg: ModelConfig, base_adapters: list[str]) -> dict:
    name = cfg.name
    path = Path(name).expanduser()
    if name in EMBEDDED:
        package = EMBEDDED[name][0].replace("_", "-")
        try:
            out = {f"model {name}": f"{package} {metadata.version(package)}"}
        except metadata.PackageNotFoundError:
            out = {f"model {name}": f"{package} not installed"}
    elif name.endswith(".gguf") and path.is_file():
        out = {f"model {name}": weights_file_digest(path)}
    elif path.is_dir():
        out = {f"model {name}/{file}": digest for file, digest in model_files(path).items()}
    else:  # a hub id: without model.revision this is "the newest", which the fingerprint cannot pin
        out = {f"model {name}": f"revision {cfg.revision or 'unpinned'}"}
    for adapter in base_adapters:  # frozen adapters folded into the base (stages: stack)
        if Path(adapter).is_dir():
            out |= {f"adapter {adapter}/{file}": digest for file, digest in model_files(Path(adapter)).items()}
    return out


def _batch_fields(config: RunConfig) -> dict:
    """The config fields that decide which examples (and prompts, for ppo/grpo) each step takes.

    Not epochs or max_steps (they decide how many steps, not what is in one), and not the number
    of processes: with train.global_batch_size, a run may resume on fewer processes.
    """
    train, obj = config.train, config.objective
    fields = {f"data.{key}": value for key, value in dataclasses.asdict(config.data).items()}
    fields |= {f"train.{key}": getattr(train, key) for key in ("batch_size", "grad_accum", "global_batch_size", "seed")}
    fields |= {f"objective.{key}": getattr(obj, key) for key in ("rollout_batch_size", "num_generations",
                                                                 "max_new_tokens")}
    return json.loads(json.dumps(fields))  # as state.json will read it back (tuples become lists)


def run_fingerprint(config: RunConfig) -> dict:
    """{"data": {file: sha256}, "model": {file or name: digest}, "config": {key: value}} of this run's inputs."""
    return {
        "data": {f"data file {path}": file_sha256(path) or "hub dataset (not hashed)"
                 for _, path, _, _ in data_files(config.data)},
        "model": _model_fingerprint(config.model, config.method.base_adapters),
        "config": _batch_fields(config),
    }


# The labels that end in a path (a data file, a model directory's file, a frozen adapter's file).
_PATH_LABELS = ("data file ", "model ", "adapter ")


def resolved_fingerprint(fingerprint: dict, resolve: Callable) -> dict:
    """`fingerprint` with the paths in its labels and config values passed through `resolve`
    (rundir.resolve_paths): a checkpoint records them as the config spelled them, relative to
    the directory the run started in, and a resumed run reads its config back with them absolute."""
    out = {}
    for group, entries in fingerprint.items():
        if group == "config":
            out[group] = resolve(entries)
            continue
        relabelled = {}
        for label, value in entries.items():
            prefix = next((p for p in _PATH_LABELS if label.startswith(p)), None)
            relabelled[prefix + resolve(label[len(prefix):]) if prefix else label] = value
        out[group] = relabelled
    return out


def fingerprint_changes(recorded: dict, current: dict) -> dict[str, list[str]]:
    """{group: ["what changed (old -> new)", ...]} for every group with a difference; {} when none."""
    changes = {}
    for group, now in current.items():
        before = recorded.get(group, {})
        lines = [f"{label} ({_short(before.get(label))} -> {_short(now.get(label))})"
                 for label in sorted(set(before) | set(now)) if before.get(label) != now.get(label)]
        if lines:
            changes[group] = lines
    return changes


def _short(value) -> str:
    if value is None:
        return "absent"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256 {value[:12]}"  # enough to tell two hashes apart in a message
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
