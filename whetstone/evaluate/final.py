"""End-of-training evaluation: what the config's `eval:` asks for once the last step is done.

The training loop calls `final_evaluation` once, before it writes summary.json,
and merges the returned dict into the summary:

    final_eval     eval.metrics beyond loss (exact_match, chrf, bleu, rouge, accuracy,
                   macro_f1) on the first eval.final_limit eval records
    forgetting     with eval.forgetting: the general probe on the base and the tuned
                   model, and the deltas
    knowledge      with eval.knowledge: the three knowledge sets on the tuned model and its
                   base, and the knowledge, wording-only and style gains (every answer goes
                   to knowledge.json); knowledge_*_gain repeat the ROUGE-L gains at top level
    canaries       with data.canaries: how many were planted (the secrets go to
                   canaries.json for `whetstone audit`)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from whetstone.config import RunConfig
from whetstone.data.canaries import make_canaries
from whetstone.data.records import Record
from whetstone.evaluate.forgetting import load_probe, measure_forgetting
from whetstone.evaluate.harness import EvalOptions, evaluate
from whetstone.evaluate.pair import ModelPair
from whetstone.rundir import RunDir


def final_evaluation(model: torch.nn.Module, tokenizer, config: RunConfig, run_path: Path,
                     eval_records: list[Record]) -> dict:
    """Run what `config.eval` and `config.data.canaries` ask for; {} when they ask for nothing."""
    out: dict = {}
    model = getattr(model, "module", model)  # under DistributedDataParallel: the model itself
    if config.data.canaries:
        canaries = make_canaries(config.data.canaries, config.train.seed)
        payload = {"seed": config.train.seed, "canaries": [{"index": c.index, "secret": c.secret} for c in canaries]}
        RunDir(run_path).write_json(RunDir.CANARIES, payload)
        out["canaries"] = len(canaries)

    metrics = [m for m in config.eval.metrics if m != "loss"]
    if config.objective.name == "classify":
        from whetstone.classify.final import classify_final

        # The head predicts the label: labels.json, accuracy, macro-F1 and the confusion matrix come from it.
        out.update(classify_final(model, tokenizer, config, run_path, eval_records))
        metrics = []
    if metrics or config.eval.forgetting or config.eval.knowledge:
        model.eval()
    if metrics:
        if not eval_records:
            print(f"eval: eval.metrics asks for {', '.join(metrics)}, but there is no eval data; set data.eval or "
                  f"data.eval_fraction.", flush=True)
        else:
            records = eval_records[: config.eval.final_limit] if config.eval.final_limit else eval_records
            options = EvalOptions(metrics, config.eval.max_new_tokens, config.eval.generation_batch_size,
                                  config.data.max_length)
            out["final_eval"] = evaluate(model, tokenizer, records, options).to_dict()
            shown = {k: v for k, v in out["final_eval"].items() if k not in ("per_task", "n")}
            print("eval: " + ", ".join(f"{k} {v}" for k, v in shown.items()), flush=True)

    if config.eval.forgetting:
        pair = ModelPair(model, tokenizer, config.model, "the tuned model")
        report = measure_forgetting(pair, load_probe(config.eval.probe_files()), config.eval.generation_batch_size)
        out["forgetting"] = report.to_dict()
        print(report.sentence(), flush=True)

    knowledge = config.eval.knowledge_sets()
    if knowledge is not None:
        from whetstone.evaluate.knowledge import load_sets, measure_knowledge

        pair = ModelPair(model, tokenizer, config.model, "the tuned model")
        options = EvalOptions((), config.eval.max_new_tokens, config.eval.generation_batch_size, config.data.max_length)
        report = measure_knowledge(model, tokenizer, load_sets(knowledge), options,
                                   pair.base if knowledge.base else None, "the tuned model", knowledge.paths())
        RunDir(run_path).file(RunDir.KNOWLEDGE).write_text(json.dumps(report.to_dict(answers=True), indent=1,
                                                                  ensure_ascii=False) + "\n")
        out["knowledge"] = report.to_dict()
        out.update(report.headline())  # flat: trackers log top-level numbers
        print(report.table(), flush=True)
    return out
