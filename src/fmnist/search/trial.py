"""One trial, on whichever worker runs it: train a combination, score it, log it.

A callback may end a trial early by raising :class:`TrialStopped` (Optuna's pruner does, through
:mod:`fmnist.search.optuna_search`): the trial is then ``pruned``, scored on the epochs it trained,
and its MLflow run ends FINISHED with the tag ``fmnist.pruned_epoch``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from skorch.callbacks import Callback

from fmnist.allocator import tune_malloc_for
from fmnist.batches import ImageSet
from fmnist.checkpoint import net_state, restore_net_state
from fmnist.compute import Compute, seed_everything
from fmnist.model import ModelSpec
from fmnist.params import HyperParams, ModelParams
from fmnist.search.schedule import Task
from fmnist.training import FitSettings, MlflowEpochLogger, build_net

log = logging.getLogger(__name__)

# A trial whose epoch loss passes this many times the loss of guessing (ln 10) has diverged: Adam at
# lr=1 drives AlexNet's loss to 1e16 without ever reaching NaN.
DIVERGED_FACTOR = 100.0


class TrialStopped(Exception):
    """Raised by a callback at the end of an epoch to stop the trial there: it is pruned, not failed."""


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares."""

    model: ModelParams  # the params' model section; its precision is resolved on the machine that runs the trial
    seed: int
    epochs: int  # the full budget; the cosine learning-rate schedule spans it
    cv: int = 0  # 0: score on the validation split; k >= 2: stratified k-fold on the training images
    threads: int = 0  # torch threads per trial; 0: cores // trials at once on the machine


@dataclass(frozen=True, eq=False)
class SearchData:
    """The arrays every trial reads: numpy, so that joblib memory-maps them for local workers and
    Dask sends them to each worker once. ``valid_*`` are None when scoring by k-fold."""

    train_images: np.ndarray
    train_labels: np.ndarray
    valid_images: np.ndarray | None = None
    valid_labels: np.ndarray | None = None


@dataclass(frozen=True)
class TrackingTarget:
    """Where trials log: plain strings, so that any worker process can make its own client."""

    uri: str
    experiment: str
    parent_run_id: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class TrialState:
    """Weights, optimizer and history a trial reached, one per fold, as ``torch.save`` bytes.

    An object of its own, sized by ``__sizeof__``, so that joblib's dask backend sends it to the
    worker directly (it scatters large arguments) instead of through the scheduler's task graph.
    """

    folds: tuple[bytes, ...]

    def __sizeof__(self) -> int:
        return sum(len(b) for b in self.folds)


TABLE_KEYS = ("round", *HyperParams.names(), "epochs", "train_images", "images_processed", "valid_acc",
              "valid_acc_std", "best_epoch", "status", "error")
# Optuna's trials are numbered, not grouped in rounds; a pruned trial says after which epoch.
OPTUNA_TABLE_KEYS = ("trial", *HyperParams.names(), "epochs", "train_images", "images_processed", "valid_acc",
                     "valid_acc_std", "best_epoch", "status", "pruned_epoch", "error")


@dataclass
class TrialResult:
    """What one trial gave: its score, the resource it used, and whether it failed and why."""

    index: int  # position of the combination in the grid (optuna: the trial's number)
    round: int
    hp: HyperParams
    epochs: int
    train_images: int
    images_processed: int = 0
    valid_acc: float = math.nan
    valid_acc_std: float = 0.0
    best_epoch: int = 0
    status: str = "ok"  # ok, pruned (stopped by a pruner after pruned_epoch) or failed
    error: str = ""
    seconds: float = 0.0
    pruned_epoch: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def table_row(self, keys: tuple[str, ...] = TABLE_KEYS) -> dict:
        """The row of ``trials.json`` (a failed trial's accuracy is null, not NaN, which is not JSON)."""
        row = asdict(self) | self.hp.as_dict() | {"trial": self.index}
        row["valid_acc"] = None if self.status == "failed" else self.valid_acc
        return {k: row[k] for k in keys}


