"""From `data:` config to tokenized train and eval sets, with their statistics."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

from whetstone.config import DataConfig, SourceConfig
from whetstone.data.canaries import plant_canaries
from whetstone.data.formats import load_records
from whetstone.data.mixture import REPLAY_TASK, Mixture, build_mixture
from whetstone.data.records import Record
from whetstone.data.render import Rendered, render_sequences


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
    examples: int = 0  # rendered from the records: more than records where the chat template re-renders history
    skipped_invalid: int = 0
    truncated: int = 0
    dropped_no_labels: int = 0  # truncation removed every supervised token
    eval_records: int = 0
    supervised_tokens: int = 0
    tokens: int = 0
    notes: list[str] = field(default_factory=list)
    source_of: dict[str, int] = field(default_factory=dict)  # origin -> index in data.train (replay: one past)


def _sources(cfg: DataConfig) -> list[SourceConfig]:
    """data.train as a list of sources; in a list of several, a source without a task is named by its file."""
    if isinstance(cfg.train, str):
        return [SourceConfig(path=cfg.train)]
    if len(cfg.train) == 1:
        return list(cfg.train)
    return [dataclasses.replace(s, task=s.task or _stem(s.path)) for s in cfg.train]


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet"):
        name = name.removesuffix(suffix)
    return name or path


def _load(path: str, cfg: DataConfig, task: str | None, stats: DataStats) -> list[Record]:
    result = load_records(path, format=cfg.format, on_error=cfg.on_error, task=task)
    stats.format = stats.format or result.format
    stats.explanation = stats.explanation or result.explanation
    stats.skipped_invalid += result.skipped
    if result.skipped:
        stats.notes.append(f"{path}: skipped {result.skipped} invalid records (data.on_error=skip)")
    return result.records


def tokenize(records: list[Record], tokenizer, cfg: DataConfig, stats: DataStats | None = None) -> TokenizedSet:
    """Render every record into training examples: one each, or one per run of turns where the template
    re-renders history (data/render.py)."""
    out = TokenizedSet([], [], [])
    distill = cfg.replay is not None and cfg.replay.distill
    for record in records:
        if distill and record.task == REPLAY_TASK:
            # Distilled replay learns the base model's prediction at every token: the request's as well.
            examples = [dataclasses.replace(r, distill=True)
                        for r in render_sequences(record, tokenizer, cfg.max_length, True, cfg.reasoning)]
        else:
            examples = render_sequences(record, tokenizer, cfg.max_length, cfg.train_on_prompt, cfg.reasoning)
        for rendered in examples:
            _add_example(out, rendered, record, stats)
    return out


def _add_example(out: TokenizedSet, rendered: Rendered, record: Record, stats: DataStats | None) -> None:
    if stats is not None:
        stats.examples += 1
        stats.truncated += rendered.truncated
    if rendered.n_supervised == 0:
        if stats is not None:
            stats.dropped_no_labels += 1
        return
    out.examples.append(rendered)
    out.origins.append(record.origin)
    out.tasks.append(record.task)
    if stats is not None:
        stats.supervised_tokens += rendered.n_supervised
        stats.tokens += len(rendered.input_ids)


def load_splits(cfg: DataConfig, seed: int) -> tuple[list[Record], list[Record], DataStats]:
    """Load and validate the training and eval records; carve eval out of train if asked.

    Eval records keep their task: a source's own `eval` file takes the source's task, and
    data.eval_fraction is carved out of each source separately, so every task is evaluated.
    """
    stats = DataStats()
    records: list[Record] = []
    eval_records: list[Record] = _load(cfg.eval, cfg, None, DataStats()) if cfg.eval else []
    for i, source in enumerate(_sources(cfg)):
        own = _load(source.path, cfg, source.task, stats)
        if source.eval:
            eval_records += _load(source.eval, cfg, source.task, DataStats())
        elif cfg.eval_fraction:
            shuffled = list(own)
            random.Random(seed).shuffle(shuffled)
            n_eval = max(1, round(len(own) * cfg.eval_fraction))
            eval_records, own = eval_records + shuffled[:n_eval], shuffled[n_eval:]
        stats.source_of.update((r.origin, i) for r in own)
        records += own
    if cfg.replay is not None:
        # Replay data is general text; its rows' own task fields would split it, so it is all task 'replay'.
        replay = [dataclasses.replace(r, task=REPLAY_TASK)
                  for path in cfg.replay.paths for r in _load(path, cfg, None, stats)]
        stats.source_of.update((r.origin, len(_sources(cfg))) for r in replay)
        stats.notes.append(f"replay: {len(replay)} records from {', '.join(cfg.replay.paths)}, "
                           f"{cfg.replay.fraction:.0%} of every epoch's draws"
                           + (", distilled: every token learns the base model's distribution" if cfg.replay.distill
                              else ""))
        records += replay
    if cfg.canaries:
        records, canaries = plant_canaries(records, cfg.canaries, seed)
        stats.notes.append(f"planted {len(canaries)} canaries (data.canaries); `whetstone audit` measures their exposure")
    stats.records = len(records)
    stats.eval_records = len(eval_records)
    return records, eval_records, stats


def plan_mixture(cfg: DataConfig, origins: list[str], stats: DataStats) -> Mixture | None:
    """The mixture of several sources (or of one plus replay) over the tokenized training set; None for one file.

    Examples are assigned to their source by origin; planted canaries count as part of the first source.
    """
    sources = _sources(cfg)
    if len(sources) < 2 and cfg.replay is None:
        return None
    members: list[list[int]] = [[] for _ in range(len(sources) + (cfg.replay is not None))]
    for index, origin in enumerate(origins):
        members[stats.source_of.get(origin, 0)].append(index)
    groups = [(s.task or _stem(s.path), s.path, s.weight, members[i]) for i, s in enumerate(sources)]
    replay = (", ".join(cfg.replay.paths), members[-1], cfg.replay.fraction) if cfg.replay is not None else None
    return build_mixture(groups, cfg.mixing, cfg.temperature, replay)


def summarize_preparation(stats: DataStats, cfg: DataConfig) -> None:
    """Turn the counts that tokenization left in `stats` into notes for the user."""
    if stats.examples > stats.records:
        stats.notes.append(f"the chat template re-renders earlier turns, so {stats.records} training records made "
                           f"{stats.examples} examples, each assistant turn seeing its history as at inference "
                           f"(docs/chat_templates.md)")
    if stats.truncated:
        stats.notes.append(f"{stats.truncated} training examples were longer than data.max_length={cfg.max_length} "
                           f"and were truncated")
    if stats.dropped_no_labels:
        stats.notes.append(f"{stats.dropped_no_labels} examples lost every supervised token to truncation and were "
                           f"dropped")
