"""Hyper-parameter search over lr, batch_size and dropout: full grid or successive halving.

Strategies. ``grid`` trains every combination for the full budget. ``halving`` is successive
halving with scikit-learn's ``HalvingGridSearchCV`` schedule: round i runs ceil(n / factor**i)
candidates, the best 1/factor of a round go on to the next, and each round gives its trials
factor times the resource of the round before. The resource is training ``samples`` (a trial
trains from scratch on a stratified subset; the last round trains on all of the trial's images)
or ``epochs`` (a surviving trial goes on from the weights, optimizer and history it reached, so
the last round ends exactly where a grid trial of the full budget would). Either way a last-round
trial is the same computation as the grid's trial of that combination.

Scoring. A trial is scored on the pipeline's validation split, or, when ``cv`` >= 2, by
stratified k-fold on the trial's own training images; its score is the best epoch's accuracy
(of the mean curve over folds), as early stopping in the train stage would keep it.

Execution. Trials run in this process (``n_jobs`` 1), in ``n_jobs`` local worker processes
(joblib's loky backend), or on a Dask cluster through joblib's dask backend. A worker runs
``max(1, cores // trials at once on that machine)`` torch threads and makes its own MLflow client
from the tracking URI, so each trial is a nested run of the search run whichever worker ran it.
Every trial is seeded from the search seed alone, so results do not depend on ``n_jobs`` or on
the order trials finish in (bit for bit at a fixed torch thread count: oneDNN's CPU kernels sum
in an order that depends on the number of threads).

Failures. A trial that raises or diverges is recorded as failed with its reason, and the search
goes on without it; only when every trial failed does :func:`best_trial` raise.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from skorch.callbacks import Callback

from fmnist.errors import SearchError
from fmnist.training import (ImageSet, build_net, net_state, resolve_precision, restore_net_state,
                             seed_everything)

log = logging.getLogger(__name__)

HP_KEYS = ("lr", "batch_size", "dropout")
TABLE_KEYS = ("round", *HP_KEYS, "epochs", "train_images", "images_processed", "valid_acc",
              "valid_acc_std", "best_epoch", "status", "error")
# A trial whose epoch loss passes this many times the loss of guessing (ln 10) has diverged: Adam at
# lr=1 drives AlexNet's loss to 1e16 without ever reaching NaN.
DIVERGED_FACTOR = 100.0


# ----------------------------------------------------------------------------------------------
# What a search is made of


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares."""

    model_name: str
    head: str
    lrn: bool
    seed: int
    epochs: int  # the full budget; the cosine learning-rate schedule spans it
    cv: int = 0  # 0: score on the validation split; k >= 2: stratified k-fold on the training images
    threads: int = 0  # torch threads per trial; 0: cores // trials at once on the machine
    precision: str = "fp32"  # auto, fp32 or bf16; auto is resolved on the machine that runs the trial


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


@dataclass(frozen=True)
class Round:
    """One round: how many candidates run, and the resource each gets."""

    candidates: int
    epochs: int  # epochs a trial has trained when the round ends
    samples: int  # training images per trial
    start_epoch: int = 0  # epochs a trial goes on from (epochs resource); 0 = from scratch


@dataclass(frozen=True)
class Task:
    """One trial: a grid combination in a round, and the resource it gets."""

    index: int  # position of the combination in the grid
    round: int
    config: dict
    epochs: int
    samples: int
    start_epoch: int = 0
    keep_state: bool = False  # return the state at the end: a later round goes on from it


@dataclass(frozen=True, eq=False)
class TrialState:
    """Weights, optimizer and history a trial reached, one per fold, as ``torch.save`` bytes.

    An object of its own, sized by ``__sizeof__``, so that joblib's dask backend sends it to the
    worker directly (it scatters large arguments) instead of through the scheduler's task graph.
    """

    folds: tuple[bytes, ...]

    def __sizeof__(self) -> int:
        return sum(len(b) for b in self.folds)


# ----------------------------------------------------------------------------------------------
# Schedules


def _ilog(x: int, base: int) -> int:
    """The largest k with base**k <= x (integer arithmetic: math.log(27, 3) is 3.0000000000000004)."""
    k = 0
    while base ** (k + 1) <= x:
        k += 1
    return k


