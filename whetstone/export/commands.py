"""The verbs that ship a run: `export`, `adapters`, `serve` and `report`. Parse, call, print."""

from __future__ import annotations

import argparse
import json
import os
import sys

from whetstone.errors import WhetstoneError


def add_parsers(sub) -> None:
    """Register export, adapters, serve and report on the top-level subparsers."""
    from whetstone.cli import add_grant_args
    from whetstone.export import DTYPES, FORMATS

    p = sub.add_parser("export", help="write a run as a PEFT adapter, a merged HF model or a GGUF file",
                       description="Export RUN_DIR and check it: the exported tokenizer must render and stop like "
                                   "training, and the exported logits must match base + adapter.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--dtype", choices=sorted({d for ds in DTYPES.values() for d in ds}),
                   help="f32 | f16 | bf16, and q8_0 for gguf (default: f32 for peft and merged, f16 for gguf)")
    p.add_argument("-o", "--output", default=None,
                   help="output directory (peft, merged) or .gguf file (default: RUN_DIR/export/...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-verify", action="store_true", help="skip loading the export back to compare logits")
    p.add_argument("--gguf-pre", default=None, metavar="NAME",
                   help="llama.cpp pre-tokenizer name, when it cannot be detected (e.g. llama-bpe, qwen2)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_grant_args(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("adapters", help="the local adapter library: one base, many tasks")
    p.add_argument("--library", default=None, metavar="DIR",
                   help="library directory (default: $WHETSTONE_ADAPTERS or ~/.local/share/whetstone/adapters)")
    verbs = p.add_subparsers(dest="adapters_command", required=True)
    q = verbs.add_parser("list", help="every adapter, and the storage saved against full copies")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_adapters_list)
    q = verbs.add_parser("add", help="copy a run's adapter into the library under NAME")
    q.add_argument("name")
    q.add_argument("source", metavar="RUN_DIR", help="a run directory, or an adapter directory")
    q.add_argument("--task", default=None, help="the task it was trained for (default: from the run's data)")
    q.add_argument("--base", default=None, help="the base model, when the source does not say")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=_cmd_adapters_add)
    q = verbs.add_parser("remove", help="delete an adapter from the library")
    q.add_argument("name")
    q.set_defaults(func=_cmd_adapters_remove)
    q = verbs.add_parser("show", help="one adapter's details")
    q.add_argument("name")
    q.set_defaults(func=_cmd_adapters_show)

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
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("report", help="(re)write RUN_DIR/report.html")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--samples", type=int, default=0, metavar="N",
                   help="first answer N eval prompts with the base and the tuned model (samples.jsonl)")
    p.add_argument("--screenshot", default=None, metavar="PNG", help="also save a screenshot (needs Chromium)")
    p.set_defaults(func=_cmd_report)


# ---------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    from whetstone.cli import grants
    from whetstone.export.formats import export_run
    from whetstone.report.page import human_bytes

    result = export_run(args.run, args.format, args.output, args.dtype, overwrite=args.overwrite,
                        verify=not args.no_verify, gguf_pre=args.gguf_pre, **grants(args))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"exported {args.format} ({result.dtype}): {result.path} ({human_bytes(result.bytes)}, "
          f"{result.seconds} s)")
    if result.logit_delta is not None:
        print(f"  logits vs base + adapter: max |delta| {result.logit_delta:.3g} (tolerance {result.tolerance:.3g}), "
              f"top-1 agreement {100 * result.top1_agreement:.1f}%")
    for line in result.checks:
        print(f"  ok: {line}")
    for line in result.notes:
        print(f"  note: {line}")
    return 0


def _library(args):
    from whetstone.adapters import AdapterLibrary

    return AdapterLibrary(args.library)


def _cmd_adapters_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from whetstone.adapters import storage_by_base
    from whetstone.report.page import human_bytes

    library = _library(args)
    entries = library.entries()
    storage = storage_by_base(entries)
    if args.json:
        print(json.dumps({"adapters": [asdict(e) for e in entries.values()],
                          "storage": [asdict(s) | {"saved_bytes": s.saved_bytes} for s in storage]}, indent=2))
        return 0
    if not entries:
        print(f"no adapters in {library.root}; add one with `whetstone adapters add NAME RUN_DIR`.")
        return 0
    rows = [("NAME", "BASE", "TASK", "METRICS", "SIZE")]
    for e in entries.values():
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in list(e.metrics.items())[:3]) or "-"
        rows.append((e.name, e.base, e.task or "-", metrics, human_bytes(e.bytes)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for s in storage:
        print(f"\n{s.base}: {s.adapters} adapter(s) take {human_bytes(s.adapter_bytes)} on one shared base of "
              f"{human_bytes(s.base_bytes)}; {s.adapters} full copies would take {human_bytes(s.full_copies_bytes)}. "
              f"Saved: {human_bytes(s.saved_bytes)}.")
    return 0


def _cmd_adapters_add(args: argparse.Namespace) -> int:
    from whetstone.report.page import human_bytes

    entry = _library(args).add(args.name, args.source, task=args.task, base=args.base, overwrite=args.overwrite)
    print(f"added {entry.name}: {entry.method} r={entry.rank} on {entry.base}, task {entry.task or '-'}, "
          f"{human_bytes(entry.bytes)}")
    return 0


def _cmd_adapters_remove(args: argparse.Namespace) -> int:
    entry = _library(args).remove(args.name)
    print(f"removed {entry.name}")
    return 0


def _cmd_adapters_show(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    library = _library(args)
    entry = library.get(args.name)
    adapter_config = json.loads((library.path(args.name) / "adapter_config.json").read_text())
    details = asdict(entry) | {"path": str(library.path(args.name)),
                               "lora": {k: adapter_config.get(k) for k in ("r", "lora_alpha", "target_modules",
                                                                           "use_dora", "use_rslora")}}
    print(json.dumps(details, indent=2, default=list))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from whetstone.cli import grants
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


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from whetstone.report import write_report

    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise WhetstoneError(f"{run}: not a run directory (no config.yaml in it).")
    if args.samples:
        from whetstone.report.samples import write_samples

        print(f"samples: {write_samples(run, args.samples)}")
    out = write_report(run)
    print(f"report: {out}")
    if args.screenshot:
        from whetstone.report.browser import screenshot

        print(f"screenshot: {screenshot(out, Path(args.screenshot))}")
    return 0
