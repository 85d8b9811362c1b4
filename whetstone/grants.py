"""The powers only the command line grants: running a model's own code, and reading pickle weights.

A run directory's config.yaml may ask for them, but never grants them: every verb that loads a model
takes `--trust-remote-code` and `--allow-pickle` (add_grant_args) and passes `**grants(args)` on.
"""

from __future__ import annotations

import argparse


def add_grant_args(p: argparse.ArgumentParser) -> None:
    """--trust-remote-code and --allow-pickle: powers only the command line grants, never a run directory."""
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code shipped with the model (a run's config.yaml asking for it is not enough)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickle (.bin/.pt) weights; they are still loaded with weights_only=True")


def grants(args: argparse.Namespace) -> dict[str, bool]:
    """The keyword arguments (trust_remote_code, allow_pickle) the loaders take."""
    return {"trust_remote_code": args.trust_remote_code, "allow_pickle": args.allow_pickle}