def halving_schedule(n_candidates: int, max_resource: int, factor: int,
                     min_resource: int = 1) -> list[tuple[int, int]]:
    """Rounds of successive halving as ``(candidates, resource)``; the last round gets ``max_resource``.

    As scikit-learn's ``HalvingGridSearchCV`` (``min_resources="exhaust"``): 1 + floor(log_factor(n))
    rounds, no more than the resource can tell apart (each round gets ``factor`` times the one
    before, and at least ``min_resource``); round i runs ceil(n / factor**i) candidates.
    """
    required = 1 + _ilog(n_candidates, factor)
    possible = 1 + _ilog(max_resource // min_resource, factor) if max_resource >= min_resource else 1
    rounds = min(required, possible)
    return [(math.ceil(n_candidates / factor**i), max_resource // factor ** (rounds - 1 - i))
            for i in range(rounds)]


def plan_rounds(strategy: str, n_candidates: int, epochs: int, samples: int, factor: int = 3,
                resource: str = "samples", min_samples: int = 1) -> list[Round]:
    """``grid``: one round, every candidate for the full budget; ``halving``: :func:`halving_schedule`
    over ``epochs`` (trials go on from the round before) or ``samples`` (trials start afresh)."""
    if strategy == "grid":
        return [Round(n_candidates, epochs, samples)]
    if strategy != "halving":
        raise ValueError(f"unknown search strategy {strategy!r}")
    if resource == "epochs":
        schedule = halving_schedule(n_candidates, epochs, factor)
        starts = [0] + [e for _, e in schedule[:-1]]
        return [Round(c, e, samples, start) for (c, e), start in zip(schedule, starts)]
    if resource == "samples":
        return [Round(c, epochs, s) for c, s in halving_schedule(n_candidates, samples, factor, min_samples)]
    raise ValueError(f"unknown halving resource {resource!r}")


# ----------------------------------------------------------------------------------------------
# One trial (runs in a worker)


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


def _fold_net(task: Task, setup: TrialSetup, train: ImageSet, valid: ImageSet, state: bytes | None,
              callbacks: list):
    """The fold's net, seeded from the search seed, fresh or at the epoch ``state`` reached."""
    seed_everything(setup.seed)
    net = build_net(model_name=setup.model_name, input_size=train.size, head=setup.head, lrn=setup.lrn,
                    lr=task.config["lr"], batch_size=task.config["batch_size"], dropout=task.config["dropout"],
                    max_epochs=setup.epochs, patience=setup.epochs + 1, seed=setup.seed, valid=valid,
                    extra_callbacks=[("divergence", StopOnDivergence()), *callbacks], device="cpu",
                    precision=setup.precision)
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
              threads: int | dict[str, int] = 0,
              state: TrialState | None = None) -> tuple[dict, TrialState | None]:
    """Train and score one trial; return its row for the trials table and, if asked, its state.

    Never raises for a failing trial: the row says ``status: failed`` and why, and so does its
    nested MLflow run (FAILED, tags ``fmnist.trial_status``/``fmnist.trial_error``).
    """
    import torch

    n_threads = _threads(setup, threads)
    if n_threads:
        torch.set_num_threads(n_threads)
    start = time.perf_counter()
    row = {"index": task.index, "round": task.round, **{k: task.config[k] for k in HP_KEYS},
           "epochs": task.epochs, "train_images": task.samples, "images_processed": 0,
           "valid_acc": float("nan"), "valid_acc_std": 0.0, "best_epoch": 0, "status": "ok", "error": ""}
    states: list[bytes] = []
    with contextlib.ExitStack() as stack:
        # A store that cannot be written is the search's failure, not the trial's: it raises.
        run = _open_run(stack, task, setup, tracking, n_threads) if tracking is not None else None
        try:
            curves = []
            for fold, (train, valid) in enumerate(_folds(task, setup, data)):
                callbacks = []
                if run is not None:
                    from fmnist.tracking import MlflowEpochLogger

                    prefix = f"fold{fold + 1}_" if setup.cv >= 2 else ""
                    callbacks.append(("mlflow", MlflowEpochLogger(run, prefix=prefix)))
                net = _fold_net(task, setup, train, valid, state.folds[fold] if state else None, callbacks)
                try:
                    net.partial_fit(train, y=None, epochs=task.epochs - task.start_epoch)
                finally:  # a failed fold counts what it trained too
                    row["images_processed"] += _images_trained(net.history, task.start_epoch)
                curves.append(np.array(net.history[:, "valid_acc"], dtype=float))
                if task.keep_state:
                    states.append(_pack(net))
            mean = np.mean(curves, axis=0)
            best = int(np.argmax(mean))
            row["valid_acc"] = float(mean[best])
            row["valid_acc_std"] = float(np.std([c[best] for c in curves])) if len(curves) > 1 else 0.0
            row["best_epoch"] = best + 1
        except Exception as err:  # a failed trial is a result, not the end of the search
            row["status"] = "failed"
            row["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
            states = []
            log.warning("trial %s failed: %s", task.config, row["error"])
        row["seconds"] = round(time.perf_counter() - start, 2)
        if run is not None:
            run.log_metrics({"valid_acc_best": row["valid_acc"] if row["status"] == "ok" else None,
                             "valid_acc_std": row["valid_acc_std"] if setup.cv >= 2 else None,
                             "seconds": row["seconds"], "images_processed": row["images_processed"]})
            run.set_tags({"fmnist.trial_status": row["status"], "fmnist.trial_error": row["error"]})
            run.failed = row["status"] != "ok"
    return row, TrialState(tuple(states)) if states else None


def _open_run(stack: contextlib.ExitStack, task: Task, setup: TrialSetup, tracking: TrackingTarget,
              n_threads: int):
    tracker = _tracker(tracking.uri, tracking.experiment)
    config = task.config
    name = f"r{task.round + 1} lr={config['lr']:g} bs={config['batch_size']} dropout={config['dropout']:g}"
    run = stack.enter_context(tracker.run(name, tags=tracking.tags, parent=tracking.parent_run_id))
    run.log_params({**config, "round": task.round, "epochs": task.epochs, "start_epoch": task.start_epoch,
                    "train_images": task.samples, "cv": setup.cv, "torch_threads": n_threads,
                    "precision": resolve_precision(setup.precision, "cpu")})
    run.set_tags({"fmnist.trial_host": os.uname().nodename, "fmnist.trial_pid": os.getpid()})
    return run


# ----------------------------------------------------------------------------------------------
# Where trials run


def _cores() -> int:
    return os.cpu_count() or 1


def dask_threads(client) -> dict[str, int]:
    """Torch threads per Dask worker: its machine's cores over the trials that machine runs at once."""
    from collections import Counter

    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(_cores)
    per_host = Counter()
    for info in workers.values():
        per_host[info["host"]] += info["nthreads"]
    return {addr: max(1, cores.get(addr, 1) // per_host[info["host"]]) for addr, info in workers.items()}


@contextlib.contextmanager
def executor(n_jobs: int, scheduler: str, data: SearchData,
             connect_timeout_s: float = 30) -> Iterator[tuple[Callable, int | dict[str, int], int]]:
    """Yield ``(parallel, threads, slots)``: a joblib ``Parallel`` that yields results as trials
    finish, the torch threads per trial, and how many trials run at once.

    ``scheduler`` set: the trials run on that Dask cluster, one per worker thread (``n_jobs`` is
    then the cluster's to decide), and ``data`` goes to every worker once. Else ``n_jobs``
    processes on this machine (0: one per core); 1 runs the trials in this process.
    """
    from joblib import Parallel, parallel_config

    options = {"return_as": "generator_unordered", "batch_size": 1, "pre_dispatch": "n_jobs"}
    if scheduler:
        from distributed import Client

        try:
            client = Client(scheduler, timeout=f"{connect_timeout_s}s", set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise SearchError(f"search.scheduler={scheduler}: cannot connect ({str(err).splitlines()[0]})") from None
        try:
            try:
                client.wait_for_workers(1, timeout=connect_timeout_s)
            except TimeoutError:
                raise SearchError(f"search.scheduler={scheduler}: no Dask worker joined within "
                                  f"{connect_timeout_s:g} s; start some with: dask worker {scheduler}") from None
            threads = dask_threads(client)
            slots = sum(info["nthreads"] for info in client.scheduler_info(n_workers=-1)["workers"].values())
            with parallel_config(backend="dask", client=client, scatter=[data],
                                 wait_for_workers_timeout=connect_timeout_s):
                with Parallel(n_jobs=-1, **options) as parallel:
                    yield parallel, threads, slots
        finally:
            client.close()
        return
    n_jobs = n_jobs or _cores()
    threads = max(1, _cores() // n_jobs)
    with Parallel(n_jobs=n_jobs, backend="loky" if n_jobs > 1 else "sequential",
                  inner_max_num_threads=threads if n_jobs > 1 else None, **options) as parallel:
        try:
            yield parallel, threads, n_jobs
        finally:
            if n_jobs > 1:  # the search owns its worker processes: stop them now, not after loky's idle timeout
                from joblib.externals.loky import get_reusable_executor

                get_reusable_executor(max_workers=n_jobs).shutdown(wait=True)


# ----------------------------------------------------------------------------------------------
# The search (runs where the stage runs)


def _rank_key(row: dict) -> tuple:
    """Best first: successful before failed, then higher accuracy, then grid order (a total order,
    so the ranking does not depend on the order trials finish in)."""
    ok = row["status"] == "ok"
    return (not ok, -row["valid_acc"] if ok else 0.0, row["index"])


def best_trial(rows: list[dict]) -> dict:
    """The best successful trial of the last round any reached; raise if every trial failed."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        reasons = "; ".join(sorted({r["error"] for r in rows}))
        raise SearchError(f"all {len(rows)} search trials failed: {reasons}")
    last_round = max(r["round"] for r in ok)
    return min((r for r in ok if r["round"] == last_round), key=_rank_key)


def _describe(row: dict) -> str:
    return f"lr={row['lr']:g} batch_size={row['batch_size']} dropout={row['dropout']:g}"


def _resource(task: Task) -> str:
    going_on = f" (going on from epoch {task.start_epoch})" if task.start_epoch else ""
    return f"{task.epochs} epochs on {task.samples} images{going_on}"


def _calls(tasks: list[Task], states: dict[int, TrialState], setup: TrialSetup, data: SearchData,
           tracking: TrackingTarget | None, threads: int | dict[str, int],
           announce: Callable[[Task], None]) -> Iterator:
    """The rounds' joblib calls, announced as joblib takes them (when a worker is free)."""
    from joblib import delayed

    for task in tasks:
        announce(task)
        yield delayed(run_trial)(task, setup, data, tracking, threads, states.pop(task.index, None))


def run_search(configs: list[dict], rounds: list[Round], setup: TrialSetup, data: SearchData, *,
               tracking: TrackingTarget | None = None, n_jobs: int = 1, scheduler: str = "",
               progress: Callable[[str], None] = log.info) -> list[dict]:
    """Run the rounds; return every trial's row, in (round, grid) order.

    After each round the successful trials are ranked (:func:`_rank_key`) and the best
    ``candidates`` of the next round go on; failed trials never do. The states that a next round
    goes on from are kept for the best trials only, as results come in.
    """
    rows: list[dict] = []
    survivors = list(range(len(configs)))
    states: dict[int, TrialState] = {}
    with executor(n_jobs, scheduler, data) as (parallel, threads, slots):
        progress(f"search: {len(configs)} combinations in {len(rounds)} round(s), {slots} trial(s) at once"
                 + (f" on {scheduler}" if scheduler else ""))
        for round_no, rnd in enumerate(rounds):
            survivors = survivors[:rnd.candidates]
            nxt = rounds[round_no + 1] if round_no + 1 < len(rounds) else None
            keep = nxt is not None and nxt.start_epoch > 0
            tasks = [Task(index=i, round=round_no, config=configs[i], epochs=rnd.epochs,
                          samples=rnd.samples, start_epoch=rnd.start_epoch, keep_state=keep) for i in survivors]
            carried, states = states, {}
            where = f"round {round_no + 1}/{len(rounds)}"
            numbers = {t.index: n + 1 for n, t in enumerate(tasks)}
            calls = _calls(tasks, carried, setup, data, tracking, threads,
                           lambda task: progress(f"[{where}] trial {numbers[task.index]}/{len(tasks)} starts: "
                                                 f"{_describe(task.config)}, {_resource(task)}"))
            round_rows = []
            for row, state in parallel(calls):
                round_rows.append(row)
                if keep and row["status"] == "ok":
                    states[row["index"]] = state
                    if len(states) > nxt.candidates:  # keep only the states a next round can use
                        rank = {r["index"]: _rank_key(r) for r in round_rows}
                        del states[max(states, key=rank.__getitem__)]
                best = min((r for r in round_rows if r["status"] == "ok"), key=_rank_key, default=None)
                shown = (f"valid_acc={row['valid_acc']:.4f}" if row["status"] == "ok"
                         else f"FAILED ({row['error']})")
                progress(f"[{where}] trial {numbers[row['index']]}/{len(tasks)} done: {_describe(row)} "
                         f"{shown}; {len(round_rows)}/{len(tasks)} done; best so far: "
                         + (f"{best['valid_acc']:.4f} with {_describe(best)}" if best else "none"))
            round_rows.sort(key=lambda r: r["index"])
            rows.extend(round_rows)
            survivors = [r["index"] for r in sorted(round_rows, key=_rank_key) if r["status"] == "ok"]
            if not survivors:
                break
    return rows
