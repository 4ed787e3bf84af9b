"""A one-page Markdown report of a run: the metrics tables and the plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from fmnist.files import atomic_open


def write_report(path: str | Path, metrics: dict, history: Sequence[dict], images: Sequence[Path],
                 model: str = "") -> None:
    """``metrics`` as evaluate computes them, ``history`` as train writes it, ``images`` to show,
    ``model`` a line on what was measured."""
    path = Path(path)
    best = max(history, key=lambda r: r["valid_acc"])
    lines = [
        "# Evaluation report",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| test accuracy | {metrics['test_accuracy'] * 100:.2f}% |",
        f"| test loss | {metrics['test_loss']:.4f} |",
        f"| test macro F1 | {metrics['test_macro_f1']:.4f} |",
        f"| best validation accuracy | {best['valid_acc'] * 100:.2f}% (epoch {best['epoch']} of {len(history)}) |",
        *([f"| model | {model} |"] if model else []),
        "",
        "| class | precision | recall | F1 | images |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    for image in images:
        rel = Path(os.path.relpath(image, path.parent)).as_posix()
        lines += ["", f"![{image.stem.replace('_', ' ')}]({rel})"]
    with atomic_open(path) as f:
        f.write("\n".join(lines) + "\n")
