"""The one seam to MLflow: where runs go, what each run is tagged with, per-epoch logging.

Runs go to ``$MLFLOW_TRACKING_URI`` when it is set (a team server), else to a SQLite store at the
project root, found from the repository rather than the working directory: ``dvc exp run``
executes queued and ``--temp`` experiments in a copy under ``<root>/.dvc/tmp/exps/``, and their
runs must land in the user's store, not in the copy that DVC throws away.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from fmnist.errors import TrackingError
from fmnist.repo import entry_script, file_digest, git_state, project_root

log = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
TAG = "fmnist"  # prefix of this project's tags
CHAMPION = "champion"  # the registry alias of the best model so far, by test accuracy


def tracking_uri(root: Path | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(root or project_root()) / STORE_FILE}"


def check_reachable(uri: str, experiment: str | None = None, timeout_s: float = 10.0) -> None:
    """Fail fast, in one line naming ``uri``, when a tracking server does not answer, refuses our
    credentials, or cannot reach its own store (a stopped database answers 500 on the lookup of
    ``experiment``; MLflow's client would retry that for minutes before training could start)."""
    if not uri.startswith(("http://", "https://")):
        return
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(base + "/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow tracking server {uri} answered {response.status} on /health")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); start it or unset "
                            f"MLFLOW_TRACKING_URI to use the local store") from None
    if experiment is None:
        return
    query = urllib.parse.urlencode({"experiment_name": experiment})
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout_s).close()
    except urllib.error.HTTPError as err:
        if err.code == 404:  # no such experiment yet: the store answered
            return
        if err.code in (401, 403):
            who = f"user {user!r}" if user else "no credentials (MLFLOW_TRACKING_USERNAME/PASSWORD unset)"
            raise TrackingError(f"MLflow tracking server {uri} refused {who}: {err.code} "
                                f"{'Unauthorized' if err.code == 401 else 'Forbidden'}") from None
        raise TrackingError(f"MLflow tracking server {uri} cannot use its store ({err.code}: "
                            f"{_server_message(err)}); is its database running?") from None
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)})") from None


def _server_message(err: urllib.error.HTTPError) -> str:
    body = err.read().decode(errors="replace")
    try:
        body = json.loads(body).get("message", body)
    except ValueError:
        pass
    return (body.strip().splitlines() or ["no message"])[0][:300]


def source_tags(root: Path) -> dict[str, str]:
    """MLflow's standard source tags (the UI's Source and Version columns) and our dirty flag."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

    git = git_state(root)
    tags = {MLFLOW_GIT_COMMIT: git.commit or "unknown", f"{TAG}.git_dirty": str(git.dirty).lower()}
    if git.remote and "@" not in git.remote:  # never a URL with credentials in it
        tags[MLFLOW_GIT_REPO_URL] = git.remote
    script = entry_script(root)
    if script:
        tags[MLFLOW_SOURCE_NAME] = script
    return tags


def tracking_user() -> str:
    """Who ran it: the tracking server's account when there is one, else the login name."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "").strip()
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def write_run_id(path: str | Path, run_id: str) -> None:
    """The way back from DVC to MLflow: a metrics file with the train run's id, so that
    ``dvc exp show`` has a column for it. Its own file, so the model's metrics stay bit-identical
    across reruns."""
    from fmnist.files import write_json

    write_json(path, {"train_run_id": run_id})


