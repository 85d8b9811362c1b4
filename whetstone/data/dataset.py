"""From `data:` config to tokenized train and eval sets, with their statistics."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from whetstone.config import DataConfig, SourceConfig
from whetstone.data.canaries import plant_canaries
from whetstone.data.formats import load_records
from whetstone.data.records import Record
from whetstone.data.render import Rendered, render_record
from whetstone.errors import WhetstoneError


@dataclass
class TokenizedSet:
    examples: list[Rendered]
    origins: list[str]  # "file:line" of each example, for error messages (e.g. a NaN batch)
    tasks: list[str | None]

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class DataStats:
    format: str = ""
    explanation: str = ""
    records: int = 0
    skipped_invalid: int = 0
    truncated: int = 0
    dropped_no_labels: int = 0  # truncation removed every supervised token
    eval_records: int = 0
    supervised_tokens: int = 0
    tokens: int = 0
    notes: list[str] = field(default_factory=list)


def _sources(cfg: DataConfig) -> list[SourceConfig]:
    if isinstance(cfg.train, str):
        return [SourceConfig(path=cfg.train)]
    weights = {s.weight for s in cfg.train}
    if len(weights) > 1:
        raise WhetstoneError(
            "data.train: weighted mixtures of sources are not implemented yet; give every source weight 1.0 "
            "(they are concatenated), or merge the files yourself."
        )
    return list(cfg.train)


def _load(path: str, cfg: DataConfig, task: str | None, stats: DataStats) -> list[Record]:
    result = load_records(path, format=cfg.format, on_error=cfg.on_error, task=task)
    stats.format = stats.format or result.format
    stats.explanation = stats.explanation or result.explanation
    stats.skipped_invalid += result.skipped
    if result.skipped:
        stats.notes.append(f"{path}: skipped {result.skipped} invalid records (data.on_error=skip)")
    return result.records


def tokenize(records: list[Record], tokenizer, cfg: DataConfig, stats: DataStats | None = None) -> TokenizedSet:
    out = TokenizedSet([], [], [])
    for record in records:
        rendered = render_record(record, tokenizer, cfg.max_length, cfg.train_on_prompt)
        if stats is not None:
            stats.truncated += rendered.truncated
        if rendered.n_supervised == 0:
            if stats is not None:
                stats.dropped_no_labels += 1
            continue
        out.examples.append(rendered)
        out.origins.append(record.origin)
        out.tasks.append(record.task)
        if stats is not None:
            stats.supervised_tokens += rendered.n_supervised
            stats.tokens += len(rendered.input_ids)
    return out


def load_splits(cfg: DataConfig, seed: int) -> tuple[list[Record], list[Record], DataStats]:
    """Load and validate the training and eval records; carve eval out of train if asked."""
    stats = DataStats()
    records: list[Record] = []
    for source in _sources(cfg):
        records += _load(source.path, cfg, source.task, stats)
    eval_records: list[Record] = []
    if cfg.eval:
        eval_records = _load(cfg.eval, cfg, None, DataStats())
    elif cfg.eval_fraction:
        shuffled = list(records)
        random.Random(seed).shuffle(shuffled)
        n_eval = max(1, round(len(records) * cfg.eval_fraction))
        eval_records, records = shuffled[:n_eval], shuffled[n_eval:]
    if cfg.canaries:
        records, canaries = plant_canaries(records, cfg.canaries, seed)
        stats.notes.append(f"planted {len(canaries)} canaries (data.canaries); `whetstone audit` measures their exposure")
    stats.records = len(records)
    stats.eval_records = len(eval_records)
    return records, eval_records, stats


def summarize_preparation(stats: DataStats, cfg: DataConfig) -> None:
    """Turn the counts that tokenization left in `stats` into notes for the user."""
    if stats.truncated:
        stats.notes.append(f"{stats.truncated} training records were longer than data.max_length={cfg.max_length} "
                           f"and were truncated")
    if stats.dropped_no_labels:
        stats.notes.append(f"{stats.dropped_no_labels} records lost every supervised token to truncation and were "
                           f"dropped")
