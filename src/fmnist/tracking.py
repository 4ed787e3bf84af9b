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
import itertools
import json
import logging
import os
import socket
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
# MLflow samples CPU, memory, disk and network (GPU too, with nvidia-ml-py installed) on a thread
# and logs them as ``system/*`` metrics. Every 5 s here, MLflow's default 10 s being longer than an
# evaluate stage; its own environment variables rule: MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL sets
# the interval, MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns the monitor off (true: on for
# every run, the search trials too).
SYSTEM_METRICS_INTERVAL_S = 5.0


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
        self.root = root
        self.uri = uri or tracking_uri(root)
        check_reachable(self.uri, experiment)
        if self.uri.startswith(("http://", "https://")):
            # MLflow's own HTTP retries back off for about two minutes, silently; a few seconds of
            # them, then _retry's logged, time-bounded ones (set either variable to choose yourself)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
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
            datasets: dict[str, str | Path] | None = None, system_metrics: bool = False,
            resume: str | None = None) -> Iterator["Run"]:
        """Start a run; end it FINISHED, or FAILED when the body raises.

        A top-level run first resolves the runs of its stage (tag ``fmnist.stage``) that this
        workspace left RUNNING when their process died (:meth:`resolve_dead_runs`): ``resume``, the
        id a checkpoint names, is continued rather than a new run started, when it is one of them;
        the others end KILLED. Every run is tagged with the host, pid and workspace that run it.

        ``datasets``: ``{name: file}`` the stage read, logged as the run's dataset inputs (the
        UI's Datasets column) with DVC's checksum of the file as digest. ``system_metrics``:
        MLflow's system metrics monitor samples the machine while the run lasts (see
        :data:`SYSTEM_METRICS_INTERVAL_S`), unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says otherwise.
        """
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        all_tags = {MLFLOW_RUN_NAME: name, **(tags or {}), **process_tags(), f"{TAG}.workspace": str(self.root)}
        if parent:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent
        resumed = None if parent else self.resolve_dead_runs(all_tags.get(f"{TAG}.stage", ""), resume)
        if resumed:
            run = Run(self, resumed, resumed=True)
            _retry(self.client.update_run, resumed, status="RUNNING")
            run.set_tags(all_tags | {f"{TAG}.resumed_by": f"pid {os.getpid()} on {socket.gethostname()}"})
            log.info("continuing MLflow run %s, which its checkpoint names", resumed)
            info = _retry(self.client.get_run, resumed).info
        else:
            info = _retry(self.client.create_run, self.experiment_id, tags=all_tags, run_name=name).info
            run = Run(self, info.run_id)
        if datasets:
            run.log_datasets({k: (v, all_tags.get(f"{TAG}.input.{k}")) for k, v in datasets.items()})
        monitor = (_start_system_metrics(info.run_id, self.uri, resumed=bool(resumed))
                   if system_metrics_on(system_metrics) else None)
        try:
            yield run
        except BaseException:
            _finish_system_metrics(monitor)
            _retry(self.client.set_terminated, info.run_id, "FAILED")
            raise
        _finish_system_metrics(monitor)
        _retry(self.client.set_terminated, info.run_id, "FAILED" if run.failed else "FINISHED")

    def resolve_dead_runs(self, stage: str, resume: str | None = None) -> str | None:
        """End as KILLED the runs of ``stage`` that this workspace (host and project root) left
        RUNNING and whose process is gone (SIGKILL, the OOM killer, a power cut), with the tag
        ``fmnist.killed_reason``, and their RUNNING child runs too; return ``resume`` instead of
        ending it when it is one of them, or a run this resolution ended before, so that the caller
        continues it. A run whose process is alive (another queue worker), or that ran on another
        host, is left alone."""
        if not stage:
            return None
        runs = _retry(self.client.search_runs, [self.experiment_id], max_results=1000,
                      filter_string=f"tags.`{TAG}.stage` = '{stage}' and attributes.status = 'RUNNING'")
        continued = None
        for found in runs:
            tags = found.data.tags
            if tags.get(f"{TAG}.workspace") != str(self.root) or process_alive(tags) is not False:
                continue
            if found.info.run_id == resume:
                continued = resume
                continue
            self._end_killed(found.info.run_id, f"its process (pid {tags.get(f'{TAG}.pid')} on "
                             f"{tags.get(f'{TAG}.host')}) died without ending it, and the next {stage} "
                             f"run in this workspace (pid {os.getpid()}) could not continue it")
            children = _retry(self.client.search_runs, [self.experiment_id], max_results=10000,
                              filter_string=f"tags.`mlflow.parentRunId` = '{found.info.run_id}' "
                                            f"and attributes.status = 'RUNNING'")
            for child in children:
                if process_alive(child.data.tags) is not True:
                    self._end_killed(child.info.run_id, f"its parent run {found.info.run_id} died")
        if resume and continued is None:
            with contextlib.suppress(Exception):  # a run of another store or experiment: start anew
                again = _retry(self.client.get_run, resume)
                if (again.info.experiment_id == self.experiment_id and again.info.status == "KILLED"
                        and f"{TAG}.killed_reason" in again.data.tags
                        and again.data.tags.get(f"{TAG}.workspace") == str(self.root)):
                    _retry(self.client.delete_tag, resume, f"{TAG}.killed_reason")
                    continued = resume
        return continued

    def _end_killed(self, run_id: str, reason: str) -> None:
        from mlflow.entities import RunTag

        log.warning("ending MLflow run %s as KILLED: %s", run_id, reason)
        _retry(self.client.log_batch, run_id, tags=[RunTag(f"{TAG}.killed_reason", reason)])
        _retry(self.client.set_terminated, run_id, "KILLED")

    def logged_model(self, run_id: str) -> str | None:
        """The id of the MLflow logged model that ``run_id`` produced (its model output), or None."""
        outputs = _retry(self.client.get_run, run_id).outputs
        models = outputs.model_outputs if outputs else []
        return models[-1].model_id if models else None

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

    def __init__(self, tracker: Tracker, run_id: str, resumed: bool = False):
        self.tracker = tracker
        self.client = tracker.client
        self.id = run_id
        self.failed = False  # set to end the run FAILED without raising (a failed search trial)
        # A continued run keeps what it logged before: each metric once per step, params unchanged.
        self.logged_steps: set[tuple[str, int]] = set()
        self.logged_params: set[str] = set()
        if resumed:
            data = _retry(self.client.get_run, run_id).data
            self.logged_params = set(data.params)
            for key in data.metrics:
                self.logged_steps |= {(key, m.step) for m in _retry(self.client.get_metric_history, run_id, key)}
        self.datasets: dict[str, Any] = {}  # name -> the mlflow.entities.Dataset logged as an input

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in self.logged_params]
        for i in range(0, len(items), 100):
            _retry(self.client.log_batch, self.id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0, model_id: str | None = None,
                    dataset: str | None = None) -> None:
        """``model_id``: the logged model the values measure (they show on its page); ``dataset``:
        the name of this run's dataset input they were measured on."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        on = self.datasets[dataset] if dataset else None
        items = [Metric(k, float(v), now, step, model_id=model_id, dataset_name=on and on.name,
                        dataset_digest=on and on.digest) for k, v in metrics.items()
                 if v is not None and (k, step) not in self.logged_steps]
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
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = []
        for name, (path, digest) in datasets.items():
            # MLflow's "local" source type, as mlflow.data's LocalArtifactDatasetSource records it
            dataset = Dataset(name=name, digest=digest or file_digest(path), source_type="local",
                              source=json.dumps({"uri": Path(path).as_posix()}))
            context = next((c for key, c in DATASET_CONTEXTS if key in name), "input")
            inputs.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
            self.datasets[name] = dataset
        _retry(self.client.log_inputs, self.id, datasets=inputs)

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(self.client.log_text, self.id, text, artifact_file)


# What a server that is restarting, or a database it is reconnecting to, looks like to the client.
TRANSIENT = ("locked", "Max retries exceeded", "Connection refused", "Connection reset", "RemoteDisconnected",
             "Connection aborted", "OperationalError", "too many 500 error responses", "503")
RETRY_S = 300.0  # how long _retry keeps trying after a call's first failure


def _retry(fn, *args, within_s: float = RETRY_S, **kwargs):
    """Retry an MLflow call that failed on a busy SQLite store ("database is locked"), a server
    that went away (killed, restarting) or a server whose database did; each failure is a warning
    that names the call and the attempt. Bounded in time: after ``within_s`` seconds of failures,
    one line naming the store and what failed (TrackingError); an error that is not transient at
    once. MLflow's metrics have the client's timestamps, so a retried batch never logs twice."""
    start = time.monotonic()
    for attempt in itertools.count(1):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            reason = _transient(err)
            if reason is None:
                raise
            name, waited = getattr(fn, "__name__", str(fn)), time.monotonic() - start
            if waited >= within_s:
                raise TrackingError(f"MLflow tracking store {_store_uri(fn)} {reason} for {waited:.0f} s: "
                                    f"{name} failed {attempt} times") from None
            pause = min(0.5 * 2 ** (attempt - 1), 10.0, max(within_s - waited, 0.0))
            log.warning("MLflow call %s failed, attempt %d (%s); retrying in %.1f s", name, attempt, reason, pause)
            time.sleep(pause)


def _transient(err: Exception) -> str | None:
    """What a transient failure looks like in words, or None when ``err`` is not one."""
    text = str(err)
    if not any(s in text for s in TRANSIENT):
        return None
    for marker, words in (("locked", "is locked"), ("Connection refused", "refused the connection"),
                          ("500 error", "answered 500 (its database?)"), ("503", "answered 503"),
                          ("OperationalError", "could not use its database")):
        if marker in text:
            return words
    return "dropped the connection"


def _store_uri(fn) -> str:
    """The store an MlflowClient method talks to (the process's tracking URI for anything else)."""
    uri = getattr(getattr(fn, "__self__", None), "tracking_uri", None)
    if isinstance(uri, str):
        return uri
    import mlflow

    return mlflow.get_tracking_uri()


def process_tags() -> dict[str, str]:
    """Who runs a run: host, pid and the process's start time (a pid reused since is not it)."""
    return {f"{TAG}.host": socket.gethostname(), f"{TAG}.pid": str(os.getpid()),
            f"{TAG}.pid_start": _process_start(os.getpid()) or "unknown"}


def _process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or None
    when it has ended, is a zombie or the system has no ``/proc``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def process_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process a run's tags name (:func:`process_tags`) still runs: True, False, or
    None when it ran on another host (or is not tagged) and nobody here can tell."""
    if tags.get(f"{TAG}.host") != socket.gethostname():
        return None
    try:
        pid = int(tags.get(f"{TAG}.pid", ""))
    except ValueError:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    if not Path("/proc").is_dir():
        return True
    started = _process_start(pid)
    return started is not None and tags.get(f"{TAG}.pid_start") in (started, "unknown")


DATASET_CONTEXTS = (("train", "training"), ("valid", "validation"), ("test", "testing"))


def system_metrics_on(default: bool) -> bool:
    """MLflow's own switch, MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING, when it is set; else ``default``."""
    from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING as switch

    if not switch.is_set():
        return default
    try:
        return switch.get()
    except ValueError:
        raise TrackingError(f"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING={os.environ[switch.name]!r}: "
                            f"use true or false") from None


def _start_system_metrics(run_id: str, uri: str, resumed: bool = False):
    """MLflow's system metrics monitor on ``run_id``, the one ``mlflow.start_run(log_system_metrics=
    True)`` starts; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, when set, overrides the interval. A
    continued run's figures go on after its last step, as when MLflow resumes a run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=resumed,
                                       tracking_uri=uri)
    except ImportError as err:
        raise TrackingError(f"system metrics need {err.name or 'psutil'} (make setup installs it), or set "
                            f"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false") from None
    monitor.start()
    return monitor


def _finish_system_metrics(monitor) -> None:
    """Stop the monitor, then log what it sampled since it last logged: the monitor logs only after
    a whole interval, so a run shorter than one would otherwise end without figures."""
    if monitor is None:
        return
    monitor.finish()
    last = monitor.aggregate_metrics()
    if last:
        monitor.publish_metrics(last)
        monitor.mlflow_logger.flush()
