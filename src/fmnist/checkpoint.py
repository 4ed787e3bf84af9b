"""Resumable training state: the per-epoch checkpoint, what it holds, and what makes it valid.

A checkpoint carries a fingerprint of what trained it (params, precision, data and code); one
with another fingerprint, or one that cannot be read safely, is ignored with a message that
names the file, and training starts over. It also names the MLflow run it logs into, so that a
killed run, resumed, goes on logging into the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import torch
from skorch.callbacks import Callback

from fmnist.files import read_json, save_torch, write_json

log = logging.getLogger(__name__)


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_digests(*scripts: str | Path) -> list[str]:
    """MD5 of each ``fmnist`` module this process has imported, then of ``scripts``: the code a
    checkpoint was made by (the package's other files do not matter)."""
    from fmnist.repo import file_digest

    modules = [m.__file__ for name, m in sorted(sys.modules.items())
               if name.startswith("fmnist.") and getattr(m, "__file__", None)]
    return [file_digest(path) for path in (*modules, *scripts)]


def net_state(net) -> dict:
    """What a fit goes on from: weights, optimizer state and history. The history drops the
    per-batch rows (large, not needed to resume) and the timings (so that two runs write
    identical checkpoints)."""
    history = [{k: v for k, v in row.items() if k not in ("batches", "dur")} for row in net.history]
    return {"module": net.module_.state_dict(), "optimizer": net.optimizer_.state_dict(),
            "history": json.dumps(history)}


def restore_net_state(net, state: dict) -> None:
    """Put an initialized ``net`` back where :func:`net_state` found it."""
    from skorch.history import History

    net.module_.load_state_dict(state["module"])
    net.optimizer_.load_state_dict(state["optimizer"])
    net.history_ = History(json.loads(state["history"]))


def load_state(path: Path, mmap: bool = False) -> dict | None:
    """A checkpoint's dict, loaded safely (tensors and plain values only), or None when the file
    is missing, corrupt or carries anything else (a pickled object): a warning names it.
    ``mmap``: tensors are read only when touched (a look at the plain values costs no memory)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # a checkpoint we cannot read is as good as none
        log.warning("ignoring unreadable checkpoint %s (%s); training starts over",
                    path, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        return None
    if not isinstance(state, dict):
        log.warning("ignoring %s: not a checkpoint of this pipeline; training starts over", path)
        return None
    return state


class EpochCheckpoint(Callback):
    """Per-epoch checkpoint in one file (weights, optimizer, history) plus the best weights.

    ``fingerprint`` names what was trained (params and data); a checkpoint with another
    fingerprint is ignored, so a changed param never resumes a stale run. ``run_id``, when set,
    is the MLflow run the epochs are logged into, saved with them (:meth:`run_to_resume`).
    """

    def __init__(self, dirname: str | Path, fingerprint: str, monitor: str = "valid_acc_best",
                 run_id: str | None = None):
        self.dirname = dirname
        self.fingerprint = fingerprint
        self.monitor = monitor
        self.run_id = run_id

    @property
    def last_path(self) -> Path:
        return Path(self.dirname) / "last.pt"

    @property
    def best_path(self) -> Path:
        return Path(self.dirname) / "best.pt"

    @property
    def done_path(self) -> Path:
        return Path(self.dirname) / "done.json"

    def finish(self, epochs: int) -> None:
        """The run is complete, and a complete run is never resumed: keep only a record of it.

        ``last.pt`` (weights and Adam's state: 700 MB at 227 px) and ``best.pt`` (the model
        file's weights again) would otherwise be cached by DVC on every run. ``done.json`` keeps
        the folder non-empty, so DVC caches a folder and not nothing, and names the finished run.
        """
        write_json(self.done_path, {"fingerprint": self.fingerprint, "epochs": epochs})
        self.last_path.unlink(missing_ok=True)
        self.best_path.unlink(missing_ok=True)

    def finished(self) -> bool:
        """Whether the folder holds a finished run of this fingerprint (and nothing to resume)."""
        try:
            return read_json(self.done_path).get("fingerprint") == self.fingerprint
        except (OSError, ValueError, AttributeError):
            return False

    def on_epoch_end(self, net, **kwargs):
        if net.history[-1, self.monitor]:
            save_torch(self.best_path, {"module": net.module_.state_dict(), "fingerprint": self.fingerprint,
                                        "epoch": len(net.history)})
        save_torch(self.last_path, {**net_state(net), "fingerprint": self.fingerprint,
                                    **({"run_id": self.run_id} if self.run_id else {})})

    def run_to_resume(self, max_epochs: int) -> str | None:
        """The MLflow run id that ``last.pt`` names when training will resume from it (its
        fingerprint matches and it holds fewer than ``max_epochs`` epochs), else None."""
        state = load_state(self.last_path, mmap=True)
        if state is None or state.get("fingerprint") != self.fingerprint or not isinstance(state.get("run_id"), str):
            return None
        try:
            epochs = len(json.loads(state["history"]))
        except (KeyError, TypeError, ValueError):
            return None
        return state["run_id"] if epochs < max_epochs else None

    def load_last(self, net) -> bool:
        """Restore weights, optimizer and history from ``last.pt`` if it matches; return whether."""
        state = load_state(self.last_path)
        if state is None or state.get("fingerprint") != self.fingerprint:
            if state is not None:
                log.info("ignoring %s: it was made by other params, data or code", self.last_path)
            return False
        try:
            restore_net_state(net, state)
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            log.warning("ignoring %s: it does not fit this model (%s); training starts over",
                        self.last_path, str(err).splitlines()[0])
            return False
        return True

    def load_best(self, net) -> None:
        state = load_state(self.best_path)
        if state is None or state.get("fingerprint") != self.fingerprint:
            raise RuntimeError(f"{self.best_path}: no best checkpoint for this run")
        net.module_.load_state_dict(state["module"])
