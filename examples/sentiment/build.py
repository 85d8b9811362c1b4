"""Build the sentiment data set: real movie-review sentences with human sentiment ratings.

    python examples/sentiment/build.py                 # fetches the source package with pip
    python examples/sentiment/build.py --sdist FILE    # or reads a vaderSentiment-3.3.2.tar.gz you have

Source: the PyPI source distribution of vaderSentiment 3.3.2 (MIT License, (c) 2016
C.J. Hutto), which ships ``additional_resources/hutto_ICWSM_2014.tar.gz``. Its
``movieReviewSnippets_GroundTruth.txt`` holds 10,605 sentence-level snippets of
Rotten Tomatoes reviews (from Pang & Lee 2004's 2,000 reviews), each with the mean
sentiment rating, from -4 to +4, of at least 20 human raters (Hutto & Gilbert 2014,
"VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media
Text", ICWSM-14; please cite it if you use the data). The sentences are used as
they are; nothing is generated.

Labels, from the mean rating r: negative (r < -1), neutral (-1 <= r <= 1),
positive (r > 1). About 42% / 15% / 43%: the neutral class is the small one,
which is what class weights and macro-F1 are for.

Written next to this script (a seeded shuffle, then disjoint slices):

    train.jsonl, eval.jsonl          classification records {text, label}: objective classify
    sft_train.jsonl, sft_eval.jsonl  the same sentences as {prompt, completion}, the prompt being
                                     the one label-likelihood scoring asks (evaluate/fewshot.py's
                                     classification_prompt) and the completion the label: SFT
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SDIST = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
LABELS = ["negative", "neutral", "positive"]
N_TRAIN, N_EVAL, SEED = 1600, 400, 0


def fetch_sdist(directory: Path) -> Path:
    """Download the sdist with pip (the ordinary client; no other network access)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "vaderSentiment==3.3.2", "--no-deps", "--no-binary",
                    ":all:", "--quiet", "-d", str(directory)], check=True)
    return directory / SDIST


def read_snippets(sdist: Path) -> list[tuple[str, float]]:
    """(sentence, mean rating) of every movie-review snippet in the sdist."""
    data = sdist.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256}; not the vaderSentiment 3.3.2 sdist.")
    with tarfile.open(fileobj=io.BytesIO(data)) as outer:
        inner_bytes = outer.extractfile(INNER).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        text = inner.extractfile(SNIPPETS).read().decode("utf-8")
    rows = []
    for line in text.splitlines():
        _id, rating, sentence = line.split("\t", 2)
        sentence = " ".join(sentence.split())
        if sentence:
            rows.append((sentence, float(rating)))
    return rows


def label_of(rating: float) -> str:
    return "negative" if rating < -1.0 else "positive" if rating > 1.0 else "neutral"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help=f"a local {SDIST} (default: fetched with pip)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parents[1]))
    from whetstone.evaluate.fewshot import classification_prompt

    with tempfile.TemporaryDirectory() as tmp:
        rows = read_snippets(args.sdist or fetch_sdist(Path(tmp)))
    # Duplicate sentences (the same snippet in two reviews) would leak between train and eval.
    unique = list({sentence: rating for sentence, rating in rows}.items())
    random.Random(SEED).shuffle(unique)
    eval_rows, train_rows = unique[:N_EVAL], unique[N_EVAL : N_EVAL + N_TRAIN]
    for name, part in (("train", train_rows), ("eval", eval_rows)):
        records = [{"text": s, "label": label_of(r)} for s, r in part]
        write_jsonl(HERE / f"{name}.jsonl", records)
        write_jsonl(HERE / f"sft_{name}.jsonl", [{"prompt": classification_prompt(r["text"], LABELS),
                                                  "completion": r["label"]} for r in records])
        counts = {label: sum(r["label"] == label for r in records) for label in LABELS}
        print(f"{name}: {len(records)} records {counts}")


if __name__ == "__main__":
    main()
