"""Optuna's own views of a study, drawn by its matplotlib backend, and the search plot that holds them.

``plots/search.png`` for the optuna strategy is the common search plot (accuracy against each
hyper-parameter) with, below it, the optimization history, the parallel coordinates and the
parameter importances (fANOVA, seeded from ``search.seed``, so the figure is the same on a rerun).
A view that the study cannot give yet (importances need two finished trials) says so in its place.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fmnist.files import atomic_path  # noqa: E402
from fmnist.plots import PNG_META, search_results  # noqa: E402

VIEWS = ("optimization_history", "parallel_coordinate", "param_importances")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata=PNG_META, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _note(title: str, text: str) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 2))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return _png(fig)


def view_pngs(study, seed: int) -> dict[str, bytes]:
    """Each of :data:`VIEWS` as PNG bytes."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as views

    draw = {"optimization_history": lambda: views.plot_optimization_history(study),
            "parallel_coordinate": lambda: views.plot_parallel_coordinate(study),
            "param_importances": lambda: views.plot_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=seed))}
    out = {}
    # Optuna's views switch matplotlib to its "ggplot" style; the context puts the style back after.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name in VIEWS:
            title = name.replace("_", " ").capitalize()
            try:
                ax = draw[name]()
            except (ValueError, RuntimeError) as err:  # e.g. importances of fewer than two finished trials
                out[name] = _note(title, str(err).splitlines()[0][:120])
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(10, 4.2)
            out[name] = _png(fig)
    return out


def search_plot(rows: Sequence[dict], views: dict[str, bytes], path: str | Path) -> None:
    """The common search plot with the views below it, as one PNG (written atomically)."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        search_results(rows, Path(tmp) / "search.png")
        panels = [Image.open(Path(tmp) / "search.png").convert("RGB")]
        panels[0].load()
    panels += [Image.open(io.BytesIO(views[name])).convert("RGB") for name in VIEWS]
    width = max(p.width for p in panels)
    sheet = Image.new("RGB", (width, sum(p.height for p in panels)), "white")
    top = 0
    for panel in panels:
        sheet.paste(panel, ((width - panel.width) // 2, top))
        top += panel.height
    with atomic_path(path) as tmp_path:
        sheet.save(tmp_path, format="PNG")
