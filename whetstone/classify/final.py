"""The end of a classify run: save the head's labels, and score the head on the eval records.

evaluate/final.py calls `classify_final` in place of the generation metrics for
`objective: classify`; what it returns goes into summary.json as ``final_eval``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from whetstone.classify.metrics import classification_report, render_report
from whetstone.classify.predict import HeadClassifier, write_labels
from whetstone.config import RunConfig
from whetstone.data.records import Record
from whetstone.models.forward import unwrap


def head_labels(model: torch.nn.Module) -> list[str]:
    """The classes of the head attached by objectives/classify.py, in column order."""
    id2label = unwrap(model).config.id2label
    return [id2label[i] for i in range(len(id2label))]


def classify_final(model: torch.nn.Module, tokenizer, config: RunConfig, run_path: Path,
                   eval_records: list[Record]) -> dict:
    """Write labels.json; with eval data, {"final_eval": accuracy, macro-F1, per class, confusion matrix}."""
    labels = head_labels(model)
    write_labels(run_path, labels)
    labelled = [r for r in eval_records if r.label is not None]
    if config.eval.final_limit:
        labelled = labelled[: config.eval.final_limit]
    if not labelled:
        return {}
    classifier = HeadClassifier(model, tokenizer, labels, config.data.max_length)
    predictions = classifier.predict([r.text or "" for r in labelled], config.train.batch_size)
    report = classification_report([p.label for p in predictions], [str(r.label) for r in labelled], labels)
    print("eval (head):\n" + render_report(report), flush=True)
    return {"final_eval": report}
