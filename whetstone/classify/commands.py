"""The `whetstone predict` verb: labels and probabilities for each record of a file.

    whetstone predict --run runs/sentiment_head --data eval.jsonl -o predictions.jsonl
    whetstone predict --run runs/sentiment_head --run runs/sentiment_sft --model smollm2-135m-instruct \\
        --data eval.jsonl                       # side by side: head, generative, zero-shot base

A classify run predicts with its head. Any other run, and `--model M`, predicts
by label likelihood (the label strings ranked as answers, as `whetstone eval`
does). Records are classification records (text, label) or text records
(text only: predictions without accuracy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from whetstone.errors import WhetstoneError
from whetstone.grants import add_grant_args, grants


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict a label (with probabilities) for each record, by a classify head or label likelihood",
        description="Predict the label of every record of FILE. One predictor writes JSONL rows (to -o or stdout) and "
        "prints accuracy, macro-F1 and the confusion matrix when the records carry labels; several predictors print "
        "those side by side.")
    p.add_argument("--run", action="append", default=[], metavar="RUN",
                   help="a finished run: a classify run predicts with its head, any other run by label likelihood "
                   "(repeat to compare)")
    p.add_argument("--model", default=None, metavar="M",
                   help="also score a plain model (e.g. the base, zero-shot) by label likelihood")
    p.add_argument("--data", required=True, metavar="FILE", help="classification records (text, label) or text records")
    p.add_argument("-o", "--output", default=None, metavar="OUT.jsonl", help="write the predictions here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.jsonl (never the --data file)")
    p.add_argument("--labels", nargs="+", default=None, metavar="L",
                   help="the classes for label likelihood (default: the labels found in the data)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="the first N records only")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_grant_args(p)
    p.set_defaults(func=run_predict)


def _records(path: str, limit: int | None):
    from whetstone.data.formats import load_records

    records = load_records(path).records
    kinds = sorted({r.kind for r in records} - {"classification", "text"})
    if kinds:
        raise WhetstoneError(f"--data {path}: predict takes classification records (text, label) or text records "
                             f"(text), not {', '.join(kinds)} records.")
    return records[:limit] if limit is not None else records


def run_predict(args: argparse.Namespace) -> int:
    from whetstone.classify.metrics import classification_report, render_report
    from whetstone.classify.predict import load_predictor
    from whetstone.data.formats import label_set
    from whetstone.overwrite import refuse_existing, refuse_input_as_output
    from whetstone.train.device import resolve_device

    for name in ("limit", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise WhetstoneError(f"--{name.replace('_', '-')}: got {value}; must be a positive integer.")
    names = list(args.run) + ([args.model] if args.model else [])
    if not names:
        raise WhetstoneError("predict needs a predictor: --run RUN (a classify run, or any run for label likelihood), "
                             "or --model M.")
    if args.output and len(names) > 1:
        raise WhetstoneError("-o writes one predictor's predictions; with several --run/--model they are compared, "
                             "so drop -o or pass one predictor.")
    if args.output:  # before any model loads
        refuse_input_as_output(args.data, args.output, "predict")
        refuse_existing(args.output, args.overwrite)
    records = _records(args.data, args.limit)
    golds = [str(r.label) if r.label is not None else None for r in records]
    labelled = all(g is not None for g in golds)
    texts = [r.text or "" for r in records]
    device = resolve_device(args.device)

    results = []
    for i, name in enumerate(names):
        is_run = i < len(args.run)
        predictor = load_predictor(name if is_run else None, None if is_run else name, args.labels,
                                   label_set(records), device, **grants(args))
        start = time.perf_counter()
        predictions = predictor.predict(texts, args.batch_size)
        seconds = time.perf_counter() - start
        result = {"predictor": name, "kind": predictor.kind, "seconds": round(seconds, 3),
                  "examples_per_s": round(len(texts) / max(seconds, 1e-9), 2)}
        if labelled:
            result |= classification_report([p.label for p in predictions], golds, predictor.labels)
        results.append(result)
        if len(names) == 1:
            rows = [{"origin": r.origin, **({"gold": g} if g is not None else {}), "label": p.label,
                     "probabilities": p.probabilities} for r, g, p in zip(records, golds, predictions)]
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            if args.output:
                Path(args.output).write_text(text)
            elif not args.json:
                sys.stdout.write(text)

    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=1, ensure_ascii=False))
        return 0
    out = sys.stderr if len(names) == 1 and not args.output else sys.stdout
    for result in results:
        print(f"{result['predictor']} ({result['kind']}): {len(texts)} records in {result['seconds']:.1f} s "
              f"({result['examples_per_s']:.1f}/s)", file=out)
        if labelled:
            print(render_report(result), file=out)
    if len(results) > 1 and labelled:
        width = max(len(r["predictor"]) for r in results) + 2
        print(f"\n{'predictor':<{width}}{'kind':<12}{'accuracy':>10}{'macro_f1':>10}{'seconds':>10}", file=out)
        for r in results:
            print(f"{r['predictor']:<{width}}{r['kind']:<12}{r['accuracy']:>10.3f}{r['macro_f1']:>10.3f}"
                  f"{r['seconds']:>10.1f}", file=out)
    return 0
