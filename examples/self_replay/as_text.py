"""Write replay.jsonl's records again as plain text: replay_text.jsonl, for distilled replay.

With `data.replay.distill`, a replay record's tokens are inputs only: every position learns the
base model's own next-token distribution there. The same requests and answers as plain text
(request, a blank line, answer; no chat template) then rehearse what the base model does with
text outside a conversation, which the forgetting probe's text perplexity measures. A chat file
and a text file cannot be one file, so the recipe lists both:

    data: {replay: {source: [examples/self_replay/replay.jsonl, examples/self_replay/replay_text.jsonl],
                    fraction: 0.3, distill: true}}

    python examples/self_replay/as_text.py      # rewrites replay_text.jsonl here; deterministic
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def as_text(record: dict) -> dict:
    request, answer = (m["content"] for m in record["messages"])
    return {"text": f"{request}\n\n{answer}"}


def main() -> None:
    records = [json.loads(line) for line in (HERE / "replay.jsonl").read_text(encoding="utf-8").splitlines()]
    lines = [json.dumps(as_text(r), ensure_ascii=False) + "\n" for r in records]
    (HERE / "replay_text.jsonl").write_text("".join(lines), encoding="utf-8")
    print(f"wrote {len(lines)} text records to {HERE / 'replay_text.jsonl'}")


if __name__ == "__main__":
    main()
