"""Hyper-parameter search over lr, batch_size and dropout: full grid or successive halving.

Every trial trains from scratch on the (optionally subsetted) training split and is scored on the
pipeline's validation split, never by cross-validation. A trial that raises or diverges is
recorded as failed with its reason; the search goes on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fmnist.errors import SearchError
from fmnist.training import ImageSet, build_net, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares."""

    model_name: str
    head: str
    lrn: bool
    seed: int
    patience: int


def run_trial(config: dict, epochs: int, setup: TrialSetup, train: ImageSet, valid: ImageSet,
              callbacks: list | None = None) -> dict:
    """Train one configuration for ``epochs``; return its row for the trials table."""
    row = {**config, "epochs": epochs, "images_processed": 0, "valid_acc": float("nan"),
           "best_epoch": 0, "status": "ok", "error": ""}
    start = time.perf_counter()
    try:
        if config["batch_size"] > len(train):
            raise ValueError(f"batch_size={config['batch_size']} is larger than the {len(train)} training images")
        seed_everything(setup.seed)
        net = build_net(model_name=setup.model_name, input_size=train.size, head=setup.head, lrn=setup.lrn,
                        lr=config["lr"], batch_size=config["batch_size"], dropout=config["dropout"],
                        max_epochs=epochs, patience=setup.patience, seed=setup.seed, valid=valid,
                        extra_callbacks=callbacks)
        net.fit(train, y=None)
        history = net.history
        row["images_processed"] = len(history) * len(train)
        losses = np.array(history[:, "train_loss"], dtype=float)
        if not np.all(np.isfinite(losses)):
            raise FloatingPointError(f"diverged: train_loss is {losses[~np.isfinite(losses)][0]} "
                                     f"at epoch {int(np.argmin(np.isfinite(losses))) + 1}")
        accs = history[:, "valid_acc"]
        row["valid_acc"] = float(max(accs))
        row["best_epoch"] = int(np.argmax(accs)) + 1
    except Exception as err:  # a failed trial is a result, not the end of the search
        row["status"] = "failed"
        row["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
        log.warning("trial %s failed: %s", config, row["error"])
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def halving_schedule(n_candidates: int, max_epochs: int, factor: int) -> list[tuple[int, int]]:
    """Rounds of successive halving as ``(candidates, epochs)``; the last round gets ``max_epochs``.

    Round i keeps ceil(n / factor**i) candidates and gives each ``max_epochs / factor**(R-1-i)``
    epochs (at least 1), as scikit-learn's ``HalvingGridSearchCV`` does with epochs as resource.
    """
    rounds = max(1, math.ceil(math.log(n_candidates, factor)) + 1) if n_candidates > 1 else 1
    # Not more rounds than the epoch budget can tell apart.
    rounds = min(rounds, max(1, math.floor(math.log(max_epochs, factor)) + 1))
    schedule = []
    for i in range(rounds):
        candidates = max(1, math.ceil(n_candidates / factor**i))
        epochs = max(1, round(max_epochs / factor ** (rounds - 1 - i)))
        schedule.append((candidates, epochs))
    return schedule


TrialFn = Callable[[dict, int], dict]


def schedule_for(strategy: str, n_candidates: int, epochs: int, factor: int) -> list[tuple[int, int]]:
    """``grid``: one round, every candidate for ``epochs``; ``halving``: :func:`halving_schedule`."""
    if strategy == "grid":
        return [(n_candidates, epochs)]
    return halving_schedule(n_candidates, epochs, factor)


def run_rounds(configs: list[dict], schedule: list[tuple[int, int]], trial: TrialFn,
               progress: Callable[[str], None] = log.info) -> list[dict]:
    """Run rounds of trials, keeping the best candidates of each round for the next one.

    Returns every trial's row, with the round it ran in.
    """
    rows: list[dict] = []
    survivors = list(configs)
    for round_no, (n_keep, epochs) in enumerate(schedule):
        survivors = survivors[:n_keep]
        round_rows = []
        for i, config in enumerate(survivors):
            progress(f"round {round_no + 1}/{len(schedule)}, trial {i + 1}/{len(survivors)}: {config} "
                     f"for {epochs} epochs")
            row = trial(config, epochs) | {"round": round_no}
            round_rows.append(row)
            best = max(rows + round_rows, key=_score)
            progress(f"  valid_acc={row['valid_acc']:.4f} ({row['status']}); best so far "
                     f"{best['valid_acc']:.4f} with lr={best['lr']:g} batch_size={best['batch_size']} "
                     f"dropout={best['dropout']:g}")
        rows.extend(round_rows)
        ranked = sorted(zip(round_rows, survivors), key=lambda rc: _score(rc[0]), reverse=True)
        survivors = [c for r, c in ranked if r["status"] == "ok"] or survivors
    return rows


def _score(row: dict) -> float:
    return row["valid_acc"] if row["status"] == "ok" else -1.0


def best_trial(rows: list[dict]) -> dict:
    """The best successful trial of the last round it reached; raise if every trial failed."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        reasons = "; ".join(sorted({r["error"] for r in rows}))
        raise SearchError(f"all {len(rows)} search trials failed: {reasons}")
    last_round = max(r.get("round", 0) for r in ok)
    return max((r for r in ok if r.get("round", 0) == last_round), key=_score)
