"""The `whetstone eval`, `whetstone audit` and `whetstone compare` verbs: parse, call, print.

Exit codes: 0 done, 1 `audit --strict` found memorization, 2 a usage error
(raised as ``WhetstoneError``, which the CLI prints without a traceback).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from whetstone.config import EMBEDDED_MODEL, EVAL_METRICS, ConfigError, KnowledgeConfig
from whetstone.errors import WhetstoneError
from whetstone.evaluate.fewshot import SELECTIONS
from whetstone.grants import add_grant_args, grants
from whetstone.overwrite import refuse_existing, refuse_input_as_output
from whetstone.rundir import RunDir

DEFAULT_SHOTS = 3  # the ladder's K when --shots is not given


def add_parsers(subparsers) -> None:
    """Register `eval`, `audit` and `compare`."""
    p = subparsers.add_parser(
        "eval", help="metrics, few-shot baselines, the ladder and the forgetting probe",
        description="Evaluate a model (or a run) on a data file: loss and perplexity, generation metrics, label "
        "accuracy and macro-F1, per task. --ladder compares zero-shot, K-shot and the tuned run; --forgetting "
        "measures general ability before and after tuning; --knowledge separates learnt facts from learnt style.")
    _add_model_args(p)
    p.add_argument("--data", metavar="FILE", help="records to evaluate (default: the run's data.eval, except with "
                   "--forgetting alone)")
    p.add_argument("--metrics", nargs="+", metavar="M", default=list(EVAL_METRICS),
                   help=f"any of {', '.join(EVAL_METRICS)} (default: all that apply to the records)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the first N records")
    p.add_argument("--shots", type=int, metavar="K", help=f"put K solved examples in each prompt (ladder default "
                   f"{DEFAULT_SHOTS})")
    p.add_argument("--shots-from", metavar="FILE", help="where the solved examples come from (default: the run's "
                   "data.train)")
    p.add_argument("--shot-selection", choices=SELECTIONS, default="random",
                   help="random (seeded) or similar (TF-IDF cosine to the question)")
    p.add_argument("--ladder", action="store_true", help="zero-shot, K-shot and tuned on the same examples")
    p.add_argument("--forgetting", action="store_true", help="run the general-ability probe on base and tuned")
    p.add_argument("--probe", action="append", default=[], metavar="FILE",
                   help="your own probe file (text and/or chat records) instead of examples/general_probe")
    p.add_argument("--knowledge", metavar="DIR_OR_SPEC",
                   help="knowledge against style (docs/knowledge.md): DIR holding train_wording.jsonl, "
                   "paraphrase.jsonl and heldout.jsonl, or SET=FILE items, comma-separated (DIR,heldout=H.jsonl)")
    p.add_argument("--no-base", action="store_true", help="with --knowledge: skip the base model (no style gain)")
    p.add_argument("--max-length", type=int, default=1024, metavar="N", help="tokens per example for the loss")
    p.add_argument("--answers", metavar="FILE", help="write each record's answer and reference to FILE (JSONL)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --answers FILE (never an input)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser(
        "audit", help="memorization: training-data extraction and canary exposure, against the base model",
        description="Prompt the tuned model with training prompts and count reproduced completions; rank planted "
        "canaries (data.canaries) among random alternatives. Exit 0, or 1 with --strict when it memorizes.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the run directory to audit")
    p.add_argument("--n", type=int, default=200, help="training prompts to try (default 200)")
    p.add_argument("--threshold", type=float, default=0.8,
                   help="similarity from which an answer is near-verbatim (default 0.8)")
    p.add_argument("--alternatives", type=int, default=1000, help="random secrets each canary is ranked among")
    p.add_argument("--data", metavar="FILE", help="training data to prompt with (default: the run's data.train)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--strict", action="store_true", help="exit 1 when the tuned model memorizes")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_grant_args(p)
    p.set_defaults(func=run_audit)

    p = subparsers.add_parser("compare", help="base and tuned answers side by side, scored per example")
    _add_model_args(p)
    p.add_argument("--data", metavar="FILE", help="question/answer records (default: the run's data.eval)")
    p.add_argument("--n", type=int, default=10, help="examples to show (default 10)")
    p.add_argument("--metric", default="rougeL", help="per-example score: rougeL, rouge1, rouge2, chrf, bleu, "
                   "exact_match")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run_compare)


def _run_config(run: str, flag: str = "--run") -> dict:
    """The run's config.yaml as a dict (RunDir.raw_config); a WhetstoneError naming `flag` when `run` is not a run."""
    return RunDir.open(run, flag).raw_config() or {}


