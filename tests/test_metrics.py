"""evaluate's scores on six predictions worked out by hand, and the two files they go to."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fmnist.data import CLASS_NAMES
from fmnist.metrics import (classification_scores, confusion, headline, most_confident_mistakes, rounded,
                            write_predictions, write_scores)

LABELS = np.array([0, 0, 1, 1, 2, 3])
# The probability of each row's class: predictions 0, 1, 1, 1, 2, 2 (rows 1 and 5 wrong).
ROWS = [{0: 0.7, 1: 0.3}, {0: 0.4, 1: 0.6}, {1: 0.9, 0: 0.1}, {1: 0.5, 0: 0.25, 2: 0.25}, {2: 1.0},
        {2: 0.95, 3: 0.05}]


@pytest.fixture()
def prob() -> np.ndarray:
    out = np.zeros((len(ROWS), len(CLASS_NAMES)))
    for i, row in enumerate(ROWS):
        for k, p in row.items():
            out[i, k] = p
    return out


def test_scores_worked_out_by_hand(prob):
    scores = classification_scores(LABELS, prob)
    assert scores["test_accuracy"] == pytest.approx(4 / 6)
    true_class = [0.7, 0.4, 0.9, 0.5, 1.0, 0.05]
    assert scores["test_loss"] == pytest.approx(-sum(map(math.log, true_class)) / 6, abs=1e-5)
    per_class = scores["per_class"]
    assert list(per_class) == list(CLASS_NAMES)
    assert per_class["T-shirt/top"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert per_class["Trouser"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert per_class["Pullover"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert per_class["Dress"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # never predicted
    assert per_class["Bag"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}  # not in the set
    assert scores["test_macro_f1"] == pytest.approx((2 / 3 + 0.8 + 2 / 3) / 10)  # over all ten classes
    assert headline(scores) == {k: scores[k] for k in ("test_accuracy", "test_loss", "test_macro_f1")}


def test_confusion_and_the_most_confident_mistakes(prob):
    cm = confusion(LABELS, prob.argmax(axis=1))
    expected = np.zeros((10, 10), int)
    for actual, predicted in ((0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (3, 2)):
        expected[actual, predicted] += 1
    assert (cm == expected).all()
    assert most_confident_mistakes(LABELS, prob, 24).tolist() == [5, 1]  # 0.95 before 0.6
    assert most_confident_mistakes(LABELS, prob, 1).tolist() == [5]
    assert most_confident_mistakes(LABELS, prob, 0).tolist() == []


def test_the_headline_and_the_per_class_scores_go_to_their_own_files(prob, tmp_path):
    scores = classification_scores(LABELS, prob)
    write_scores(scores, tmp_path / "evaluate.json", tmp_path / "per_class.json")
    assert json.loads((tmp_path / "evaluate.json").read_text()) == {
        "test_accuracy": 0.666667, "test_loss": round(scores["test_loss"], 6), "test_macro_f1": 0.213333}
    per_class = json.loads((tmp_path / "per_class.json").read_text())
    assert per_class == {"per_class": rounded(scores["per_class"])}
    assert per_class["per_class"]["Trouser"] == {"precision": 0.666667, "recall": 1.0, "f1": 0.8, "support": 2}


def test_predictions_file_names_the_classes(prob, tmp_path):
    write_predictions(tmp_path / "predictions.csv", LABELS, prob.argmax(axis=1))
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "actual,predicted"
    assert lines[1:3] == ["T-shirt/top,T-shirt/top", "T-shirt/top,Trouser"]
    assert lines[-1] == "Dress,Pullover" and len(lines) == 7
