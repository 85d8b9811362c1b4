"""The grounding audit of `whetstone data synth` (issue 25): a random sample of its pairs, read by a person.

    .venv/bin/python bench/synth_audit.py sample OUT.jsonl --out AUDIT.md [--n 50] [--seed 0]
    .venv/bin/python bench/synth_audit.py tally AUDIT.md

`sample` draws N distinct pairs (a pair is a chunk's question and answer in its first wording; the other wordings
ask the same thing) with a fixed seed, and writes AUDIT.md: for each, where it comes from (origin, rule, file and
lines), the question, the answer and the chunk's text, read again from the document with `data synth`'s own
reader, and a line `verdict: ?`. The reader replaces `?` by `yes` (the chunk states the answer, and the answer
answers the question) or `no`, with a reason after it. `tally` counts the verdicts, overall and by origin, and
refuses an audit with a verdict left at `?`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

from whetstone.data.synth.chunks import read_chunks

_VERDICT = re.compile(r"^verdict: (yes|no|\?)(?!\w)", re.MULTILINE)
_ORIGIN = re.compile(r"^origin: (\w+)", re.MULTILINE)


def sample(output: Path, n: int, seed: int) -> str:
    pairs = [r for r in (json.loads(line) for line in output.read_text(encoding="utf-8").splitlines())
             if r["source"]["wording"] == 0]
    if len(pairs) < n:
        raise SystemExit(f"{output} has {len(pairs)} pairs; cannot draw {n}")
    drawn = random.Random(seed).sample(pairs, n)
    chunks = {}
    for path in sorted({r["source"]["file"] for r in drawn}):
        chunks.update({c.id: c for c in read_chunks(path)})
    parts = [f"# Grounding audit: {n} pairs of {output.name}, drawn with seed {seed} from {len(pairs)}\n",
             "Each verdict: `yes` when the chunk states the answer and the answer answers the question, else `no`, "
             "with the reason.\n"]
    for k, record in enumerate(drawn, 1):
        source = record["source"]
        chunk = chunks[source["chunk"]].text
        rule = f", rule {source['rule']}" if "rule" in source else ""
        parts.append(f"## {k}\n\norigin: {source['origin']}{rule}; {source['file']} lines "
                     f"{source['lines'][0]}-{source['lines'][1]}\n\nQ: {record['messages'][0]['content']}\n\n"
                     f"A: {record['messages'][1]['content']}\n\n```text\n{chunk}\n```\n\nverdict: ?\n")
    return "\n".join(parts)


def tally(audit: Path) -> str:
    text = audit.read_text(encoding="utf-8")
    items = re.split(r"^## \d+\n", text, flags=re.MULTILINE)[1:]
    found = [(_ORIGIN.search(item), _VERDICT.search(item)) for item in items]
    verdicts = [(o.group(1), v.group(1) if v else "?") for o, v in found]
    open_items = [k for k, (_, v) in enumerate(verdicts, 1) if v == "?"]
    if open_items:
        raise SystemExit(f"{audit}: no verdict yet for items {open_items}")
    lines = []
    for origin in ["all", *sorted({o for o, _ in verdicts})]:
        chosen = [v for o, v in verdicts if origin in ("all", o)]
        yes = Counter(chosen)["yes"]
        lines.append(f"{origin}: {yes} of {len(chosen)} grounded ({100 * yes / len(chosen):.0f}%)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("sample")
    s.add_argument("output", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--n", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("tally")
    t.add_argument("audit", type=Path)
    args = parser.parse_args()
    if args.mode == "sample":
        args.out.write_text(sample(args.output, args.n, args.seed), encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(tally(args.audit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
