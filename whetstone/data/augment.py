"""`data.augment: {paraphrase: N}`: data.train's questions in N wordings each, made before training and cached.

The wordings are `whetstone data paraphrase`'s (data/synth/paraphrase.py): the question itself, the teacher's
rewordings that keep its names, then template frames where the teacher gave fewer; every answer stays as it is.
They are written once, to the user cache directory (models/embedded.py `cache_root`):

    <cache>/augment/<key>.jsonl    the records training reads instead of data.train
    <cache>/augment/<key>.json     how they were made: teacher, wordings per origin, dropped teacher lines, seconds

``key`` is the SHA-256 of data.train's bytes, N, the teacher's identity (`teacher_identity`), the template frames
and prompt, and AUGMENT_VERSION; a later run with the same inputs reads the file and never loads the teacher.
Both files are written under temporary names and renamed, the .jsonl last: a run killed part-way leaves nothing
that a later run would take for the cache.

The run trains on the cached file (its config's data.train becomes that path after config.yaml is written), so
the resume fingerprint (train/fingerprint.py) hashes the reworded records, and the run directory's augment.json
(rundir.py RunDir.AUGMENT) says what was trained on.

Several processes (torchrun, accelerate) read a cached file; only one process makes it, so the first start of a
config on several processes, with nothing cached, is refused with the command that makes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path

from whetstone.config import AugmentConfig, ModelConfig, RunConfig
from whetstone.data.synth.paraphrase import FRAMES, paraphrase_file
from whetstone.data.synth.teacher import load_teacher, paraphrase_prompt
from whetstone.errors import WhetstoneError
from whetstone.models.embedded import EMBEDDED, cache_root
from whetstone.rundir import RunDir

# Raise when the rows written for the same inputs change (paraphrase.py's parsing, the row layout), so that
# files cached before are not read as if they were made now. The frames and the prompt are in the key already.
AUGMENT_VERSION = 1
TEMPLATES = "templates"  # data.augment.teacher: the template frames alone, no model


def augment_dir() -> Path:
    return cache_root() / "augment"


def teacher_identity(cfg: AugmentConfig) -> str:
    """What the cache key knows of the teacher: its name, and for local weights, what the files on disk are.

    A model directory, a .gguf file or a run (its config.yaml and its adapter/ or model/) by each file's name,
    size and modification time, as the resume fingerprint identifies weights without reading GBs; the embedded
    model by its package's version. An endpoint or a hub id is known by its name only: what answers behind it
    may change without the key seeing it."""
    if cfg.teacher == TEMPLATES:
        return TEMPLATES
    if cfg.teacher_url is not None:
        return f"endpoint {cfg.teacher_url.rstrip('/')} model {cfg.teacher or '(the first it lists)'}"
    spec = cfg.teacher or ModelConfig().name
    path = Path(spec).expanduser()
    if spec in EMBEDDED:
        package = EMBEDDED[spec][0].replace("_", "-")
        try:
            return f"embedded {spec} {package} {metadata.version(package)}"
        except metadata.PackageNotFoundError:
            return f"embedded {spec} ({package} not installed)"
    if path.is_dir() and RunDir(path).config_path.is_file():
        run = RunDir(path)
        weights = sorted(p for p in run.weights_dir.rglob("*") if p.is_file()) if run.weights_dir.is_dir() else []
        return f"run {_files_digest(path, [run.config_path, *weights])}"
    if path.is_dir():
        return f"model directory {_files_digest(path, sorted(p for p in path.rglob('*') if p.is_file()))}"
    if path.is_file():
        return f"model file {path.name} {_files_digest(path.parent, [path])}"
    return f"model {spec}"  # a hub id


def _files_digest(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(source: str | Path, n: int, identity: str) -> str:
    """SHA-256 of what decides the reworded file: the source's bytes, N, the teacher, the frames and the prompt."""
    digest = hashlib.sha256()
    made_by = {"version": AUGMENT_VERSION, "paraphrase": n, "teacher": identity, "frames": list(FRAMES),
               "prompt": paraphrase_prompt("{question}", n - 1)}
    digest.update(json.dumps(made_by, sort_keys=True).encode() + b"\n")
    with open(source, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def augment_for_run(config: RunConfig, run: RunDir, rank: int = 0, world_size: int = 1) -> RunConfig:
    """``config`` training on the reworded data.train, made now or read from the cache; the same config when it
    has no data.augment. The main process (rank 0) writes the run's augment.json and prints one line about it."""
    cfg = config.data.augment
    if cfg is None:
        return config
    began, source = time.perf_counter(), config.data.train
    if not Path(source).is_file():
        raise WhetstoneError(f"data.train {source}: no such file. data.augment rewords a local file of Q&A records; "
                             f"check the path (a hub dataset: save it as .jsonl first).")
    key = cache_key(source, cfg.paraphrase, teacher_identity(cfg))
    cached, made_path = augment_dir() / f"{key}.jsonl", augment_dir() / f"{key}.json"
    hit = cached.is_file() and made_path.is_file()
    if not hit and world_size > 1:
        raise WhetstoneError(
            f"data.augment: the reworded {source} is not in the cache ({cached}) of process {rank}, and only one "
            f"process makes it. Start this config once on one process (without torchrun/accelerate; it rewords "
            f"before the model loads, and `--set train.max_steps=1` stops it soon after), then launch it on "
            f"{world_size} processes, with the cache directory ($WHETSTONE_CACHE) shared by all of them.")
    if not hit:
        _reword(source, cfg, cached, made_path)
    made = json.loads(made_path.read_text())
    report = {"source": source, "paraphrase": cfg.paraphrase, "teacher": made["teacher"], "cache": str(cached),
              "cache_hit": hit, **{k: made[k] for k in ("records_in", "records_out", "skipped", "wordings",
                                                        "teacher_lines_dropped")},
              "paraphrase_s": made["seconds"], "seconds": round(time.perf_counter() - began, 3)}
    if rank == 0:
        run.write_json(RunDir.AUGMENT, report)
        print(describe(report), flush=True)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, train=str(cached)))


