"""Figures for people: training curves, confusion matrix, worst mistakes, search results."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fmnist.data import CLASS_NAMES  # noqa: E402
from fmnist.files import atomic_path  # noqa: E402

PNG_META = {"Software": None}  # no version string: the bytes depend on the data only


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=PNG_META, bbox_inches="tight")
    plt.close(fig)


def training_curves(history: Sequence[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch, train and validation, the best validation epoch marked."""
    epochs = [row["epoch"] for row in history]
    best = max(history, key=lambda r: r["valid_acc"])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((ax_loss, "loss", "Loss"), (ax_acc, "acc", "Accuracy")):
        scale = 100.0 if key == "acc" else 1.0
        for split, style in (("train", "-o"), ("valid", "-s")):
            values = [row.get(f"{split}_{key}") for row in history]
            if all(v is not None for v in values):
                ax.plot(epochs, [v * scale for v in values], style, lw=2, ms=4,
                        label=f"{'Train' if split == 'train' else 'Validation'}")
        ax.axvline(best["epoch"], color="grey", ls="--", lw=1, label=f"best epoch ({best['epoch']})")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(title + (" (%)" if key == "acc" else ""))
        ax.set_title(f"{title} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.annotate(f"{best['valid_acc'] * 100:.2f}%", (best["epoch"], best["valid_acc"] * 100),
                    textcoords="offset points", xytext=(-10, -18), ha="right")
    fig.tight_layout()
    _save(fig, path)


def confusion_matrix(cm: np.ndarray, path: str | Path, title: str = "Confusion matrix (test set)") -> None:
    """Seaborn heatmap coloured by row percentage, each cell with its count and percentage."""
    import seaborn as sns

    row_pct = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) * 100
    labels = np.array([[f"{c}\n{p:.1f}%" for c, p in zip(row, prow)] for row, prow in zip(cm, row_pct)])
    fig, ax = plt.subplots(figsize=(11, 9))
    sns.heatmap(row_pct, annot=labels, fmt="", cmap="Blues", vmin=0, vmax=100, ax=ax,
                xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, annot_kws={"size": 8},
                cbar_kws={"label": "% of the true class"})
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right")
    plt.setp(ax.get_yticklabels(), rotation=0)
    fig.tight_layout()
    _save(fig, path)


def mistakes_grid(images: np.ndarray, true: np.ndarray, pred: np.ndarray, prob: np.ndarray,
                  path: str | Path, columns: int = 6) -> None:
    """Misclassified images with true and predicted class names and the predicted probability."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.1, rows * 2.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"true: {CLASS_NAMES[true[i]]}\npred: {CLASS_NAMES[pred[i]]} ({prob[i] * 100:.1f}%)",
                     fontsize=8, color="firebrick")
    fig.suptitle("Most confident mistakes on the test set" if n else "No mistakes on the test set")
    fig.tight_layout()
    _save(fig, path)


def search_results(trials: Sequence[dict], path: str | Path) -> None:
    """Validation accuracy of every trial, against lr, batch size and dropout."""
    ok = [t for t in trials if t["status"] == "ok"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharey=True)
    for ax, key in zip(axes, ("lr", "batch_size", "dropout")):
        values = sorted({t[key] for t in ok})
        pos = {v: i for i, v in enumerate(values)}
        ax.scatter([pos[t[key]] for t in ok], [t["valid_acc"] * 100 for t in ok], s=40, alpha=0.8)
        ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Validation accuracy (%)")
    best = max(ok, key=lambda t: t["valid_acc"], default=None)
    title = f"{len(trials)} trials"
    if best:
        title += (f"; best: lr={best['lr']:g}, batch_size={best['batch_size']}, "
                  f"dropout={best['dropout']:g} ({best['valid_acc'] * 100:.2f}%)")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
