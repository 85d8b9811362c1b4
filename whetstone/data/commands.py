"""The `whetstone data check`, `clean`, `replay`, `show`, `synth` and `paraphrase` verbs: parse, call, print.

Exit codes: 0 clean, 1 the data has errors, 2 a usage error (raised as
``WhetstoneError``, which the CLI prints without a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from whetstone.data.check import check_file
from whetstone.data.clean import CleanOptions, clean_file
from whetstone.data.dedup import DEFAULT_THRESHOLD
from whetstone.data.formats import FORMATS, open_records
from whetstone.data.replay import ReplayOptions
from whetstone.data.show import DEFAULT_EXAMPLES, ShowOptions
from whetstone.data.synth.grounding import THRESHOLD as GROUNDING_THRESHOLD
from whetstone.data.synth.paraphrase import MAX_WORDINGS
from whetstone.data.synth.synth import DEFAULT_WORDINGS, SynthOptions
from whetstone.errors import WhetstoneError


def add_parsers(data_subparsers) -> None:
    """Register `check`, `clean`, `replay`, `show`, `synth` and `paraphrase` under the `data` verb."""
    _add_check(data_subparsers)
    _add_clean(data_subparsers)
    _add_replay(data_subparsers)
    _add_show(data_subparsers)
    _add_synth(data_subparsers)
    _add_paraphrase(data_subparsers)


def _add_check(data_subparsers) -> None:
    """`data check`: everything wrong with a data file."""
    p = data_subparsers.add_parser(
        "check",
        help="report bad records, duplicates, train/eval leaks, PII and token lengths",
        description="Stream FILE and report everything wrong with it. "
        "Exit 0 when clean, 1 on errors, 2 on usage errors.",
    )
    p.add_argument("file", help="JSONL, JSON, CSV, TSV or Parquet (optionally .gz), or hf:NAME[:SPLIT]")
    p.add_argument("--eval", metavar="FILE", help="an eval file to check for overlap with FILE")
    p.add_argument("--model", metavar="M", help="measure token lengths with this model's tokenizer and chat template")
    p.add_argument(
        "--max-length", type=int, metavar="N", help="count records that N tokens would truncate (needs --model)"
    )
    _add_common(p)
    p.add_argument("--no-near-dedup", action="store_true", help="skip near-duplicate detection (faster)")
    p.add_argument("--strict", action="store_true", help="treat duplicates and PII as errors (exit 1)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run_check)


def _add_clean(data_subparsers) -> None:
    """`data clean`: a cleaned copy of a data file."""
    p = data_subparsers.add_parser(
        "clean",
        help="write a cleaned copy of a data file and a report of what changed",
        description="Write the cleaned rows of IN to OUT (IN is never modified) and OUT.report.jsonl listing "
        "every dropped or changed record.",
    )
    p.add_argument("input", metavar="IN")
    p.add_argument(
        "output", metavar="OUT", help="its extension picks the format: .jsonl, .json, .csv, .tsv, .parquet (+.gz)"
    )
    p.add_argument("--dedup", action="store_true", help="drop exact duplicates (the first copy is kept)")
    p.add_argument("--near-dedup", action="store_true", help="drop near duplicates (the first of each group is kept)")
    p.add_argument("--redact-pii", action="store_true", help="replace emails, phones, cards, IPs, IBANs and secrets")
    p.add_argument("--drop-invalid", action="store_true", help="drop invalid records instead of stopping")
    p.add_argument("--strip", action="store_true", help="strip leading and trailing whitespace from every string")
    p.add_argument("--min-tokens", type=int, metavar="N", help="drop records shorter than N tokens (needs --model)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="drop records longer than N tokens (needs --model)")
    p.add_argument("--model", metavar="M", help="the tokenizer for --min-tokens/--max-tokens")
    _add_common(p)
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and its report) if they exist")
    p.set_defaults(func=run_clean)


def _add_replay(data_subparsers) -> None:
    """`data replay`: the model's own requests and answers."""
    p = data_subparsers.add_parser(
        "replay",
        help="write self-replay data: the model's own requests and answers, for data.replay",
        description="Let the model write N user requests from its own distribution and answer them greedily, and "
        "write them as chat records to OUT (JSONL). Mixed into training with data.replay, they hold forgetting "
        "down when there is no general data at hand (docs/knowledge.md).",
    )
    p.add_argument("output", metavar="OUT", help="a .jsonl file")
    p.add_argument("--model", metavar="M", help="the base model (default: the embedded model)")
    p.add_argument("-n", type=int, default=ReplayOptions.n, metavar="N",
                   help="distinct requests to sample and answer; those answered within --answer-tokens are "
                   "written (default %(default)s)")
    p.add_argument("--answer-tokens", type=int, default=ReplayOptions.answer_tokens, metavar="T",
                   help="longest answer; answers that reach it unfinished are dropped (default %(default)s)")
    p.add_argument("--temperature", type=float, default=ReplayOptions.temperature, metavar="T",
                   help="sampling temperature of the requests (default %(default)s)")
    p.add_argument("--answer-temperature", type=float, default=ReplayOptions.answer_temperature, metavar="T",
                   help="sampling temperature of the answers; 0 is greedy, which measured better "
                   "(docs/knowledge.md; default %(default)s)")
    p.add_argument("--requests", metavar="FILE", help="answer the user turns of these chat records instead of "
                   "sampling requests")
    p.add_argument("--request-start", action="append", default=[], metavar="WORDS",
                   help="begin sampled requests with WORDS, in turn with the other --request-start values (e.g. "
                   "--request-start What --request-start Who for short questions); repeatable")
    p.add_argument("--batch-size", type=int, default=ReplayOptions.batch_size, metavar="B")
    p.add_argument("--seed", type=int, default=ReplayOptions.seed)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run_replay)


