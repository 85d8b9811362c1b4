"""The command line: parse, call, print. Every verb's flags and work live with its package: each package's
commands.py registers its verbs (add_parsers), in the order below, which is the order of `whetstone --help`.
"""

from __future__ import annotations

import argparse
import os
import sys

from whetstone.classify.commands import add_parsers as add_predict_parsers
from whetstone.data.commands import add_parsers as add_data_parsers
from whetstone.errors import WhetstoneError
from whetstone.evaluate.commands import add_parsers as add_eval_parsers
from whetstone.export.commands import add_parsers as add_export_parsers
from whetstone.label.commands import add_parsers as add_label_parsers
from whetstone.models.commands import add_parsers as add_model_parsers
from whetstone.objectives.commands import add_parsers as add_score_parsers
from whetstone.plan.commands import add_parsers as add_plan_parsers
from whetstone.report.commands import add_parsers as add_report_parsers
from whetstone.serve.commands import add_parsers as add_serve_parsers
from whetstone.train.commands import add_parsers as add_train_parsers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whetstone", description="Fine-tune language models for a task or domain.")
    sub = parser.add_subparsers(dest="command", required=True)

    add_train_parsers(sub)  # train
    add_model_parsers(sub)  # generate, chat
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
