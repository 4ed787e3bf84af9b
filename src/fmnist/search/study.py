"""Where an Optuna study lives, what it is called, and how much of its budget is spent.

Storage. ``$FMNIST_OPTUNA_STORAGE`` (a SQLAlchemy URL such as the team stack's
``postgresql+psycopg://...``; credentials stay in the environment) when it is set, else a journal
file under DVC's temporary folder, ``<project root>/.dvc/tmp/optuna/<study>.journal``: outside the
stage's outputs, so that DVC does not delete it before a rerun, and outside git and the DVC cache.

Name. ``fmnist-search-<digest>``: a digest of what decides which trials run and how they score
(the search space, sampler, pruner, epochs, seed, model and the data), so that a rerun with the
same params and data, in this workspace or a teammate's, joins the same study, and any change
starts another. The budget is left out: raising it goes on from the trials already done.

Budget. A trial costs ``epochs x training images`` if it runs to the end; a trial starts only when
that cost, with the full cost of every running trial numbered before it, fits into what the
finished trials left of the budget (their ``images_processed``; a pruned trial counts what it
trained, a failed one at least one epoch, so that a search whose every trial fails still ends).
Trial numbers are handed out by the storage, so two workers that ask at once never both
take the last slot.

Workers. Each running trial records its worker (host, pid, process start time). A trial whose
worker died on this machine (a SIGKILLed stage) is failed when the next worker starts; on a
database, a trial whose worker stopped its heartbeat elsewhere is failed after the grace period.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from fmnist.errors import SearchError

STORAGE_ENV = "FMNIST_OPTUNA_STORAGE"
LOCAL_FOLDER = Path(".dvc") / "tmp" / "optuna"
HEARTBEAT_S = 20  # a database trial's heartbeat; failed as stale after GRACE_S without one
GRACE_S = 120
WORKER_ATTR = "fmnist.worker"
COST_ATTR = "fmnist.cost"
IMAGES_ATTR = "images_processed"
SKIPPED_ATTR = "fmnist.skipped"  # asked, then found no room in the budget: not a trial of the search


def redact(url: str) -> str:
    """The URL without its password, for messages and tags."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def storage_target(root: Path) -> str:
    """``$FMNIST_OPTUNA_STORAGE``, or ``journal:<folder>`` of the local journal files."""
    url = os.environ.get(STORAGE_ENV, "").strip()
    return url or f"journal:{root / LOCAL_FOLDER}"


def is_local(target: str) -> bool:
    return target.startswith("journal:")


def open_storage(target: str, study_name: str):
    """The Optuna storage ``target`` names; a one-line :class:`SearchError` when it cannot be opened."""
    import optuna

    if is_local(target):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        folder = Path(target.removeprefix("journal:"))
        folder.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(folder / f"{study_name}.journal")))
    try:
        return optuna.storages.RDBStorage(target, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                          engine_kwargs={"pool_pre_ping": True})
    except Exception as err:  # an unknown dialect, a refused connection, a wrong password
        reason = redact(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise SearchError(f"{STORAGE_ENV}={redact(target)}: cannot open the Optuna storage ({reason})") from None


def study_name(space: dict, data_arrays: list[np.ndarray]) -> str:
    """``fmnist-search-<12 hex>`` from the params that decide the trials and the data they read."""
    h = hashlib.sha256(json.dumps(space, sort_keys=True).encode())
    for array in data_arrays:
        h.update(str((array.shape, array.dtype.str)).encode())
        h.update(np.ascontiguousarray(array).data)
    return f"fmnist-search-{h.hexdigest()[:12]}"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" where /proc is not there)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def worker_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _alive(worker: str) -> bool:
    """Whether the worker that wrote ``worker`` may still run; False only when it surely does not."""
    host, _, rest = worker.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's: its heartbeat (database storage) says
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or _start_time(int(pid)) == started  # a reused pid is another process


def fail_orphans(study) -> list[int]:
    """Fail the running trials whose worker is gone; return their numbers."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if worker is None or _alive(worker):
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            storage.set_trial_user_attr(trial._trial_id, "error",
                                        "interrupted: its worker process ended before the trial did")
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
    optuna.storages.fail_stale_trials(study)  # a database's trials whose heartbeat stopped elsewhere
    return failed


@dataclass(frozen=True)
class Spending:
    """What the study has spent: images of finished trials, full costs of running ones."""

    finished: int
    running: dict[int, int]  # trial number -> its full cost

    def room(self, budget: int, cost: int, before: int | None = None) -> bool:
        """Whether a trial of ``cost`` fits; ``before``: count only running trials numbered below it."""
        running = sum(c for n, c in self.running.items() if before is None or n < before)
        return self.finished + running + cost <= budget


def spending(study, full_cost: int, epoch_cost: int) -> Spending:
    """What the study's trials spent; a failed trial is charged at least ``epoch_cost``."""
    from optuna.trial import TrialState

    finished, running = 0, {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:
            running[trial.number] = int(trial.user_attrs.get(COST_ATTR, full_cost))
        elif trial.state.is_finished() and not trial.user_attrs.get(SKIPPED_ATTR):
            images = int(trial.user_attrs.get(IMAGES_ATTR, 0))
            finished += max(images, epoch_cost) if trial.state == TrialState.FAIL else images
    return Spending(finished, running)


@contextlib.contextmanager
def heartbeat(storage, trial) -> Iterator[None]:
    """Record the trial's heartbeat while the block runs (database storage; a journal has none)."""
    from optuna.storages import RDBStorage

    if not isinstance(storage, RDBStorage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a database restarting: the next beat tries again
                storage.record_heartbeat(trial._trial_id)

    storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, name=f"optuna-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def quiet_optuna() -> None:
    """Optuna's own INFO line per trial repeats ours; its experimental warnings are noise here."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Ask-and-tell with our own heartbeat thread (:func:`heartbeat`) is what the warning is about.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