def _reword(source: str, cfg: AugmentConfig, cached: Path, made_path: Path) -> None:
    """Write the reworded records to ``cached`` and how they were made to ``made_path``, each atomically."""
    teacher = None if cfg.teacher == TEMPLATES else load_teacher(cfg.teacher, cfg.teacher_url, cfg.teacher_key_env)
    cached.parent.mkdir(parents=True, exist_ok=True)
    part = cached.with_name(f"{cached.stem}.{os.getpid()}.jsonl")  # paraphrase_file writes it via part.partial
    try:
        made = paraphrase_file(source, str(part), cfg.paraphrase, teacher)
        if made.records_out == 0:
            raise WhetstoneError(f"data.augment: none of the {made.records_in} records of {source} is one question "
                                 f"and its answer (a user turn, then an assistant turn), so there is nothing to "
                                 f"reword; data.augment is for Q&A chat data. Remove it, or check the file with "
                                 f"`whetstone data show {source}`.")
        counts = made.counts
        record = {"teacher": TEMPLATES if teacher is None else teacher.name, "records_in": made.records_in,
                  "records_out": made.records_out, "skipped": made.skipped,
                  "wordings": {"original": made.records_in - made.skipped, "teacher": counts["wordings_teacher"],
                               "template": counts["wordings_template"]},
                  "teacher_lines_dropped": counts["paraphrase_lines_dropped"], "seconds": round(made.seconds, 3)}
        made_part = made_path.with_name(f"{made_path.stem}.{os.getpid()}.json.partial")
        made_part.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(made_part, made_path)
        os.replace(part, cached)  # last: the .jsonl being there is what makes a cache hit
    finally:
        for leftover in (part, Path(f"{part}.partial")):
            leftover.unlink(missing_ok=True)


def describe(report: dict) -> str:
    """The `augment:` line training prints."""
    w = report["wordings"]
    left_out = f"; left out {report['skipped']} not one question and answer" if report["skipped"] else ""
    how = "cached" if report["cache_hit"] else f"reworded in {report['paraphrase_s']:.1f} s"
    return (f"augment: {report['source']}: {w['original']} questions x {report['paraphrase']} wordings -> "
            f"{report['records_out']} records (teacher {report['teacher']}: {w['teacher']} wordings, template "
            f"{w['template']}, {report['teacher_lines_dropped']} teacher lines dropped{left_out}); {how}: "
            f"{report['cache']}")