def _add_show(data_subparsers) -> None:
    """`data show`: the first examples as the trainer sees them."""
    p = data_subparsers.add_parser(
        "show",
        help="print the first examples as the trainer sees them: tokens, supervised spans, truncation",
        description="Render the first N examples of DATA with the model's tokenizer and chat template, through the "
        "same code the sft trainer uses, and print them with their special tokens. Supervised tokens are green on "
        "a terminal and wrapped in [[...]] otherwise; a truncated example ends with '... truncated at L tokens "
        "(N in full)'. Loads a tokenizer only, never weights.",
    )
    p.add_argument("data", metavar="DATA", help="a data file (any format `data check` reads), or hf:NAME[:SPLIT]")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="M", help="an embedded model's name (default: the embedded model), a "
                       "model directory, or a directory holding only tokenizer files")
    which.add_argument("--tokenizer", metavar="DIR", help="the same as --model: a tokenizer (or model) directory")
    p.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template to use instead of the tokenizer's "
                   "(data.chat_template)")
    p.add_argument("-n", type=int, default=DEFAULT_EXAMPLES, metavar="N",
                   help="how many examples to print (default %(default)s)")
    p.add_argument("--max-length", type=int, default=ShowOptions.max_length, metavar="L",
                   help="truncate examples to L tokens, as data.max_length does (default %(default)s)")
    p.add_argument("--reasoning", choices=("keep", "drop", "auto"), default=ShowOptions.reasoning,
                   help="assistant reasoning, as data.reasoning: keep, drop, or auto (the template decides; default)")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS), metavar="F",
                   help=f"the data format: auto (detect, the default), {', '.join(FORMATS)}")
    p.add_argument("--json", action="store_true", help='one JSON object per example: {"record", "input_ids", '
                   '"labels"}, labels -100 where not supervised')
    p.set_defaults(func=run_show)


def _add_teacher(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", metavar="M", help="the model that writes and rewords questions: an embedded name, a "
                   "model directory or hub id, a run directory, or none (templates and extraction only); with "
                   "--teacher-url, the model id to ask for (default: the first the endpoint lists). Default: the "
                   "embedded model")
    p.add_argument("--teacher-url", metavar="URL", help="an OpenAI-compatible endpoint's base URL, e.g. "
                   "http://127.0.0.1:8000/v1 for `whetstone serve`")
    p.add_argument("--teacher-key-env", metavar="NAME", help="the environment variable holding the endpoint's key "
                   "(default OPENAI_API_KEY, sent only when set)")
    p.add_argument("--wordings", type=int, metavar="N", help=f"wordings of each question, 1 to {MAX_WORDINGS} "
                   f"(default %(default)s)")
    p.add_argument("--batch-size", type=int, default=SynthOptions.batch_size, metavar="B",
                   help="conversations per teacher call (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (data synth: and start again) if it exists")