class StopOnDivergence(Callback):
    """Fail a trial as soon as its loss is not finite (at a batch) or has blown up (at an epoch)."""

    def __init__(self, max_loss: float = DIVERGED_FACTOR * math.log(10)):
        self.max_loss = max_loss

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if training and loss is not None and not math.isfinite(loss.item()):
            raise FloatingPointError(f"diverged: train_loss is {loss.item()} in epoch {len(net.history)}")

    def on_epoch_end(self, net, **kwargs):
        loss = net.history[-1, "train_loss"]
        if loss > self.max_loss:
            raise FloatingPointError(f"diverged: train_loss is {loss:.3g} in epoch {len(net.history)}, over "
                                     f"{self.max_loss:.3g} ({DIVERGED_FACTOR:g} times that of guessing)")


def _pack(net) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(net_state(net), buf)
    return buf.getvalue()


def _unpack(net, state: bytes) -> None:
    import torch

    restore_net_state(net, torch.load(io.BytesIO(state), map_location="cpu", weights_only=True))


def _images_trained(history, from_epoch: int) -> int:
    return int(sum(b.get("train_batch_size", 0) for row in history[from_epoch:] for b in row.get("batches", ())))


def _folds(task: Task, setup: TrialSetup, data: SearchData) -> list[tuple[ImageSet, ImageSet]]:
    """(train, score) sets of each fold: the validation split, or stratified k-fold of the trial's images."""
    from fmnist.data import stratified_subset

    keep = stratified_subset(data.train_labels, task.samples, setup.seed)
    images, labels = data.train_images[keep], data.train_labels[keep]
    if setup.cv < 2:
        return [(ImageSet(images, labels), ImageSet(data.valid_images, data.valid_labels))]
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=setup.cv, shuffle=True, random_state=setup.seed % 2**32)
    return [(ImageSet(images[tr], labels[tr]), ImageSet(images[te], labels[te]))
            for tr, te in splitter.split(np.zeros(len(labels)), labels)]


def _fold_net(task: Task, setup: TrialSetup, compute: Compute, train: ImageSet, valid: ImageSet,
              state: bytes | None, callbacks: list):
    """The fold's net, seeded from the search seed, fresh or at the epoch ``state`` reached."""
    seed_everything(setup.seed)
    settings = FitSettings(max_epochs=setup.epochs, patience=setup.epochs + 1, seed=setup.seed)  # no early stop
    net = build_net(ModelSpec.of(setup.model, train.size, task.hp.dropout), task.hp, compute, settings, valid,
                    extra_callbacks=[("divergence", StopOnDivergence()), *callbacks])
    net.initialize()
    if state is not None:
        _unpack(net, state)
    if len(net.history) != task.start_epoch:
        raise RuntimeError(f"the state has {len(net.history)} epochs, expected {task.start_epoch}")
    return net


@functools.lru_cache(maxsize=4)
def _tracker(uri: str, experiment: str):
    from fmnist.tracking import Tracker

    return Tracker(experiment, uri=uri)


