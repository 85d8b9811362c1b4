"""The `whetstone score` verb: the reward a trained reward model gives each response in a file.

    whetstone score --run runs/rm --data pairs.jsonl

Preference records print the reward of the chosen and the rejected answer (and, at
the end, the pairwise accuracy); kto records and chat records print the reward of
their completion (a chat record's last assistant turn).

The verb lives with the objectives because the model it scores with is the reward objective's
(`objective: reward`, objectives/reward.py: load_reward_model); nothing else registers here.
"""

from __future__ import annotations

import argparse
import json
import sys

from whetstone.errors import WhetstoneError
from whetstone.grants import add_grant_args, grants


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="print the reward a reward model gives each prompt/response",
        description="Score every response of FILE with the reward model of an `objective: reward` run.",
    )
    p.add_argument("--run", required=True, metavar="RM_RUN", help="a finished reward-model run directory")
    p.add_argument("--data", required=True, metavar="FILE", help="preference, kto or chat records")
    p.add_argument("--format", default="auto", help="the data format (default: detected)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="one JSON object per record instead of a table")
    add_grant_args(p)
    p.set_defaults(func=run_score)


def run_score(args: argparse.Namespace) -> int:
    from whetstone.data.formats import load_records
    from whetstone.data.records import Message
    from whetstone.objectives.reward import load_reward_model

    if args.batch_size < 1:
        raise WhetstoneError(f"--batch-size: got {args.batch_size}; must be a positive integer.")
    records = load_records(args.data, format=args.format).records
    prompts, answers, slots = [], [], []  # slots: (record index, field name) of each scored answer
    for i, record in enumerate(records):
        if record.kind == "preference":
            fields = (("chosen", record.chosen), ("rejected", record.rejected))
            prompt = record.messages
        elif record.kind == "feedback":
            fields, prompt = (("reward", record.completion),), record.messages
        elif record.kind == "chat" and record.messages[-1].role == "assistant":
            fields, prompt = (("reward", (record.messages[-1],)),), record.messages[:-1]
        else:
            raise WhetstoneError(
                f"{record.origin}: a {record.kind} record has no response to score; give preference "
                f"(prompt, chosen, rejected), kto (prompt, completion, label) or chat records."
            )
        for name, answer in fields:
            prompts.append(prompt)
            answers.append(tuple(answer) if answer else (Message("assistant", ""),))
            slots.append((i, name))

    reward_model = load_reward_model(args.run, **grants(args))
    scores = reward_model.score(prompts, answers, args.batch_size)
    rows: list[dict] = [{"origin": r.origin} for r in records]
    for (i, name), score in zip(slots, scores):
        rows[i][name] = round(score, 6)

    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print("\t".join([row["origin"]] + [f"{k}={v:.4f}" for k, v in row.items() if k != "origin"]))
    pairs = [r for r in rows if "chosen" in r]
    summary = f"{len(scores)} responses scored, mean reward {sum(scores) / max(len(scores), 1):.4f}"
    if pairs:
        wins = sum(1.0 if r["chosen"] > r["rejected"] else 0.5 if r["chosen"] == r["rejected"] else 0.0 for r in pairs)
        summary += f"; pairwise accuracy {wins / len(pairs):.4f} over {len(pairs)} pairs"
    print(summary, file=sys.stderr)
    return 0
