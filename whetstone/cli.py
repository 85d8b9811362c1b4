"""The command line: parse, call, print. Every verb's work lives in its own module.

train, generate and chat are here; every other verb is registered by its package's commands.py (add_parsers).
"""

from __future__ import annotations

import argparse
import os
import sys

from whetstone.classify.commands import add_parsers as add_predict_parsers
from whetstone.config import EMBEDDED_MODEL
from whetstone.data.commands import add_parsers as add_data_parsers
from whetstone.errors import WhetstoneError
from whetstone.evaluate.commands import add_parsers as add_eval_parsers
from whetstone.export.commands import add_parsers as add_export_parsers
from whetstone.grants import add_grant_args, grants
from whetstone.label.commands import add_parsers as add_label_parsers
from whetstone.objectives.commands import add_parsers as add_score_parsers
from whetstone.plan.commands import add_parsers as add_plan_parsers
from whetstone.report.commands import add_parsers as add_report_parsers
from whetstone.serve.commands import add_parsers as add_serve_parsers


def _cmd_train(args: argparse.Namespace) -> int:
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


def _cmd_generate(args: argparse.Namespace) -> int:
    from whetstone.models.inference import generate_answers, load_for_inference

    model, tokenizer = load_for_inference(args.model, args.adapter, args.run, **grants(args))
    messages = [{"role": "user", "content": args.prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    (answer,) = generate_answers(model, tokenizer, [messages], args.max_new_tokens, args.temperature, seed=args.seed)
    print(answer)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from whetstone.models.inference import generate_answers, load_for_inference

    model, tokenizer = load_for_inference(args.model, args.adapter, args.run, **grants(args))
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    print("Chatting; an empty line or Ctrl-D ends. /reset clears the history.", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line:
            return 0
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": line})
        (answer,) = generate_answers(model, tokenizer, [history], args.max_new_tokens, args.temperature, seed=args.seed)
        history.append({"role": "assistant", "content": answer})
        print(f"model> {answer}")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"base model (default: the embedded {EMBEDDED_MODEL})")
    p.add_argument("--adapter", default=None, help="a PEFT adapter directory, a run directory, or a name in the adapter library")
    p.add_argument("--run", default=None, help="a run directory: its base model plus its adapter or model")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--seed", type=int, default=0)
    add_grant_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whetstone", description="Fine-tune language models for a task or domain.")
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("generate", help="answer one prompt")
    _add_model_args(p)
    p.add_argument("prompt")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("chat", help="an interactive conversation")
    _add_model_args(p)
    p.set_defaults(func=_cmd_chat)

    data = sub.add_parser("data", help="check and clean training data")
    add_data_parsers(data.add_subparsers(dest="data_command", required=True))  # check, clean, show, replay
    add_eval_parsers(sub)  # eval, audit, compare
    add_export_parsers(sub)  # export, adapters
    add_serve_parsers(sub)  # serve
    add_report_parsers(sub)  # report
    add_score_parsers(sub)  # score
    add_label_parsers(sub)  # label prepare | serve | stats | export
    add_predict_parsers(sub)  # predict
    add_plan_parsers(sub)  # plan
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WhetstoneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
