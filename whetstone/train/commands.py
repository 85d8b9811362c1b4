"""`whetstone train`: its flags, and the call into train/dispatch.py."""

from __future__ import annotations

import argparse

from whetstone.errors import WhetstoneError
from whetstone.grants import add_grant_args, grants


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="fine-tune from a YAML config")
    p.add_argument("config", nargs="?", help="the run config (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("-o", "--output", default=None, help="run directory (overrides output: in the config)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a stopped run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--accept-changes", action="store_true",
                   help="with --resume: continue although the data, base model or batch config changed (recorded)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_grant_args(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from whetstone.config import load_config
    from whetstone.train.dispatch import train

    if args.resume:
        if args.config or args.set:
            raise WhetstoneError("--resume continues a run with its own config.yaml; do not pass a config or --set.")
        # The run's config.yaml is not this command: its remote code or pickle weights need this command's flags.
        summary = train(None, args.resume, resume=True, progress=not args.quiet, accept_changes=args.accept_changes,
                        **grants(args))
    else:
        if args.accept_changes:
            raise WhetstoneError("--accept-changes applies to --resume RUN_DIR only; a new run has nothing to compare.")
        # Without a file the defaults apply, so `--set` alone can describe a run.
        granted = [f"model.{key}=true" for key, on in grants(args).items() if on]
        config = load_config(args.config, args.set + granted)
        summary = train(config, args.output, overwrite=args.overwrite, progress=not args.quiet)
    return 0 if not summary.get("stopped_early") else 130
