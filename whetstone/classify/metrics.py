"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

Accuracy and macro-F1 are the ones in evaluate/metrics.py (macro-F1 averages over
every class that is gold or predicted, as sklearn does), so a head run and a
generative run scored here and by `whetstone eval` give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from whetstone.evaluate.metrics import accuracy, macro_f1


def confusion_matrix(predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """matrix[i][j]: examples of gold class labels[i] predicted as labels[j]."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for predicted, gold in zip(predictions, golds, strict=True):
        matrix[index[gold]][index[predicted]] += 1
    return matrix


def per_class(predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support (gold count) of each class; 0 where undefined (sklearn's zero_division=0)."""
    out = {}
    for c in labels:
        tp = sum(p == c and g == c for p, g in zip(predictions, golds))
        fp = sum(p == c and g != c for p, g in zip(predictions, golds))
        fn = sum(p != c and g == c for p, g in zip(predictions, golds))
        out[c] = {
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "support": tp + fn,
        }
    return out


def classification_report(predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str]) -> dict:
    """Every figure of one set of predictions, JSON-ready; classes outside `labels` are appended, sorted."""
    classes = list(labels) + sorted((set(golds) | set(predictions)) - set(labels))
    return {
        "n": len(golds),
        "accuracy": round(accuracy(predictions, golds), 6),
        "macro_f1": round(macro_f1(predictions, golds), 6),
        "per_class": {c: {k: round(v, 6) for k, v in s.items()} for c, s in per_class(predictions, golds, classes).items()},
        "confusion_matrix": {"labels": classes, "rows": "gold", "columns": "predicted",
                             "matrix": confusion_matrix(predictions, golds, classes)},
    }


def render_report(report: dict, indent: str = "  ") -> str:
    """Accuracy, macro-F1 and the confusion matrix (rows gold, columns predicted) as text."""
    lines = [f"{indent}accuracy {report['accuracy']:.3f}  macro_f1 {report['macro_f1']:.3f}  (n={report['n']})"]
    classes = report["confusion_matrix"]["labels"]
    matrix = report["confusion_matrix"]["matrix"]
    width = max(8, *(len(c) for c in classes)) + 1
    corner = "gold \\ predicted"
    first = max(len(corner), *(len(c) for c in classes)) + 1
    lines.append(f"{indent}{corner:<{first}}" + "".join(f"{c:>{width}}" for c in classes))
    for c, row in zip(classes, matrix):
        lines.append(f"{indent}{c:<{first}}" + "".join(f"{n:>{width}}" for n in row))
    return "\n".join(lines)
