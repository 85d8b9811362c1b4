"""Build the summarisation recipe's dataset: Debian package descriptions, long -> short.

Source: /var/lib/dpkg/status, the descriptions of the Debian packages installed on the
machine that ran this script. A Debian description is a synopsis line written by the
package's maintainer to summarise the extended description under it, so each package
gives one (document, summary) pair, written by people for exactly this purpose. License:
every description is part of its package's debian/control and is distributed by Debian
under that package's free license (Debian main is DFSG-free; each package's terms are in
/usr/share/doc/<package>/copyright).

Kept: extended descriptions of 150-700 characters, each text once (binary packages of one
source often share a description; the first, alphabetically, keeps it). Packages are
split between train and eval by a hash of the package name. The set depends on what the
machine has installed, so rebuilding elsewhere gives a different (equally valid) set; the
committed jsonl files are the recipe's reference data.

    python examples/summarization/build.py               # writes train.jsonl and eval.jsonl here
    python examples/summarization/build.py --out DIR --limit 40
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stdlib_qa.build import bucket, chat_record, write_split  # noqa: E402  (examples/ is not a package)

STATUS = Path("/var/lib/dpkg/status")
PROMPT = "Summarise this software package description in one short line:\n\n{text}"
N_TRAIN, N_EVAL = 300, 60
MIN_CHARS, MAX_CHARS = 150, 700


def parse_status(text: str) -> list[tuple[str, str, str]]:
    """(package, synopsis, extended description) for every stanza with a description."""
    out = []
    for stanza in text.split("\n\n"):
        package = re.search(r"^Package: (.+)$", stanza, re.M)
        description = re.search(r"^Description: (.*)\n((?: .*(?:\n|$))*)", stanza, re.M)
        if not (package and description):
            continue
        # Continuation lines start with a space; " ." is an empty line between paragraphs.
        lines = [line.strip() for line in description.group(2).splitlines()]
        body = " ".join(line for line in lines if line and line != ".")
        out.append((package.group(1).strip(), description.group(1).strip(), re.sub(r"\s+", " ", body)))
    return out


def collect() -> list[tuple[str, str, str]]:
    if not STATUS.is_file():
        sys.exit(f"error: {STATUS} is missing; this script reads the package database of a Debian-based system.")
    seen, kept = set(), []
    for package, synopsis, body in sorted(parse_status(STATUS.read_text(encoding="utf-8"))):
        if MIN_CHARS <= len(body) <= MAX_CHARS and synopsis and body not in seen:
            seen.add(body)
            kept.append((package, synopsis, body))
    return kept


def record(synopsis: str, body: str) -> dict:
    return chat_record(PROMPT.format(text=body), synopsis)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="at most N train and N eval records (tests)")
    args = parser.parse_args(argv)
    packages = collect()
    packages.sort(key=lambda p: hashlib.sha256(p[0].encode()).hexdigest())  # no alphabetical runs of lib*-dev
    evaluation = [record(s, b) for p, s, b in packages if bucket(p, 6) == 0][:N_EVAL]
    train = [record(s, b) for p, s, b in packages if bucket(p, 6) != 0][:N_TRAIN]
    train, evaluation = write_split(args.out, train, evaluation, args.limit)
    print(f"{len(packages)} usable package descriptions; wrote {len(train)} train and {len(evaluation)} eval "
          f"records to {args.out}")


if __name__ == "__main__":
    main()
