"""The one seam to MLflow: where runs go, what each run is tagged with, per-epoch logging.

Runs go to ``$MLFLOW_TRACKING_URI`` when it is set (a team server), else to a SQLite store at the
project root, found from the repository rather than the working directory: ``dvc exp run``
executes queued and ``--temp`` experiments in a copy under ``<root>/.dvc/tmp/exps/``, and their
runs must land in the user's store, not in the copy that DVC throws away.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from skorch.callbacks import Callback

from fmnist.errors import TrackingError

log = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
TAG = "fmnist"  # prefix of this project's tags


def project_root(start: str | Path | None = None) -> Path:
    """The user's project root: the folder with ``dvc.yaml`` and ``.dvc/``, seen through DVC's
    temporary experiment copies (``<root>/.dvc/tmp/exps/<dir>/...``)."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if folder.name == "exps" and folder.parent.name == "tmp" and folder.parent.parent.name == ".dvc":
            return folder.parent.parent.parent
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / ".dvc").is_dir():
            return folder
    return here


def tracking_uri(root: Path | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(root or project_root()) / STORE_FILE}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line naming ``uri``, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow tracking server {uri} answered {response.status} on /health")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); start it or unset "
                            f"MLFLOW_TRACKING_URI to use the local store") from None


def git_state(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    # dvc.lock and metrics are rewritten by the run itself; only code and params make it dirty.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock", ":!metrics")
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(dirty)).lower()}


def file_digest(path: str | Path, pattern: str = "*") -> str:
    """MD5 of a file, or of a folder's files matching ``pattern``, in name order."""
    path = Path(path)
    h = hashlib.md5()
    files = sorted(p for p in path.rglob(pattern) if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def lineage_tags(stage: str, inputs: dict[str, str | Path]) -> dict[str, str]:
    """Tags that say what made a run: stage, git commit and dirtiness, DVC experiment, data hashes."""
    root = Path.cwd()
    tags = {f"{TAG}.stage": stage, **{f"{TAG}.{k}": v for k, v in git_state(root).items()}}
    for env, key in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[f"{TAG}.{key}"] = os.environ[env]
    for name, path in inputs.items():
        tags[f"{TAG}.input.{name}"] = file_digest(path)
    return tags


class Tracker:
    """MLflow client for one stage: resolves and checks the store, owns the experiment.

    It uses ``MlflowClient`` with explicit run ids, so nested runs from worker processes and
    threads never depend on a global "active run".
    """

    def __init__(self, experiment: str, uri: str | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        root = project_root()
        self.uri = uri or tracking_uri(root)
        check_reachable(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.experiment_id = self._experiment(experiment, root)

    def _experiment(self, name: str, root: Path) -> str:
        try:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            # A local store keeps artifacts beside it at the root, not in the working directory.
            location = None if self.uri.startswith("http") else (root / ARTIFACTS_DIR).as_uri()
            return self.client.create_experiment(name, artifact_location=location)
        except Exception as err:
            if "already exists" in str(err):  # created by a concurrent run
                return self.client.get_experiment_by_name(name).experiment_id
            raise TrackingError(f"MLflow tracking store {self.uri} failed: {str(err).splitlines()[0]}") from None

    @contextlib.contextmanager
    def run(self, name: str, tags: dict[str, str] | None = None, parent: str | None = None) -> Iterator["Run"]:
        """Start a run; end it FINISHED, or FAILED when the body raises."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        all_tags = {MLFLOW_RUN_NAME: name, **(tags or {})}
        if parent:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent
        info = _retry(self.client.create_run, self.experiment_id, tags=all_tags, run_name=name).info
        run = Run(self, info.run_id)
        try:
            yield run
        except BaseException:
            _retry(self.client.set_terminated, info.run_id, "FAILED")
            raise
        _retry(self.client.set_terminated, info.run_id, "FAILED" if run.failed else "FINISHED")

    def find_run(self, tag: str, value: str) -> str | None:
        """The newest finished run of this experiment whose ``tag`` equals ``value``."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None


class Run:
    """One MLflow run, by id."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker = tracker
        self.client = tracker.client
        self.id = run_id
        self.failed = False  # set to end the run FAILED without raising (a failed search trial)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            _retry(self.client.log_batch, self.id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if items:
            _retry(self.client.log_batch, self.id, metrics=items)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        _retry(self.client.log_batch, self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            _retry(self.client.log_artifacts, self.id, str(path), artifact_path)
        else:
            _retry(self.client.log_artifact, self.id, str(path), artifact_path)


def _retry(fn, *args, attempts: int = 8, **kwargs):
    """Retry an MLflow call that failed on a busy SQLite store ("database is locked")."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if "locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)


EPOCH_KEYS = ("train_loss", "valid_loss", "train_acc", "valid_acc", "lr", "dur")


class MlflowEpochLogger(Callback):
    """skorch callback: the epoch's losses, accuracies, learning rate and seconds, step = epoch.

    Unlike skorch's ``MlflowLogger`` it logs into a given run and never ends it, so a search can
    give each trial its own nested run.
    """

    def __init__(self, run: Run, prefix: str = ""):
        self.run = run
        self.prefix = prefix

    def on_epoch_end(self, net, **kwargs):
        self.log_row(net.history[-1])

    def log_history(self, net) -> None:
        """Log every epoch so far (a resumed fit: the epochs of the interrupted run)."""
        for row in net.history:
            self.log_row(row)

    def log_row(self, row: dict) -> None:
        metrics = {self.prefix + ("epoch_seconds" if k == "dur" else k): row[k] for k in EPOCH_KEYS if k in row}
        self.run.log_metrics(metrics, step=int(row["epoch"]))
