"""The `whetstone serve` verb: parse, call, print. The server itself is whetstone/serve/server.py."""

from __future__ import annotations

import argparse
import os
import sys

from whetstone.errors import WhetstoneError
from whetstone.grants import add_grant_args, grants


def add_parsers(sub) -> None:
    """Register serve on the top-level subparsers."""
    p = sub.add_parser("serve", help="a local OpenAI-compatible server (chat, completions, models)")
    p.add_argument("--model", default=None, help="base model (default: the adapters' base, else the embedded one)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME|NAME=DIR",
                   help="serve an adapter under the model id NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("WHETSTONE_API_KEY"),
                   help="require 'Authorization: Bearer KEY'; prefer setting $WHETSTONE_API_KEY (the default), since "
                        "every user on the machine can read a command line with `ps`")
    p.add_argument("--max-tokens", type=int, default=512, help="most new tokens per request")
    p.add_argument("--max-body-kb", type=int, default=1024, help="largest request body, in KiB")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take, waiting included")
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a client has to send a whole request; a slower one is disconnected")
    p.add_argument("--max-connections", type=int, default=8, help="open connections at once; past it, 503")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps")
    p.add_argument("--quiet", action="store_true", help="no request log")
    add_grant_args(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from whetstone.serve import Engine, ServeLimits, adapter_paths, check_adapter_tokenizers, make_server

    for name, value in (("--max-tokens", args.max_tokens), ("--max-body-kb", args.max_body_kb),
                        ("--timeout", args.timeout), ("--read-timeout", args.read_timeout),
                        ("--max-connections", args.max_connections)):
        if value <= 0:
            raise WhetstoneError(f"{name}: got {value}; must be positive.")
    model, adapters = adapter_paths(args.adapter, args.model, **grants(args))
    engine = Engine(model, adapters, device=args.device, **grants(args))
    check_adapter_tokenizers(engine)
    limits = ServeLimits(args.max_tokens, args.max_body_kb * 1024, args.timeout, args.read_timeout,
                         args.max_connections)
    server = make_server(engine, args.host, args.port, args.api_key, limits, log=not args.quiet)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach this port can use it.",
              file=sys.stderr)
    host, port = server.server_address[:2]
    print(f"serving {', '.join(engine.model_ids)} on http://{host}:{port}/v1 "
          f"({'API key required' if args.api_key else 'no API key'}); Ctrl-C stops.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