def _add_synth(data_subparsers) -> None:
    """`data synth`: checked question-answer pairs from documents."""
    p = data_subparsers.add_parser(
        "synth",
        help="write question-answer training data from documents, every answer checked against its source",
        description="Cut DOCS into sections, find the facts they state (by rule and with a teacher model), keep the "
        "pairs whose answer the section supports, write each in --wordings wordings as chat records with their "
        "provenance, and check the result as `data check` does. Killed part-way, a rerun goes on from the last "
        "finished chunk (docs/data.md).",
    )
    p.add_argument("docs", nargs="+", metavar="DOCS", help=".txt, .md, .html, manual pages (ls.1, ls.1.gz), .jsonl "
                   "with a text field, or directories of them")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="a .jsonl file")
    _add_teacher(p)
    p.set_defaults(wordings=DEFAULT_WORDINGS)
    p.add_argument("--eval", metavar="FILE", help="an eval file: report the pairs that overlap it")
    p.add_argument("--text-field", default="text", metavar="F", help="the field of .jsonl records that holds the "
                   "text (default %(default)s)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N chunks (a rerun with a larger N goes on)")
    p.add_argument("--grounding", type=float, default=GROUNDING_THRESHOLD, metavar="T",
                   help="the share of an answer's content words its section must contain (default %(default)s, "
                   "measured: docs/data.md)")
    p.set_defaults(func=run_synth)


def _add_paraphrase(data_subparsers) -> None:
    """`data paraphrase`: more wordings of the questions of Q&A data."""
    p = data_subparsers.add_parser(
        "paraphrase",
        help="write every question of Q&A data in several wordings, answers unchanged",
        description="For each single-turn chat record of IN, write the question and N-1 rewordings of it (the "
        "teacher's, then template frames where it gives fewer), each with the same answer, to OUT (JSONL).",
    )
    p.add_argument("input", metavar="IN", help="chat data in any format `data check` reads")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="a .jsonl file")
    _add_teacher(p)
    p.set_defaults(wordings=DEFAULT_WORDINGS, func=run_paraphrase)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        default="auto",
        choices=("auto", *FORMATS),
        metavar="F",
        help=f"the data format: auto (detect, the default), {', '.join(FORMATS)}",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="J",
        help=f"Jaccard similarity from which records are near duplicates (default {DEFAULT_THRESHOLD})",
    )


def _tokenizer(model: str | None):
    if model is None:
        return None
    from whetstone.models import load_tokenizer  # lazy: imports transformers

    return load_tokenizer(model)


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise WhetstoneError(
            f"--threshold must be a Jaccard similarity in (0, 1], got {threshold}; the default is {DEFAULT_THRESHOLD}."
        )


def run_check(args: argparse.Namespace) -> int:
    _check_threshold(args.threshold)
    if args.max_length is not None and args.model is None:
        raise WhetstoneError("--max-length needs --model: token lengths depend on the model's tokenizer.")
    report = check_file(
        args.file,
        eval_path=args.eval,
        format=args.format,
        tokenizer=_tokenizer(args.model),
        max_length=args.max_length,
        near_dedup=not args.no_near_dedup,
        threshold=args.threshold,
        strict=args.strict,
    )
    print(json.dumps(report.to_dict(), ensure_ascii=False, indent=1) if args.json else report.render())
    return 1 if report.has_errors else 0


