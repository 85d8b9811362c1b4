"""`whetstone generate` and `whetstone chat`: answers from a model, an adapter or a run."""

from __future__ import annotations

import argparse
import sys

from whetstone.config import EMBEDDED_MODEL
from whetstone.grants import add_grant_args, grants


def add_parsers(sub) -> None:
    p = sub.add_parser("generate", help="answer one prompt")
    _add_model_args(p)
    p.add_argument("prompt")
    p.set_defaults(func=run_generate)

    p = sub.add_parser("chat", help="an interactive conversation")
    _add_model_args(p)
    p.set_defaults(func=run_chat)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"base model (default: the embedded {EMBEDDED_MODEL})")
    p.add_argument("--adapter", default=None, help="a PEFT adapter directory, a run directory, or a name in the adapter library")
    p.add_argument("--run", default=None, help="a run directory: its base model plus its adapter or model")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--seed", type=int, default=0)
    add_grant_args(p)


def run_generate(args: argparse.Namespace) -> int:
    from whetstone.models.inference import generate_answers, load_for_inference

    model, tokenizer = load_for_inference(args.model, args.adapter, args.run, **grants(args))
    messages = [{"role": "user", "content": args.prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    (answer,) = generate_answers(model, tokenizer, [messages], args.max_new_tokens, args.temperature, seed=args.seed)
    print(answer)
    return 0


def run_chat(args: argparse.Namespace) -> int:
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
