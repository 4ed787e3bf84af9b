"""Test-set scores from predicted class probabilities, and the files evaluate keeps them in.

The headline figures (accuracy, log loss, macro F1) go to one metrics file, the columns that
``dvc exp show`` compares runs by; the per-class precision, recall, F1 and support go to their
own file, out of that table but at hand (``dvc metrics show metrics/per_class.json``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

from fmnist.data import CLASS_NAMES
from fmnist.files import atomic_open, write_json

CLASSES = range(len(CLASS_NAMES))
PROB_FLOOR = 1e-7  # a probability of 0 for the true class would make the log loss infinite


def classification_scores(labels: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
    """``test_accuracy``, ``test_loss`` (log loss), ``test_macro_f1`` and ``per_class``:
    ``{class name: {precision, recall, f1, support}}``, from ``(N,)`` labels and ``(N, 10)``
    probabilities; the prediction is each row's most probable class."""
    pred = prob.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=CLASSES, zero_division=0)
    return {
        "test_accuracy": float((pred == labels).mean()),
        "test_loss": float(log_loss(labels, np.clip(prob, PROB_FLOOR, 1), labels=CLASSES)),
        "test_macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(CLASS_NAMES, precision, recall, f1, support)},
    }


def headline(scores: dict[str, Any]) -> dict[str, Any]:
    """The scores without the per-class table."""
    return {k: v for k, v in scores.items() if k != "per_class"}


def confusion(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(10, 10)`` counts: row = actual class, column = predicted class."""
    return confusion_matrix(labels, pred, labels=CLASSES)


def most_confident_mistakes(labels: np.ndarray, prob: np.ndarray, n: int) -> np.ndarray:
    """Indices of at most ``n`` wrong predictions, the most confident first (ties in index order)."""
    pred = prob.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    return wrong[np.argsort(-prob[wrong, pred[wrong]], kind="stable")][:n]


def rounded(obj: Any, digits: int = 6) -> Any:
    """Floats rounded, also inside dicts, so the files do not change with the last bits of a sum."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    return obj


def write_scores(scores: dict[str, Any], headline_path: str | Path, per_class_path: str | Path) -> None:
    """The headline scores and the per-class table, each in its own JSON file."""
    write_json(headline_path, rounded(headline(scores)))
    write_json(per_class_path, rounded({"per_class": scores["per_class"]}))


def write_predictions(path: str | Path, labels: np.ndarray, pred: np.ndarray) -> None:
    """``actual,predicted`` class names, one row per image: what DVC's ``confusion`` template draws."""
    with atomic_open(path) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["actual", "predicted"])
        writer.writerows((CLASS_NAMES[a], CLASS_NAMES[p]) for a, p in zip(labels, pred))
