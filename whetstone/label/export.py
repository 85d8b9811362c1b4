"""`whetstone label export`: the judgements in force, as training data of the data formats.

    --as preference   {"prompt", "chosen", "rejected"}            objective: reward | dpo
    --as kto          {"prompt", "completion", "label": bool}     objective: kto
    --as sft          {"messages": [..., {"role": "assistant"}]}   objective: sft

How judgements become rows (docs/label.md says the same):

- preference: the votes of every annotator on a task (each picks an answer or tie;
  skips do not vote) are counted. The answer with strictly the most votes is chosen, the
  other rejected. A tie winning the vote, or a split vote, gives no row.
- kto: each answer (the same text under the same prompt is one answer, whatever task it
  sat in) is desirable when its mean 1-5 rating is >= 4, undesirable when <= 2, and
  dropped at a mean in between. An answer nobody rated takes its pairwise record: more
  wins than losses is desirable, more losses undesirable, even is dropped. Ties and
  skips count as neither.
- sft: every "ideal answer" someone wrote (skipped tasks included: the edit is the
  judgement) becomes one conversation; identical ones are written once.

The file written is read back with the format's parser before the command returns,
so what `export` writes is what `whetstone train` will load.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from whetstone.errors import WhetstoneError
from whetstone.label.store import current_judgements, read_events
from whetstone.overwrite import refuse_existing, refuse_input_as_output

KINDS = {"preference": "preference", "kto": "kto", "sft": "messages"}  # --as -> the data format it writes
GOOD_RATING, BAD_RATING = 4, 2


@dataclass
class ExportResult:
    rows: int
    path: Path
    dropped: Counter = field(default_factory=Counter)  # reason -> count


def _prompt_value(prompt: list[dict]):
    """A single user turn as a plain string (the common case, and what `data check` shows best)."""
    return prompt[0]["content"] if len(prompt) == 1 and prompt[0]["role"] == "user" else prompt


def _texts(judgement: dict) -> dict[str, str]:
    return {a["id"]: a["text"] for a in judgement["answers"]}


def preference_rows(judgements: list[dict], dropped: Counter) -> list[dict]:
    by_task: dict[str, list[dict]] = {}
    for judgement in judgements:
        by_task.setdefault(judgement["task"], []).append(judgement)
    rows = []
    for task_judgements in by_task.values():
        votes = Counter(j["preferred"] if j["choice"] in ("A", "B") else "tie"
                        for j in task_judgements if j["choice"] != "skip")
        if not votes:
            dropped["skipped"] += 1
            continue
        (top, top_votes), *rest = votes.most_common()
        if rest and rest[0][1] == top_votes:
            dropped["split vote"] += 1
            continue
        if top == "tie":
            dropped["tie"] += 1
            continue
        first = task_judgements[0]
        texts = _texts(first)
        (other,) = [answer_id for answer_id in texts if answer_id != top]
        if not texts[top].strip() or not texts[other].strip():
            dropped["empty answer"] += 1  # the formats reject an empty turn
            continue
        rows.append({"prompt": _prompt_value(first["prompt"]), "chosen": texts[top], "rejected": texts[other]})
    return rows


def kto_rows(judgements: list[dict], dropped: Counter) -> list[dict]:
    # (prompt, answer text) -> its ratings, wins and losses over every task it appeared in
    answers: dict[tuple[str, str], dict] = {}
    for judgement in judgements:
        prompt_key = json.dumps(judgement["prompt"], sort_keys=True)
        for answer in judgement["answers"]:
            entry = answers.setdefault((prompt_key, answer["text"]),
                                       {"prompt": judgement["prompt"], "ratings": [], "wins": 0, "losses": 0})
            rating = (judgement.get("ratings") or {}).get(answer["id"])
            if rating is not None:
                entry["ratings"].append(rating)
            if judgement["choice"] in ("A", "B"):
                entry["wins" if judgement["preferred"] == answer["id"] else "losses"] += 1
    rows = []
    for (_, text), entry in answers.items():
        if entry["ratings"]:
            mean = sum(entry["ratings"]) / len(entry["ratings"])
            label = True if mean >= GOOD_RATING else False if mean <= BAD_RATING else None
            reason = "neutral rating"
        else:
            label = True if entry["wins"] > entry["losses"] else False if entry["losses"] > entry["wins"] else None
            reason = "no rating, even or no pairwise record"
        if label is not None and not text.strip():
            label, reason = None, "empty answer"
        if label is None:
            dropped[reason] += 1
            continue
        rows.append({"prompt": _prompt_value(entry["prompt"]), "completion": text, "label": label})
    return rows


def sft_rows(judgements: list[dict], dropped: Counter) -> list[dict]:
    rows, seen = [], set()
    for judgement in judgements:
        ideal = judgement.get("ideal")
        if not ideal:
            dropped["no ideal answer"] += 1
            continue
        key = (json.dumps(judgement["prompt"], sort_keys=True), ideal)
        if key in seen:
            dropped["duplicate ideal answer"] += 1
            continue
        seen.add(key)
        rows.append({"messages": [*judgement["prompt"], {"role": "assistant", "content": ideal}]})
    return rows


BUILDERS = {"preference": preference_rows, "kto": kto_rows, "sft": sft_rows}


def export_labels(labels: str | Path, kind: str, output: str | Path,
                  annotators: list[str] | None = None, overwrite: bool = False) -> ExportResult:
    if kind not in BUILDERS:
        raise WhetstoneError(f"--as {kind!r}: choose one of {sorted(BUILDERS)}.")
    output = Path(output)
    if not output.name.endswith(".jsonl"):
        raise WhetstoneError(f"-o {output}: export writes JSON Lines; name the file *.jsonl.")
    if not Path(labels).is_file():
        raise WhetstoneError(f"{labels}: no such label file; `whetstone label serve` writes it.")
    refuse_input_as_output(labels, output, "label export")  # the label log is the only copy of the judgements
    refuse_existing(output, overwrite)
    active = current_judgements(read_events(labels))
    if annotators:
        unknown = sorted(set(annotators) - set(active))
        if unknown:
            raise WhetstoneError(f"--annotator {', '.join(unknown)}: no judgements in {labels} (annotators there: "
                                 f"{', '.join(sorted(active)) or 'none'}).")
        active = {name: active[name] for name in annotators}
    judgements = [j for per_task in active.values() for j in per_task.values()]
    dropped: Counter = Counter()
    rows = BUILDERS[kind](judgements, dropped)
    if not rows:
        reasons = ", ".join(f"{n} {r}" for r, n in dropped.items()) or "no judgements"
        raise WhetstoneError(f"{labels}: no {kind} rows to export ({reasons}); see docs/label.md for what each "
                             f"format takes.")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".tmp-{output.name}")  # same suffix: the reader picks the format by it
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    from whetstone.data.formats import load_records

    try:  # what training will read: parse it with the format's own parser before it takes the real name
        load_records(str(tmp), format=KINDS[kind])
    except WhetstoneError:
        tmp.unlink()
        raise
    os.replace(tmp, output)
    return ExportResult(len(rows), output, dropped)
