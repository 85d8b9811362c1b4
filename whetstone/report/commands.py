"""The `whetstone report` verb: (re)write a run's report.html. Parse, call, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from whetstone.report import write_report
from whetstone.rundir import RunDir


def add_parsers(sub) -> None:
    """Register report on the top-level subparsers."""
    p = sub.add_parser("report", help="(re)write RUN_DIR/report.html")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--samples", type=int, default=0, metavar="N",
                   help="first answer N eval prompts with the base and the tuned model (samples.jsonl)")
    p.add_argument("--screenshot", default=None, metavar="PNG", help="also save a screenshot (needs Chromium)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    run = RunDir.open(args.run, flag="").path
    if args.samples:
        from whetstone.report.samples import write_samples

        print(f"samples: {write_samples(run, args.samples)}")
    out = write_report(run)
    print(f"report: {out}")
    if args.screenshot:
        from whetstone.report.browser import screenshot

        print(f"screenshot: {screenshot(out, Path(args.screenshot))}")
    return 0