def run_clean(args: argparse.Namespace) -> int:
    _check_threshold(args.threshold)
    for name in ("min_tokens", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise WhetstoneError(f"--{name.replace('_', '-')} must be a number of tokens >= 0, got {value}.")
    if (args.min_tokens is not None or args.max_tokens is not None) and args.model is None:
        raise WhetstoneError("--min-tokens and --max-tokens need --model: token counts depend on the tokenizer.")
    options = CleanOptions(
        dedup=args.dedup,
        near_dedup=args.near_dedup,
        redact_pii=args.redact_pii,
        drop_invalid=args.drop_invalid,
        strip=args.strip,
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
        overwrite=args.overwrite,
        format=args.format,
        threshold=args.threshold,
        tokenizer=_tokenizer(args.model),
    )
    print(clean_file(args.input, args.output, options).render())
    return 0


def run_replay(args: argparse.Namespace) -> int:
    if args.temperature <= 0:
        raise WhetstoneError(f"--temperature must be > 0 (requests are sampled), got {args.temperature}.")
    if args.answer_temperature < 0:
        raise WhetstoneError(f"--answer-temperature must be >= 0 (0: greedy), got {args.answer_temperature}.")
    if args.batch_size < 1 or args.answer_tokens < 2:
        raise WhetstoneError("--batch-size must be >= 1 and --answer-tokens >= 2.")
    from whetstone.data.replay import check_output, read_requests, write_self_replay
    from whetstone.models.inference import load_for_inference  # lazy: imports torch

    options = ReplayOptions(n=args.n, answer_tokens=args.answer_tokens, temperature=args.temperature,
                            answer_temperature=args.answer_temperature, batch_size=args.batch_size, seed=args.seed,
                            starts=tuple(args.request_start))
    if args.requests and options.starts:
        raise WhetstoneError("--request-start steers sampled requests; --requests gives them. Use one of the two.")
    if any(not start.strip() for start in options.starts):
        raise WhetstoneError("--request-start: give words, e.g. --request-start What.")
    check_output(args.output, options, args.overwrite, args.requests)
    requests = read_requests(args.requests) if args.requests else None
    model, tokenizer = load_for_inference(model=args.model)
    report = write_self_replay(model, tokenizer, args.output, options, overwrite=args.overwrite, requests=requests)
    print(report.render(args.output))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from whetstone.data.show import json_line, load_show_tokenizer, render_shown, shown_examples

    options = ShowOptions(n=args.n, max_length=args.max_length, reasoning=args.reasoning, format=args.format)
    stream = open_records(args.data, options.format)  # a missing file is reported before the tokenizer loads
    tokenizer = load_show_tokenizer(args.tokenizer or args.model, args.chat_template)
    items = shown_examples(stream, tokenizer, options)
    if args.json:
        for item in items:
            if item.example is None:
                print(f"note: {item.origin} gives no example: truncation removed every supervised token",
                      file=sys.stderr)
            else:
                print(json_line(item))
        return 0
    colour = sys.stdout.isatty()
    legend = "supervised tokens in green, special tokens underlined" if colour else \
        "supervised tokens between double square brackets"
    lines = render_shown(items, tokenizer, colour)
    first = next(lines, None)  # rendered before the header, so that a record the template refuses is the only output
    print(f"whetstone data show: {args.data} ({stream.explanation}; max_length {options.max_length}, reasoning "
          f"{options.reasoning}; {legend})")
    if first is not None:
        print(first)
    for line in lines:
        print(line)
    return 0


def _check_teacher_args(args: argparse.Namespace) -> None:
    from whetstone.data.synth.paraphrase import check_wordings

    check_wordings(args.wordings)
    if args.batch_size < 1:
        raise WhetstoneError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.teacher_key_env is not None and args.teacher_url is None:
        raise WhetstoneError("--teacher-key-env names the key of --teacher-url; give the endpoint's URL too.")
    if args.teacher == "none" and args.teacher_url is not None:
        raise WhetstoneError("--teacher none asks for no teacher, --teacher-url for an endpoint; use one of the two.")


def run_synth(args: argparse.Namespace) -> int:
    from whetstone.data.synth.chunks import list_documents
    from whetstone.data.synth.synth import synthesize
    from whetstone.data.synth.teacher import load_teacher

    _check_teacher_args(args)
    if args.limit is not None and args.limit < 1:
        raise WhetstoneError(f"--limit must be a number of chunks >= 1, got {args.limit}.")
    if not 0.0 < args.grounding <= 1.0:
        raise WhetstoneError(f"--grounding must be a share in (0, 1], got {args.grounding}; the default is "
                             f"{GROUNDING_THRESHOLD}.")
    if not args.output.endswith(".jsonl"):
        raise WhetstoneError(f"data synth: write to a .jsonl file (-o OUT.jsonl), got {args.output}.")
    list_documents(args.docs)  # a missing document is reported before a teacher loads
    options = SynthOptions(wordings=args.wordings, threshold=args.grounding, text_field=args.text_field,
                           batch_size=args.batch_size, limit=args.limit)
    teacher = load_teacher(args.teacher, args.teacher_url, args.teacher_key_env, args.batch_size)
    report = synthesize(args.docs, args.output, teacher, options, overwrite=args.overwrite)
    print(report.render(args.output))
    print()
    check = check_file(args.output, eval_path=args.eval)
    print(check.render())
    return 1 if check.has_errors else 0


def run_paraphrase(args: argparse.Namespace) -> int:
    from whetstone.data.synth.paraphrase import paraphrase_file
    from whetstone.data.synth.teacher import load_teacher

    _check_teacher_args(args)
    if not args.output.endswith(".jsonl"):
        raise WhetstoneError(f"data paraphrase: write to a .jsonl file (-o OUT.jsonl), got {args.output}.")
    if not os.path.isfile(args.input):
        raise WhetstoneError(f"data paraphrase: {args.input} does not exist; give a file of Q&A records.")
    teacher = load_teacher(args.teacher, args.teacher_url, args.teacher_key_env, args.batch_size)
    report = paraphrase_file(args.input, args.output, args.wordings, teacher, overwrite=args.overwrite,
                             batch_size=args.batch_size)
    print(report.render(args.output))
    return 0