def lineage_tags(stage: str, inputs: dict[str, str | Path]) -> dict[str, str]:
    """Tags that say what made a run: stage, git commit and dirtiness, DVC experiment, data hashes."""
    from mlflow.entities import SourceType
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_TYPE, MLFLOW_USER

    root = Path.cwd()
    tags = {f"{TAG}.stage": stage, **source_tags(root), MLFLOW_USER: tracking_user(),
            MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.JOB)}
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
        check_reachable(self.uri, experiment)
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
    def run(self, name: str, tags: dict[str, str] | None = None, parent: str | None = None,
            datasets: dict[str, str | Path] | None = None) -> Iterator["Run"]:
        """Start a run; end it FINISHED, or FAILED when the body raises.

        ``datasets``: ``{name: file}`` the stage read, logged as the run's dataset inputs (the
        UI's Datasets column) with DVC's checksum of the file as digest.
        """
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        all_tags = {MLFLOW_RUN_NAME: name, **(tags or {})}
        if parent:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent
        info = _retry(self.client.create_run, self.experiment_id, tags=all_tags, run_name=name).info
        run = Run(self, info.run_id)
        if datasets:
            run.log_datasets({k: (v, all_tags.get(f"{TAG}.input.{k}")) for k, v in datasets.items()})
        try:
            yield run
        except BaseException:
            _retry(self.client.set_terminated, info.run_id, "FAILED")
            raise
        _retry(self.client.set_terminated, info.run_id, "FAILED" if run.failed else "FINISHED")

    def link(self, tag: str, output_tag: str, digest: str) -> dict[str, str]:
        """``{tag: run id}`` of the run that wrote an input (its ``output_tag`` is the input's
        ``digest``), or ``{}`` when no run of this experiment did."""
        run_id = self.find_run(output_tag, digest)
        return {tag: run_id} if run_id else {}

    def promote(self, run_id: str, metric: str, value: float, alias: str = CHAMPION) -> str | None:
        """Give ``alias`` to the registered version that ``run_id`` logged (its tag
        ``fmnist.registered_model``, name/version) when its ``metric`` (``value``) beats the current
        holder's, or nothing holds it. The reason goes on the version and on the run as the tag
        ``fmnist.champion``; returns it, or None when the run registered no model."""
        registered = _retry(self.client.get_run, run_id).data.tags.get(f"{TAG}.registered_model", "")
        registered_name, _, version = registered.rpartition("/")
        if not registered_name:
            return None
        try:
            holder = _retry(self.client.get_model_version_by_alias, registered_name, alias)
        except Exception as err:
            if "RESOURCE_DOES_NOT_EXIST" not in str(err) and "not found" not in str(err).lower():
                raise
            holder = None
        if holder is None:
            promoted, reason = True, f"first {alias}: {metric}={value:.4f}"
        elif holder.version == version:
            return f"version {version} is already {alias}"
        else:
            best = _retry(self.client.get_run, holder.run_id).data.metrics.get(metric)
            promoted = best is None or value > best
            was = "none" if best is None else f"{best:.4f}"
            reason = (f"{metric}={value:.4f} {'beats' if promoted else 'does not beat'} {alias} "
                      f"version {holder.version} ({was})")
        if promoted:
            _retry(self.client.set_registered_model_alias, registered_name, alias, version)
        _retry(self.client.set_model_version_tag, registered_name, version, f"{TAG}.{alias}", reason)
        _retry(self.client.set_tag, run_id, f"{TAG}.{alias}", reason)
        return f"{registered_name} version {version}: {reason}"

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


    def log_datasets(self, datasets: dict[str, tuple[str | Path, str | None]]) -> None:
        """``{name: (file, digest or None)}`` as dataset inputs; the digest is the file's MD5,
        DVC's checksum of it. The context (training, validation, testing) comes from the name."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = []
        for name, (path, digest) in datasets.items():
            dataset = MetaDataset(source=LocalArtifactDatasetSource(Path(path).as_posix()), name=name,
                                  digest=digest or file_digest(path))
            context = next((c for key, c in DATASET_CONTEXTS if key in name), "input")
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
        _retry(self.client.log_inputs, self.id, datasets=inputs)

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(self.client.log_text, self.id, text, artifact_file)


# What a server that is restarting, or a database it is reconnecting to, looks like to the client.
TRANSIENT = ("locked", "Max retries exceeded", "Connection refused", "Connection reset", "RemoteDisconnected",
             "Connection aborted", "OperationalError", "too many 500 error responses", "503")


def _retry(fn, *args, attempts: int = 8, **kwargs):
    """Retry an MLflow call that failed on a busy SQLite store ("database is locked") or on a
    server that went away for a moment (MLflow's own HTTP retries, about four minutes with their
    backoff, come first). Bounded: the eighth failure is raised."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not any(s in str(err) for s in TRANSIENT) or attempt == attempts - 1:
                raise
            log.warning("MLflow call %s failed (%s); retry %d of %d", getattr(fn, "__name__", fn),
                        str(err).splitlines()[0][:200], attempt + 1, attempts - 1)
            time.sleep(min(0.2 * 2**attempt, 10))


DATASET_CONTEXTS = (("train", "training"), ("valid", "validation"), ("test", "testing"))