def _run_objective(run: str) -> str | None:
    if not RunDir.is_run(run):
        return None  # load_for_inference says what is missing
    objective = _run_config(run).get("objective")
    return objective.get("name") if isinstance(objective, dict) else objective


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"base model (default: the embedded {EMBEDDED_MODEL})")
    p.add_argument("--adapter", default=None, help="a PEFT adapter directory, a run directory, or a name in the adapter library")
    p.add_argument("--run", default=None, metavar="RUN_DIR", help="a run: its base model plus its adapter or model")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest generated answer (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts generated together (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_grant_args(p)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise WhetstoneError(f"--{name}: got {value}; must be a positive integer.")


def _run_data(run: str | None, key: str, flag: str) -> str:
    """The run's data.eval or data.train, for when --data / --shots-from is left out."""
    if run is None:
        raise WhetstoneError(f"{flag} is required without --run (a run knows its own data).")
    value = (_run_config(run).get("data") or {}).get(key)
    if isinstance(value, list):  # a list of sources: the first one's path
        value = value[0].get("path") if value and isinstance(value[0], dict) else None
    if not value:
        raise WhetstoneError(f"--run {run}: its config has no data.{key}; pass {flag} FILE.")
    return value


def _device(name: str) -> str:
    from whetstone.train.device import resolve_device

    return str(resolve_device(name))


def _records(path: str, limit: int | None = None):
    from whetstone.data.formats import load_records
    from whetstone.evaluate.harness import limit_records

    return limit_records(load_records(path).records, limit)


# ---------------------------------------------------------------------------
# eval: every argument checked at once, then one small function per mode.


@dataclass
class EvalInputs:
    """What `eval`'s arguments resolve to, once every one of them has been checked."""

    metrics: list[str]
    data: str | None  # the records to evaluate; None with --forgetting or --knowledge alone
    shots_k: int  # solved examples in each prompt (0: zero-shot)
    shots_from: str | None  # where they come from
    knowledge: KnowledgeConfig | None  # the --knowledge sets


def check_eval_args(args: argparse.Namespace) -> EvalInputs:
    """Every problem with `eval`'s arguments, in one error; or what they resolve to. Nothing is loaded."""
    from whetstone.evaluate.harness import check_metrics
    from whetstone.evaluate.knowledge import parse_spec

    problems: list[str] = []

    def collect(check, *check_args):
        """check(*check_args), or None with its error added to the problems."""
        try:
            return check(*check_args)
        except WhetstoneError as exc:
            problems.append(str(exc))
            return None

    for name in ("limit", "max_new_tokens", "batch_size", "max_length"):
        collect(_positive, name.replace("_", "-"), getattr(args, name))
    if args.probe and not args.forgetting:
        problems.append("--probe names the forgetting probe; add --forgetting.")
    if args.no_base and not args.knowledge:
        problems.append("--no-base belongs to --knowledge; add --knowledge DIR.")
    if args.knowledge and args.shots:
        problems.append("--shots does not apply to --knowledge: its sets ask zero-shot, as after tuning.")
    if (args.ladder or args.forgetting) and args.run is None and args.adapter is None:
        problems.append("--ladder and --forgetting compare the base model with a fine-tuned one; pass --run "
                        "RUN_DIR, or --model M --adapter DIR.")
    if args.run is not None and collect(_run_objective, args.run) == "classify":
        problems.append(f"{args.run} is a classifier: its answers come from its head, which `eval` does not read. "
                        f"Score it with `whetstone predict --run {args.run} --data FILE`.")
    metrics = collect(check_metrics, args.metrics)
    # --forgetting or --knowledge alone runs only that; otherwise the data defaults to the run's data.eval.
    alone = (args.forgetting or args.knowledge) and not args.ladder
    data = args.data or (None if alone else collect(_run_data, args.run, "eval", "--data"))
    shots_k = args.shots if args.shots is not None else (DEFAULT_SHOTS if args.ladder else 0)
    shots_from = None
    if shots_k < 0:
        problems.append(f"--shots: got {args.shots}; give a number of solved examples, e.g. 3.")
    elif args.ladder and shots_k == 0:
        problems.append("--ladder --shots 0 would run zero-shot twice; give K >= 1 solved examples, e.g. 3.")
    elif shots_k:
        shots_from = args.shots_from or collect(_run_data, args.run, "train", "--shots-from")
    knowledge = collect(parse_spec, args.knowledge) if args.knowledge else None
    if args.answers:
        for source in [data, shots_from, *args.probe, *(knowledge.paths().values() if knowledge else ())]:
            collect(refuse_input_as_output, source, args.answers, "eval")
        collect(refuse_existing, args.answers, args.overwrite)
    if problems:  # a run that is not one is said once, however many of its files were needed
        raise ConfigError(list(dict.fromkeys(problems)), "the eval command line")
    return EvalInputs(metrics, data, shots_k, shots_from, knowledge)


@dataclass
class EvalModels:
    """The model `eval` measures, and the base beside it when a mode compares the two."""

    model: object
    tokenizer: object
    who: str  # how the report names the model
    pair: object | None  # the evaluate.pair.ModelPair, when the base is loaded too


def _load_models(args: argparse.Namespace, compare_base: bool) -> EvalModels:
    from whetstone.evaluate.pair import ModelPair
    from whetstone.models.inference import load_for_inference

    device = _device(args.device)
    if compare_base:
        pair = ModelPair.load(args.model, args.adapter, args.run, device, **grants(args))
        return EvalModels(pair.tuned, pair.tokenizer, pair.description, pair)
    model, tokenizer = load_for_inference(args.model, args.adapter, args.run, device=device, **grants(args))
    who = args.run or (f"{args.model or EMBEDDED_MODEL}" + (f" + {args.adapter}" if args.adapter else ""))
    return EvalModels(model, tokenizer, who, None)


def run_eval(args: argparse.Namespace) -> int:
    from whetstone.evaluate.harness import EvalOptions

    inputs = check_eval_args(args)
    options = EvalOptions(inputs.metrics, args.max_new_tokens, args.batch_size, args.max_length)
    # Every file is read before any model loads: a bad one fails at once.
    records = _records(inputs.data, args.limit) if inputs.data else []
    pool = _records(inputs.shots_from) if inputs.shots_from else []
    probe = None
    if args.forgetting:
        from whetstone.evaluate.forgetting import load_probe

        probe = load_probe(args.probe)
    sets = None
    if inputs.knowledge is not None:
        from whetstone.evaluate.knowledge import load_sets

        sets = load_sets(inputs.knowledge, args.limit)
    tuned_model = args.run is not None or args.adapter is not None
    models = _load_models(args, args.ladder or args.forgetting or (sets is not None and tuned_model
                                                                   and not args.no_base))
    report: dict = {"data": inputs.data, "model": models.who}
    lines: list[str] = []
    answers = None
    if args.ladder:
        answers = _eval_ladder(args, inputs, models, records, pool, options, report, lines)
    elif records:
        answers = _eval_records(args, inputs, models, records, pool, options, report, lines)
    if args.answers and answers is not None:
        reasoning = answers.reasoning or [None] * len(records)
        _write_rows(args.answers, [{"origin": r.origin, "answer": a, "reference": ref}
                                   | ({"reasoning": t} if t is not None else {})
                                   for r, a, ref, t in zip(records, answers.answers, answers.references, reasoning)])
    if sets is not None:
        _eval_knowledge(args, inputs, models, sets, options, report, lines, write_answers=answers is None)
    if probe is not None:
        _eval_forgetting(args, models, probe, report, lines)
    print(json.dumps(report, indent=1, ensure_ascii=False) if args.json else "\n".join(lines))
    return 0


def _eval_ladder(args, inputs: EvalInputs, models: EvalModels, records, pool, options, report: dict,
                 lines: list[str]):
    """--ladder: zero-shot, K-shot and tuned on the same records. Returns the tuned rung's result."""
    from whetstone.evaluate.ladder import ladder_dict, render_ladder, run_ladder, task_metric

    rungs = run_ladder(models.pair, records, pool, inputs.shots_k, args.shot_selection, args.seed, options)
    metric = task_metric(inputs.metrics, rungs)
    report["ladder"] = ladder_dict(rungs, metric)
    source = args.shots_from or "data.train"
    lines.append(f"ladder: {models.who} on {inputs.data}, {len(records)} records, shots from {source} "
                 f"({args.shot_selection}, seed {args.seed})")
    lines.append(render_ladder(rungs, metric))
    return rungs[-1].result


def _eval_records(args, inputs: EvalInputs, models: EvalModels, records, pool, options, report: dict,
                  lines: list[str]):
    """The metrics of one model on the records, zero- or K-shot. Returns its result."""
    from whetstone.evaluate.harness import evaluate

    shots = None
    if inputs.shots_k:
        from whetstone.evaluate.fewshot import shots_for_records

        shots = shots_for_records(records, pool, inputs.shots_k, args.shot_selection, args.seed)
    result = evaluate(models.model, models.tokenizer, records, options, shots)
    report["eval"] = result.to_dict()
    lines += [f"eval: {models.who} on {inputs.data}: {len(records)} records"
              + (f", {inputs.shots_k}-shot" if inputs.shots_k else ""), render_result(result, options)]
    return result


def _eval_knowledge(args, inputs: EvalInputs, models: EvalModels, sets, options, report: dict, lines: list[str],
                    write_answers: bool) -> None:
    """--knowledge: learnt facts against learnt style; a run keeps the figures in its knowledge.json."""
    from whetstone.evaluate.knowledge import measure_knowledge

    base = models.pair.base if models.pair is not None and not args.no_base else None  # a base alone is its own base
    result = measure_knowledge(models.model, models.tokenizer, sets, options, base, models.who,
                               inputs.knowledge.paths())
    report["knowledge"] = result.to_dict()
    lines.append(result.table())
    if args.run is not None:  # the run keeps its figures, with every answer, beside summary.json
        RunDir(args.run).file(RunDir.KNOWLEDGE).write_text(
            json.dumps(result.to_dict(answers=True), indent=1, ensure_ascii=False) + "\n")
    if args.answers and write_answers:
        _write_rows(args.answers, [{"set": name, **row}
                                   for name, set_rows in result.to_dict(answers=True)["answers"].items()
                                   for row in set_rows])


def _eval_forgetting(args, models: EvalModels, probe, report: dict, lines: list[str]) -> None:
    """--forgetting: the general-ability probe on the base and the tuned model."""
    from whetstone.evaluate.forgetting import measure_forgetting

    forgetting = measure_forgetting(models.pair, probe, args.batch_size)
    report["forgetting"] = forgetting.to_dict()
    lines.append(forgetting.sentence())


def _write_rows(path: str, rows: list[dict]) -> None:
    Path(path).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def render_result(result, options) -> str:
    """The metrics of one evaluation, a few per line, then the per-task table."""
    m = result.metrics
    lines = []
    if "loss" in m:
        lines.append(f"  loss {m['loss']:.4f}  perplexity {m['perplexity']:.2f}  "
                     f"({result.counts.get('loss_tokens', 0):,} answer tokens)")
    scores = [f"{k} {m[k]:.2f}" if k in ("chrf", "bleu") else f"{k} {m[k]:.3f}"
              for k in ("exact_match", "chrf", "bleu", "rouge1", "rouge2", "rougeL", "accuracy", "macro_f1") if k in m]
    if scores:
        lines.append("  " + "  ".join(scores))
    if result.generated:
        lines.append(f"  generated {result.generated} answers in {result.generation_s:.1f} s: "
                     f"{result.examples_per_s:.2f} examples/s (batch {options.batch_size}, up to "
                     f"{options.max_new_tokens} new tokens)")
    if len(result.per_task) > 1:
        keys = [k for k in ("loss", "exact_match", "chrf", "bleu", "rougeL", "accuracy", "macro_f1")
                if any(k in t for t in result.per_task.values())]
        lines.append("  per task: " + "  ".join(keys))
        for task, values in result.per_task.items():
            cells = "  ".join(f"{values[k]:.3f}" if k in values else "-" for k in keys)
            lines.append(f"    {task}: {cells}")
    return "\n".join(lines)


def run_audit(args: argparse.Namespace) -> int:
    from whetstone.evaluate.audit import audit_run

    for name in ("n", "alternatives", "max_new_tokens", "batch_size"):
        _positive(name.replace("_", "-"), getattr(args, name))
    report = audit_run(args.run, args.n, args.threshold, args.alternatives, args.max_new_tokens, args.batch_size,
                       args.seed, args.data, _device(args.device), **grants(args))
    print(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) if args.json else report.verdict())
    return 1 if args.strict and report.memorizes else 0


def run_compare(args: argparse.Namespace) -> int:
    from whetstone.evaluate.compare import PER_EXAMPLE, compare_answers, render_comparison
    from whetstone.evaluate.pair import ModelPair

    for name in ("n", "max_new_tokens", "batch_size"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if args.metric not in PER_EXAMPLE:
        raise WhetstoneError(f"--metric: got {args.metric!r}; choose one of {', '.join(PER_EXAMPLE)}.")
    data = args.data or _run_data(args.run, "eval", "--data")
    records = _records(data)
    pair = ModelPair.load(args.model, args.adapter, args.run, _device(args.device), **grants(args))
    rows = compare_answers(pair, records, args.n, args.metric, args.max_new_tokens, args.batch_size)
    print(json.dumps(rows, indent=1, ensure_ascii=False) if args.json else render_comparison(rows, args.metric))
    return 0
