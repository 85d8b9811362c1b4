"""The `whetstone label prepare | serve | stats | export` verbs: parse, call, print."""

from __future__ import annotations

import argparse
import json
import sys

from whetstone.config import EMBEDDED_MODEL
from whetstone.errors import WhetstoneError
from whetstone.grants import add_grant_args, grants


def add_parsers(subparsers) -> None:
    """Register `label` and its four verbs on the top-level subparsers."""
    label = subparsers.add_parser("label", help="collect human judgements of answers and export them as training data")
    verbs = label.add_subparsers(dest="label_command", required=True)

    p = verbs.add_parser("prepare", help="sample answers to prompts into a labelling task file",
                         description="Sample N answers per prompt (seeded) and write pairs to judge. With --against, "
                                     "pair each answer with one from another run, adapter or model (A/B).")
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="prompts: `prompt`, `messages`, prompt/completion, preference or KTO rows")
    p.add_argument("--model", default=None, help=f"base model (default: the embedded {EMBEDDED_MODEL})")
    p.add_argument("--adapter", default=None, help="a PEFT adapter directory, a run directory, or a library name")
    p.add_argument("--run", default=None, help="a run directory: its base model plus its adapter or model")
    p.add_argument("--against", default=None, metavar="SPEC",
                   help="the other side of each pair: a run directory, an adapter (on --model), or a model")
    p.add_argument("--n", type=int, default=2, help="answers per prompt (per side with --against); default 2")
    p.add_argument("--limit", type=int, default=None, help="use a seeded random sample of this many prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0 is greedy)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("-o", "--output", required=True, metavar="TASKS.jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace an existing task file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_grant_args(p)
    p.set_defaults(func=run_prepare)

    p = verbs.add_parser("serve", help="serve the labelling page on 127.0.0.1",
                         description="Serve a page where people compare and rate the answers of TASKS. Every "
                                     "judgement is appended to --out and fsync'd; a restart resumes where it stopped.")
    p.add_argument("tasks", metavar="TASKS.jsonl")
    p.add_argument("--out", required=True, metavar="LABELS.jsonl", help="the label log (created or continued)")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed at start)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to bind; the page has no login, so keep it on loopback unless the network "
                        "is trusted")
    p.add_argument("--annotator", default=None,
                   help="the default annotator name; others open the page with ?annotator=NAME")
    p.add_argument("--quiet", action="store_true", help="no request log")
    p.set_defaults(func=run_serve)

    p = verbs.add_parser("stats", help="counts, position bias, agreement (Cohen's kappa) and win rates")
    p.add_argument("labels", metavar="LABELS.jsonl")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run_stats)

    p = verbs.add_parser("export", help="write the judgements as preference, KTO or SFT training data",
                         description="Ties, skips, split votes and neutral ratings are handled as docs/label.md "
                                     "describes; the file is checked with the format's parser before it is written.")
    p.add_argument("labels", metavar="LABELS.jsonl")
    p.add_argument("--as", dest="kind", required=True, choices=("preference", "kto", "sft"))
    p.add_argument("-o", "--output", required=True, metavar="FILE.jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE.jsonl (never the label file)")
    p.add_argument("--annotator", action="append", default=None, metavar="NAME",
                   help="use only this annotator's judgements (repeatable); default: everyone's")
    p.set_defaults(func=run_export)


def run_prepare(args: argparse.Namespace) -> int:
    from whetstone.label.prepare import Source, against_source, prepare

    if args.adapter and args.run:
        raise WhetstoneError("give --adapter or --run, not both: a run already names its adapter.")
    source = Source(model=args.model, adapter=args.adapter, run=args.run)
    against = against_source(args.against, args.model) if args.against else None
    result = prepare(args.prompts, args.output, source, against, n=args.n, limit=args.limit, seed=args.seed,
                     temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                     overwrite=args.overwrite, progress=not args.quiet, **grants(args))
    dropped = f" ({result.identical} pairs of identical answers left out)" if result.identical else ""
    print(f"wrote {result.tasks} tasks from {result.prompts} prompts to {result.path}{dropped}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from whetstone.label.server import claim_label_log, make_server
    from whetstone.label.store import LabelStore, read_tasks

    claim_label_log(args.out)  # held until this process exits
    store = LabelStore(read_tasks(args.tasks), args.out)
    server = make_server(store, args.host, args.port, args.annotator, log=not args.quiet)
    host, port = server.server_address[:2]
    who = f"?annotator={args.annotator}" if args.annotator else "?annotator=YOUR_NAME"
    progress = f", {store.done(args.annotator)} done by {args.annotator}" if args.annotator else ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach it can read the tasks and add judgements "
              f"(there is no login).", file=sys.stderr)
    print(f"labelling {len(store.tasks)} tasks{progress}; open http://{host}:{port}/{who}  (Ctrl-C stops; "
          f"judgements are saved as they are made to {store.path})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
        store.close()
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from whetstone.label.stats import render, summarize
    from whetstone.label.store import read_events

    if not Path(args.labels).is_file():
        raise WhetstoneError(f"{args.labels}: no such label file; `whetstone label serve` writes it.")
    summary = summarize(read_events(args.labels))
    print(json.dumps(summary, indent=1) if args.json else render(summary))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from whetstone.label.export import export_labels

    result = export_labels(args.labels, args.kind, args.output, args.annotator, overwrite=args.overwrite)
    dropped = "; left out: " + ", ".join(f"{n} {r}" for r, n in sorted(result.dropped.items())) \
        if result.dropped else ""
    print(f"wrote {result.rows} {args.kind} rows to {result.path}{dropped}")
    return 0
