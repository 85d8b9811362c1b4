"""The `whetstone plan` verb: parse, call, print."""

from __future__ import annotations

import argparse
import json

from whetstone.errors import WhetstoneError


def add_parsers(subparsers) -> None:
    """Register `plan` among the top-level verbs."""
    p = subparsers.add_parser(
        "plan",
        help="predict each method's parameters, memory, FLOPs, time and storage for a run config",
        description="Count parameters exactly, measure activations and step time with a short probe on this "
        "machine, and print one row per method. See docs/plan.md for the model and its assumptions.",
    )
    p.add_argument("config", nargs="?", help="the run config (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--methods", default="full,freeze,lora,dora,qlora",
                   help="comma-separated methods to plan (default: full,freeze,lora,dora,qlora)")
    p.add_argument("--memory-budget", metavar="SIZE", help="recommend the cheapest method whose peak fits, e.g. 8GB")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the run will train (default cpu)")
    p.add_argument("--peak-tflops", type=float, metavar="T",
                   help="the device's peak TFLOP/s, for --device cuda when no GPU is here to probe, and for a "
                        "plan from config.json alone (--gpu or --memory)")
    p.add_argument("--gpu", metavar="NAME",
                   help="with --device cuda: plan for this GPU from the model's config.json alone, without loading "
                        "the weights (H100-80GB, A100-40GB, A100-80GB, L4-24GB, RTX4090-24GB)")
    p.add_argument("--memory", metavar="SIZE",
                   help="with --device cuda: one GPU's memory (e.g. 48GB), for a GPU --gpu does not name; with "
                        "--device cpu: the machine's memory. Plans from config.json alone, with --peak-tflops")
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="GPUs sharing the run under FSDP/ZeRO-3: weights, gradients and optimizer states / N")
    p.add_argument("--utilisation", type=float, default=0.4, metavar="U",
                   help="share of --peak-tflops a training step reaches (default 0.4)")
    p.add_argument("--variants", type=int, default=10, metavar="K",
                   help="task variants for the storage column (default 10)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from whetstone.config import load_config
    from whetstone.plan.estimate import PlanOptions, parse_size
    from whetstone.plan.planner import parse_methods, plan_methods, render_table

    if args.variants < 1:
        raise WhetstoneError(f"--variants: got {args.variants}; give the number of task variants, 1 or more.")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise WhetstoneError(f"--peak-tflops: got {args.peak_tflops}; give the device's peak in TFLOP/s, e.g. 989.")
    if args.gpus < 1:
        raise WhetstoneError(f"--gpus: got {args.gpus}; give the number of GPUs, 1 or more.")
    if args.gpu is not None and args.device != "cuda":
        raise WhetstoneError("--gpu plans a CUDA run from config.json alone; add --device cuda (or, for a CPU run "
                             "planned the same way, give --memory and --peak-tflops instead).")
    if args.gpus > 1 and args.device != "cuda":
        raise WhetstoneError("--gpus: sharding across GPUs needs --device cuda.")
    if args.gpus > 1 and args.gpu is None and args.memory is None:
        raise WhetstoneError("--gpus: sharding is planned from config.json alone; add --device cuda --gpu NAME "
                             "(or --memory and --peak-tflops).")
    if not 0.0 < args.utilisation <= 1.0:
        raise WhetstoneError(f"--utilisation: got {args.utilisation}; must be in (0, 1], e.g. 0.4.")
    options = PlanOptions(
        methods=parse_methods(args.methods),
        device=args.device,
        variants=args.variants,
        peak_tflops=args.peak_tflops,
        utilisation=args.utilisation,
        budget=parse_size(args.memory_budget) if args.memory_budget is not None else None,
        gpu=args.gpu,
        memory=parse_size(args.memory, "--memory") if args.memory is not None else None,
        gpus=args.gpus,
    )
    config = load_config(args.config, args.set)
    plan = plan_methods(config, options)
    print(json.dumps(plan.to_dict(), indent=1) if args.json else render_table(plan, args.variants))
    return 0
