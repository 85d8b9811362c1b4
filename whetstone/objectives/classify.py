"""Transfer learning with a new head: classify a text into one of C labels.

    z = W h_last                    h_last: the decoder's hidden state at the last real token (H,)
    L = -sum_i w[y_i] * log softmax(z_i)[y_i]     summed over examples; the loop divides by their count

W is ``score``, a bias-free Linear(H, C) on the causal LM: the head of
transformers' ``*ForSequenceClassification``, so a full or freeze run's
``model/`` also loads as ``AutoModelForSequenceClassification`` (its config
carries ``num_labels``, ``id2label`` and ``label2id``). What trains beside the
new head is the method: ``freeze`` (a frozen backbone; ``top_blocks`` unfreezes
the top N blocks), ``lora`` (the head trains in full through peft's
``modules_to_save`` and is saved in ``adapter/``) or ``full``.

The text is tokenized as it is (no chat template, no EOS appended) and pooled at
its last real token, found from the attention mask: on the embedded model the
pad token IS the EOS token, so padding cannot be told apart by its id.

Class weights (Cox 1958's weighted likelihood; sklearn's ``class_weight``) scale
each example's loss by its class's weight. 'balanced' gives class c the weight
n / (C * n_c), which averages 1 over the training set, so the loss keeps its
unweighted scale.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from whetstone.config import RunConfig
from whetstone.data.dataset import DataStats
from whetstone.data.records import Record
from whetstone.errors import WhetstoneError
from whetstone.methods import is_adapter_model
from whetstone.models.forward import logits_in_fp32, unwrap
from whetstone.objectives.base import LossOutput, Objective

HEAD_NAME = "score"  # transformers' name for the sequence-classification head


@dataclass
class ClassifyExample:
    input_ids: list[int]
    label: str | None  # None: unlabelled (prediction only)
    truncated: bool


@dataclass
class ClassifySet:
    examples: list[ClassifyExample]
    origins: list[str]
    tasks: list[str | None]
    labels: list[str]  # the sorted labels found in these records

    def __len__(self) -> int:
        return len(self.examples)


def label_key(label: str) -> int:
    """A stable 56-bit integer for a label string.

    A batch must be tensors, and `collate` cannot see the head's label list (the
    eval set is prepared before the head exists), so a row carries its label as
    this key and the loss maps keys to head columns.
    """
    return int.from_bytes(hashlib.blake2b(label.encode("utf-8"), digest_size=7).digest(), "big")


def tokenize_text(tokenizer, text: str, max_length: int | None) -> tuple[list[int], bool]:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    truncated = max_length is not None and len(ids) > max_length
    return (ids[:max_length] if truncated else ids), truncated


def prepare_classification(records: list[Record], tokenizer, cfg, stats: DataStats | None = None) -> ClassifySet:
    """Token ids and label of each classification record (text, label)."""
    out = ClassifySet([], [], [], [])
    for record in records:
        if record.kind != "classification":
            raise WhetstoneError(
                f"{record.origin}: objective classify needs classification records (fields 'text' and 'label'), "
                f"but this is a {record.kind} record. Give such records, or set data.format=classification."
            )
        ids, truncated = tokenize_text(tokenizer, record.text or "", cfg.max_length)
        out.examples.append(ClassifyExample(ids, None if record.label is None else str(record.label), truncated))
        out.origins.append(record.origin)
        out.tasks.append(record.task)
        if stats is not None:
            stats.truncated += truncated
            stats.tokens += len(ids)
            stats.supervised_tokens += 1
    out.labels = sorted({e.label for e in out.examples if e.label is not None})
    return out


def collate_classification(examples: list[ClassifyExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest text; `label_keys` holds each row's `label_key` (-1: unlabelled)."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        attention_mask[row, : len(example.input_ids)] = 1
    keys = torch.tensor([label_key(e.label) if e.label is not None else -1 for e in examples], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "label_keys": keys}  # label_keys: (B,)


def count_examples(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["input_ids"].shape[0])


# ---------------------------------------------------------------------------
# The head.


def attach_classifier(model: torch.nn.Module, labels: list[str]) -> torch.nn.Linear:
    """Add a new Linear(H, C) head `score` to the transformers model under `model`; register it with peft if adapted."""
    lm = unwrap(model)
    weight = lm.get_input_embeddings().weight
    head = torch.nn.Linear(lm.config.hidden_size, len(labels), bias=False)
    # The initialisation transformers gives a fresh classification head.
    torch.nn.init.normal_(head.weight, std=getattr(lm.config, "initializer_range", 0.02))
    setattr(lm, HEAD_NAME, head.to(device=weight.device))  # fp32 on any base: it trains (methods.trainable_in_fp32)
    # So that a saved full model loads as AutoModelForSequenceClassification with named classes.
    lm.config.num_labels = len(labels)
    lm.config.id2label = dict(enumerate(labels))
    lm.config.label2id = {label: i for i, label in enumerate(labels)}
    if is_adapter_model(model):
        from peft.utils.other import set_additional_trainable_modules

        # The head trains in full beside the adapters, and PeftModel.save_pretrained stores it in adapter/.
        for adapter_name, peft_config in model.peft_config.items():
            peft_config.modules_to_save = list(peft_config.modules_to_save or []) + [HEAD_NAME]
            set_additional_trainable_modules(model, peft_config, lm.config, adapter_name)
    return getattr(lm, HEAD_NAME)


def last_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state (B, H) at each row's last real token; works for right and left padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    last = (positions * attention_mask).argmax(dim=1)  # (B,): the largest position whose mask is 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def class_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (B, C) of the classification head at each row's last real token."""
    lm = unwrap(model)
    # The decoder alone: the LM head's (B, T, V) logits would cost more than the rest and are not used.
    hidden = lm.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state  # (B, T, H)
    pooled = last_token_states(hidden, batch["attention_mask"])  # (B, H)
    return logits_in_fp32(getattr(lm, HEAD_NAME), pooled)  # (B, C)


