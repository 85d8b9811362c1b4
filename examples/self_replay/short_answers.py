"""Write short_answers.jsonl: general requests whose answer is one bare word, for distilled replay.

The self-replay requests (replay.jsonl) are the model's own, and it answers them at length, so
none of them shows the model a bare one-word answer and the end of the turn right after it. A
model tuned on sentence-long answers then starts short general answers as sentences more often,
and ends a bare answer less often, than its base did. With `data.replay.distill`, the tokens of a
replay record are inputs only: each position learns the base model's own next-token distribution
there. These records put the model at exactly those positions (the first token of an answer to a
short question, and the token after a bare answer), so distillation holds the base model's
behaviour there; the answers need not be what the base model would say.

The questions are about the spelling of English words (letter counts, first and last letters,
alphabetical order, capitals). The forgetting probe (examples/general_probe) asks none of these
kinds, and none of its suffixes: it asks arithmetic, capitals, opposites, the calendar, numbers
and facts, each ending in "Answer in a few words.". The words are those of the GNU GPL 3 that
Debian ships in /usr/share/common-licenses (a word list, not the license's text).

    python examples/self_replay/short_answers.py    # rewrites short_answers.jsonl here; deterministic
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = Path("/usr/share/common-licenses/GPL-3")
PROBE = HERE.parent / "general_probe" / "qa.jsonl"
PER_KIND = 30
ENDINGS = ["Keep it short.", "Reply with just the answer.", "Be brief.", "One word is enough.", ""]


def words() -> list[str]:
    """Distinct lowercase words of 4 to 10 letters from the source, minus any word the probe's questions use."""
    if not SOURCE.is_file():
        raise SystemExit(f"{SOURCE} is missing; this script reads Debian's common-licenses (package base-files).")
    probe = set(re.findall(r"[a-z]+", PROBE.read_text(encoding="utf-8").lower()))
    found = dict.fromkeys(w for w in re.findall(r"\b[a-z]{4,10}\b", SOURCE.read_text(encoding="utf-8")))
    return sorted(w for w in found if w not in probe)


def requests(pool: list[str], rng: random.Random) -> list[tuple[str, str]]:
    picked = rng.sample(pool, 6 * PER_KIND)
    one, two = picked[: 4 * PER_KIND], picked[4 * PER_KIND :]
    asked = []
    for i, word in enumerate(one):
        kind = i // PER_KIND
        if kind == 0:
            asked.append((f'How many letters are in the word "{word}"?', str(len(word))))
        elif kind == 1:
            asked.append((f'What is the first letter of the word "{word}"?', word[0]))
        elif kind == 2:
            asked.append((f'What is the last letter of the word "{word}"?', word[-1]))
        else:
            asked.append((f'Write the word "{word}" in capital letters.', word.upper()))
    for a, b in zip(two[::2], two[1::2]):
        asked.append((f'Which comes first in alphabetical order, "{a}" or "{b}"?', min(a, b)))
    return asked


def records() -> list[dict]:
    rng = random.Random(0)
    asked = requests(words(), rng)
    rng.shuffle(asked)
    out = []
    for i, (question, answer) in enumerate(asked):
        ending = ENDINGS[i % len(ENDINGS)]
        request = f"{question} {ending}".strip()
        out.append({"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]})
    return out


def main() -> None:
    rows = records()
    (HERE / "short_answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} records to {HERE / 'short_answers.jsonl'}")


if __name__ == "__main__":
    main()
