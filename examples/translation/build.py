"""Build the translation recipe's dataset: English -> French user-interface strings of GTK 3.

Source: the French message catalogues that GTK 3 installs on Debian,
/usr/share/locale/fr/LC_MESSAGES/gtk30.mo and gtk30-properties.mo (package
libgtk-3-common). Every pair is a real msgid (English) and its msgstr (the GNOME French
translation team's French). License: GTK and its translations are LGPL-2.1-or-later
(see /usr/share/doc/libgtk-3-common/copyright); the pairs are redistributed here under
the same license, with this attribution.

Kept: short, plain strings (8-60 characters of English letters and punctuation), with
no format directives (%s, {0}), mnemonics (_File), markup or line breaks, whose
translation differs from the English. Pairs are split between train and eval by a hash
of the English string, so the eval strings were never seen in training.

    python examples/translation/build.py                 # writes train.jsonl and eval.jsonl here
    python examples/translation/build.py --out DIR --limit 40
"""

from __future__ import annotations

import argparse
import gettext
import hashlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stdlib_qa.build import bucket, chat_record, write_split  # noqa: E402  (examples/ is not a package)

CATALOGUES = ["gtk30", "gtk30-properties"]
LOCALE_DIR = Path("/usr/share/locale/fr/LC_MESSAGES")
PROMPT = "Translate this user-interface text from English to French:\n\n{text}"
N_TRAIN, N_EVAL = 600, 100

PLAIN_ENGLISH = re.compile(r"^[A-Z][A-Za-z ,.'()-]+$")
NOT_PLAIN = re.compile(r"[%{}_\n\t&<>\\]")


def read_catalogue(path: Path) -> dict[str, str]:
    """msgid -> msgstr of a compiled .mo file; plural and context entries are skipped."""
    with open(path, "rb") as f:
        catalogue = gettext.GNUTranslations(f)._catalog  # the parsed table; gettext has no public accessor
    return {k: v for k, v in catalogue.items()
            if isinstance(k, str) and isinstance(v, str) and k and "\x04" not in k}  # \x04 joins msgctxt


def usable(english: str, french: str) -> bool:
    return (8 <= len(english) <= 60 and bool(PLAIN_ENGLISH.match(english)) and not NOT_PLAIN.search(english + french)
            and bool(french.strip()) and french != english)


def collect() -> list[tuple[str, str]]:
    pairs: dict[str, str] = {}
    for name in CATALOGUES:
        path = LOCALE_DIR / f"{name}.mo"
        if not path.is_file():
            sys.exit(f"error: {path} is missing; install the Debian package libgtk-3-common with its French "
                     f"translations (no 'path-exclude /usr/share/locale' in /etc/dpkg/dpkg.cfg.d).")
        for english, french in read_catalogue(path).items():
            if usable(english, french):
                pairs.setdefault(english, french.strip())
    return sorted(pairs.items())


def record(english: str, french: str) -> dict:
    return chat_record(PROMPT.format(text=english), french)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="at most N train and N eval records (tests)")
    args = parser.parse_args(argv)
    pairs = collect()
    # Sorting by hash spreads both catalogues and every kind of string over the two splits.
    pairs.sort(key=lambda pair: hashlib.sha256(pair[0].encode()).hexdigest())
    evaluation = [record(e, f) for e, f in pairs if bucket(e, 7) == 0][:N_EVAL]
    train = [record(e, f) for e, f in pairs if bucket(e, 7) != 0][:N_TRAIN]
    train, evaluation = write_split(args.out, train, evaluation, args.limit)
    print(f"{len(pairs)} usable English-French pairs; wrote {len(train)} train and {len(evaluation)} eval records "
          f"to {args.out}")


if __name__ == "__main__":
    main()
