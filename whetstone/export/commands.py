"""The verbs that ship a run: `export` and `adapters`. Parse, call, print.

`serve` is in whetstone/serve/commands.py, `report` in whetstone/report/commands.py.
"""

from __future__ import annotations

import argparse
import json

from whetstone.grants import add_grant_args, grants


def add_parsers(sub) -> None:
    """Register export and adapters on the top-level subparsers."""
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


# ---------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
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