def _threads(setup: TrialSetup, threads: int | dict[str, int]) -> int:
    if setup.threads:
        return setup.threads
    if isinstance(threads, dict):  # on a Dask worker: the share worked out for this worker
        from distributed import get_worker

        worker = get_worker()
        fallback = max(1, (os.cpu_count() or 1) // max(1, worker.state.nthreads))
        return threads.get(worker.address, fallback)
    return threads


def run_trial(task: Task, setup: TrialSetup, data: SearchData, tracking: TrackingTarget | None = None,
              threads: int | dict[str, int] = 0, state: TrialState | None = None,
              callbacks: list | None = None) -> tuple[TrialResult, TrialState | None]:
    """Train and score one trial; return its result and, if asked, its state.

    Never raises for a failing trial: the result says ``status: failed`` and why, and so does its
    nested MLflow run (FAILED, tags ``fmnist.trial_status``/``fmnist.trial_error``). ``callbacks``
    (skorch ``(name, callback)`` pairs, after the MLflow logger) may stop the trial with
    :class:`TrialStopped`: it is then ``pruned`` and scored on the epochs it trained.
    """
    import torch

    tune_malloc_for(data.train_images.shape[-1])  # in whichever process runs the trial, as the train stage
    n_threads = _threads(setup, threads)
    if n_threads:
        torch.set_num_threads(n_threads)
    compute = Compute.resolve(setup.model.precision, "cpu")  # on the machine that runs the trial
    start = time.perf_counter()
    result = TrialResult(task.index, task.round, task.hp, task.epochs, task.samples)
    states: list[bytes] = []
    with contextlib.ExitStack() as stack:
        # A store that cannot be written is the search's failure, not the trial's: it raises.
        run = _open_run(stack, task, setup, compute, tracking, n_threads) if tracking is not None else None
        try:
            curves = []
            for fold, (train, valid) in enumerate(_folds(task, setup, data)):
                fold_callbacks = []
                if run is not None:
                    prefix = f"fold{fold + 1}_" if setup.cv >= 2 else ""
                    fold_callbacks.append(("mlflow", MlflowEpochLogger(run, prefix=prefix)))
                fold_callbacks += callbacks or []
                net = _fold_net(task, setup, compute, train, valid, state.folds[fold] if state else None,
                                fold_callbacks)
                try:
                    net.partial_fit(train, y=None, epochs=task.epochs - task.start_epoch)
                except TrialStopped:
                    result.pruned_epoch = len(net.history)
                finally:  # a failed fold counts what it trained too
                    result.images_processed += _images_trained(net.history, task.start_epoch)
                curves.append(np.array(net.history[:, "valid_acc"], dtype=float))
                if result.pruned_epoch:
                    result.status = "pruned"
                    break
                if task.keep_state:
                    states.append(_pack(net))
            mean = np.mean(curves, axis=0)
            best = int(np.argmax(mean))
            result.valid_acc = float(mean[best])
            result.valid_acc_std = float(np.std([c[best] for c in curves])) if len(curves) > 1 else 0.0
            result.best_epoch = best + 1
        except Exception as err:  # a failed trial is a result, not the end of the search
            result.status = "failed"
            result.error = f"{type(err).__name__}: {err}".splitlines()[0]
            states = []
            log.warning("trial %s failed: %s", task.hp.label(), result.error)
        result.seconds = round(time.perf_counter() - start, 2)
        if run is not None:
            scored = result.status != "failed"
            run.log_metrics({"valid_acc_best": result.valid_acc if scored else None,
                             "valid_acc_std": result.valid_acc_std if setup.cv >= 2 else None,
                             "seconds": result.seconds, "images_processed": result.images_processed,
                             "pruned_epoch": result.pruned_epoch or None})
            run.set_tags({"fmnist.trial_status": result.status, "fmnist.trial_error": result.error}
                         | ({"fmnist.pruned_epoch": result.pruned_epoch} if result.pruned_epoch else {}))
            run.failed = result.status == "failed"
    return result, TrialState(tuple(states)) if states else None


def _open_run(stack: contextlib.ExitStack, task: Task, setup: TrialSetup, compute: Compute,
              tracking: TrackingTarget, n_threads: int):
    tracker = _tracker(tracking.uri, tracking.experiment)
    name = task.name or f"r{task.round + 1} {task.hp.label()}"
    run = stack.enter_context(tracker.run(name, tags=tracking.tags, parent=tracking.parent_run_id))
    run.log_params({**task.hp.as_dict(), "round": task.round, "epochs": task.epochs, "start_epoch": task.start_epoch,
                    "train_images": task.samples, "cv": setup.cv, "torch_threads": n_threads,
                    "precision": compute.precision})
    run.set_tags({"fmnist.trial_host": os.uname().nodename, "fmnist.trial_pid": os.getpid()})
    return run