def class_weights(spec: list[float] | str | None, labels: list[str], train_labels: list[str]) -> list[float] | None:
    """The weight of each class in `labels` order: as given, 'balanced' from the training labels, or None."""
    if spec is None:
        return None
    if spec == "balanced":
        counts = Counter(train_labels)
        missing = [label for label in labels if not counts[label]]
        if missing:
            raise WhetstoneError(
                f"objective.class_weights: 'balanced' needs every class in the training data, but {missing} have no "
                f"training example; give explicit weights, or remove those labels from objective.labels."
            )
        return [len(train_labels) / (len(labels) * counts[label]) for label in labels]
    if len(spec) != len(labels):
        raise WhetstoneError(
            f"objective.class_weights: {len(spec)} weights for {len(labels)} labels ({', '.join(labels)}, taken "
            f"from the training data); give one weight per label in that order, or set objective.labels too."
        )
    return list(spec)


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                           weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example losses (B,): w[y] * -log softmax(logits)[y]; logits (B, C), targets (B,), weights (C,)."""
    losses = F.cross_entropy(logits, targets, reduction="none")  # (B,)
    return losses * weights[targets] if weights is not None else losses


# ---------------------------------------------------------------------------
# The objective.


@dataclass
class ClassifyContext:
    labels: list[str]
    keys: torch.Tensor  # (C,): label_key of each head column
    weights: torch.Tensor | None  # (C,)


def resolve_labels(config: RunConfig, train_set: ClassifySet) -> list[str]:
    """The head's classes: objective.labels, or the training data's labels, sorted."""
    labels = config.objective.labels or train_set.labels
    unknown = sorted(set(train_set.labels) - set(labels))
    if unknown:
        raise WhetstoneError(
            f"data.train has labels {unknown} that are not in objective.labels ({', '.join(labels)}); add them "
            f"there, or fix the records."
        )
    if len(labels) < 2:
        raise WhetstoneError(
            f"data.train: every record has the label {labels}; a classifier needs at least two classes."
        )
    return list(labels)


def _check_eval_labels(config: RunConfig, labels: list[str]) -> None:
    """Fail before training, not at the first evaluation, when eval data has a class the head lacks."""
    from whetstone.data.dataset import load_splits

    _, eval_records, _ = load_splits(config.data, config.train.seed)
    unknown = sorted({str(r.label) for r in eval_records if r.label is not None} - set(labels))
    if unknown:
        raise WhetstoneError(
            f"the eval data has labels {unknown} that the head does not know (it has {', '.join(labels)}, from "
            f"{'objective.labels' if config.objective.labels else 'the training data'}); add them to "
            f"objective.labels, or fix the eval records."
        )


def setup_classify(model, config: RunConfig, train_set: ClassifySet, eval_set=None) -> ClassifyContext:
    labels = resolve_labels(config, train_set)
    if config.data.eval or config.data.eval_fraction:
        _check_eval_labels(config, labels)
    if config.method.name == "freeze" and config.method.train_head:
        # For classify "the head" is the new one. The LM head is not used, and training it would move the
        # input embeddings it is often tied to: keep the backbone frozen.
        unwrap(model).get_output_embeddings().weight.requires_grad_(False)
    head = attach_classifier(model, labels)
    weights = class_weights(config.objective.class_weights, labels, [e.label for e in train_set.examples])
    device = head.weight.device
    keys = torch.tensor([label_key(label) for label in labels], dtype=torch.long, device=device)
    return ClassifyContext(labels, keys, None if weights is None else torch.tensor(weights, device=device))


def targets_of(batch: dict[str, torch.Tensor], context: ClassifyContext) -> torch.Tensor:
    """Head column (B,) of each row's label."""
    match = batch["label_keys"][:, None] == context.keys.to(batch["label_keys"].device)[None, :]  # (B, C)
    if not bool(match.any(dim=1).all()):
        raise WhetstoneError(
            f"a record's label is not one of the head's labels ({', '.join(context.labels)}); set objective.labels "
            f"to every class, or fix the records."
        )
    return match.long().argmax(dim=1)


def classify_loss(model, batch: dict[str, torch.Tensor], context: ClassifyContext) -> LossOutput:
    logits = class_logits(model, batch)  # (B, C)
    targets = targets_of(batch, context)  # (B,)
    weights = None if context.weights is None else context.weights.to(logits.device)
    losses = weighted_cross_entropy(logits, targets, weights)
    correct = (logits.argmax(dim=1) == targets).sum()
    return LossOutput(loss_sum=losses.sum(), units=int(targets.numel()), metrics={"accuracy": float(correct)})


CLASSIFY = Objective(name="classify", prepare=prepare_classification, collate=collate_classification,
                     units=count_examples, loss=classify_loss, setup=setup_classify)
