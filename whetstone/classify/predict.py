"""Predict labels: with a classify run's head, or generatively by label likelihood.

Two predictors answer the same question ("which label, with what probability?"):

- ``HeadClassifier``: a run trained with ``objective: classify``. p = softmax(W h_last).
- ``GenerativeClassifier``: any causal LM (the base model zero-shot, or an SFT
  run trained with the label as the completion). Each label is scored as the
  assistant's answer to ``classification_prompt(text, labels)`` by the sum of
  its tokens' log-probabilities (evaluate/scoring.py, the same ranking as
  ``whetstone eval``); p = softmax of those sums over the labels.

Both return `Prediction`s, so a head and a generative run are compared on the
same records with the same metrics (classify/metrics.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from whetstone.config import RunConfig
from whetstone.data.records import Message
from whetstone.errors import WhetstoneError
from whetstone.evaluate.fewshot import classification_prompt
from whetstone.evaluate.scoring import answer_candidates, candidate_logprobs
from whetstone.objectives.classify import (
    HEAD_NAME,
    ClassifyExample,
    attach_classifier,
    class_logits,
    collate_classification,
    tokenize_text,
)
from whetstone.rundir import RunDir


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]  # label -> probability, in the predictor's label order


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class HeadClassifier:
    model: torch.nn.Module
    tokenizer: object
    labels: list[str]
    max_length: int
    kind: str = "head"

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 16) -> list[Prediction]:
        self.model.eval()
        examples = [ClassifyExample(tokenize_text(self.tokenizer, t, self.max_length)[0], None, False) for t in texts]
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # less padding, same result
        out: list[Prediction | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = collate_classification([examples[i] for i in rows], self.tokenizer.pad_token_id)
            batch = {k: v.to(_device(self.model)) for k, v in batch.items()}
            probs = torch.softmax(class_logits(self.model, batch), dim=-1).tolist()  # (b, C)
            for i, p in zip(rows, probs):
                out[i] = _prediction(self.labels, p)
        return out  # type: ignore[return-value]


@dataclass
class GenerativeClassifier:
    model: torch.nn.Module
    tokenizer: object
    labels: list[str]
    max_length: int
    kind: str = "generative"

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 16) -> list[Prediction]:
        out = []
        for text in texts:
            prompt = (Message("user", classification_prompt(text, self.labels)),)
            candidates = answer_candidates(prompt, self.labels, self.tokenizer, self.max_length)
            scores = torch.tensor(candidate_logprobs(self.model, candidates, self.tokenizer.pad_token_id, batch_size))
            out.append(_prediction(self.labels, torch.softmax(scores, dim=0).tolist()))
        return out


def _prediction(labels: list[str], probabilities: list[float]) -> Prediction:
    best = max(range(len(labels)), key=lambda i: (probabilities[i], -i))  # ties: the first label, as rank_labels
    return Prediction(labels[best], {label: round(p, 6) for label, p in zip(labels, probabilities)})


# ---------------------------------------------------------------------------
# Loading.


def run_config(run: str | Path, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> RunConfig:
    """A run's config, whose model gets only the powers granted here (see run_model_config)."""
    return RunDir.open(run).config(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def write_labels(run: str | Path, labels: list[str]) -> None:
    """labels.json: the head's classes, in column order."""
    RunDir(run).file(RunDir.LABELS).write_text(json.dumps({"labels": labels}, ensure_ascii=False, indent=1) + "\n")


def read_labels(run: str | Path) -> list[str]:
    path = RunDir(run).file(RunDir.LABELS)
    if not path.is_file():
        raise WhetstoneError(f"--run {run}: no {RunDir.LABELS}; it is written when training finishes. Did the run finish? "
                             f"(see its summary.json)")
    return list(json.loads(path.read_text())["labels"])


def load_head_classifier(run: str | Path, device: torch.device | str = "cpu", *, trust_remote_code: bool = False,
                         allow_pickle: bool = False) -> HeadClassifier:
    """The classifier of a finished `objective: classify` run: base + adapter + head, or model/ + head."""
    from whetstone.models import load_tokenizer
    from whetstone.models.headed import load_headed_run

    path = Path(run)
    config = run_config(path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    labels = read_labels(path)
    tokenizer = load_tokenizer(config.model, config.data.chat_template)
    model = load_headed_run(path, config, lambda m: attach_classifier(m, labels), HEAD_NAME, f"--run {run}", device)
    return HeadClassifier(model, tokenizer, labels, config.data.max_length)


def load_predictor(run: str | None, model: str | None, labels: list[str] | None, data_labels: list[str] = (),
                   device: torch.device | str = "cpu", *, trust_remote_code: bool = False,
                   allow_pickle: bool = False) -> HeadClassifier | GenerativeClassifier:
    """A classify run's head; or, for any other run or a plain model, label likelihood over `labels`.

    `labels` are the ones the user gave (a head must agree with them); `data_labels`, those found in the
    data, are the default classes for label likelihood. The grants are what the model may do (run_model_config).
    """
    from whetstone.models.inference import load_for_inference

    grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    config = run_config(run, **grants) if run is not None else None
    if config is not None and config.objective.name == "classify":
        classifier = load_head_classifier(run, device, **grants)
        if labels is not None and labels != classifier.labels:
            raise WhetstoneError(f"--labels {' '.join(labels)}: the run's head predicts {', '.join(classifier.labels)} "
                                 f"(in that order); leave --labels out for a classify run.")
        return classifier
    labels = labels or list(data_labels)
    if len(labels) < 2:
        raise WhetstoneError(
            f"{run or model or 'the base model'} has no classification head, so it is scored by label likelihood, "
            f"which needs at least two labels: pass --labels, or give data whose records carry labels."
        )
    lm, tokenizer = load_for_inference(model, None, run, device=str(device), **grants)
    max_length = config.data.max_length if config is not None else 1024
    return GenerativeClassifier(lm, tokenizer, list(labels), max_length)
