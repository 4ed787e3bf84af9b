"""No MLflow run left RUNNING: a stage that dies without ending its run (SIGKILL) leaves it to the
next run of the same stage in the same workspace, which continues it (the run its checkpoint
names) or ends it KILLED with the reason, and leaves a run whose process is alive alone. Real
processes, a real SQLite store; the slow test kills a real ``dvc repro`` mid-train. The same
against the team server is in ``test_team_faults.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import edit_params, env_for, make_repo, sh

EXPERIMENT = "fashion-mnist-alexnet"
EPOCH_KEYS = ("train_loss", "valid_loss", "train_acc", "valid_acc")
REPRO_TIMEOUT = 1800

# A stage's process, reduced to its run: it opens a run of stage argv[2] in the workspace that is
# its working directory, logs steps 1 and 2, then SIGKILLs itself or lives on.
STAGE = textwrap.dedent('''
    import os, signal, sys, time
    from fmnist.tracking import Tracker
    tracker = Tracker(sys.argv[4], uri=sys.argv[1])
    with tracker.run(sys.argv[2], tags={"fmnist.stage": sys.argv[2]}) as run:
        run.log_params({"lr": 0.001})
        for step in (1, 2):
            run.log_metrics({"valid_acc": step / 10, "train_loss": 2.0 - step / 10}, step=step)
        print("run", run.id, flush=True)
        if sys.argv[3] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(900)
''')


def workspace(path: Path) -> Path:
    """A folder that ``project_root`` takes for a project: ``dvc.yaml`` and ``.dvc/``."""
    (path / ".dvc").mkdir(parents=True)
    (path / "dvc.yaml").write_text("stages: {}\n")
    return path


def stage_process(folder: Path, uri: str, stage: str, fate: str, env: dict | None = None):
    """(process, run id) of a :data:`STAGE` process in ``folder``, once its run is open."""
    proc = subprocess.Popen([sys.executable, "-c", STAGE, uri, stage, fate, EXPERIMENT], cwd=folder,
                            env=env or env_for(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_id = ""
    for line in proc.stdout:  # MLflow prints a link to each run it ends, e.g. one this start resolved
        if line.startswith("run "):
            run_id = line.split()[1]
            break
    assert run_id, proc.stderr.read() if proc.poll() is not None else "no run id"
    if fate == "die":
        assert proc.wait(timeout=60) == -signal.SIGKILL
    return proc, run_id


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A workspace with a SQLite store; the test process works in it, as a stage does."""
    from mlflow.tracking import MlflowClient

    folder = workspace(tmp_path / "project")
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return {"folder": folder, "uri": uri, "client": MlflowClient(uri)}


def status(client, run_id: str) -> str:
    return client.get_run(run_id).info.status


def steps(client, run_id: str, key: str) -> list[int]:
    """Every logged step of ``key``, duplicates included, in order."""
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# --- whose process is alive -----------------------------------------------------------------------

def test_process_alive_tells_a_live_process_from_a_dead_or_reused_pid():
    from fmnist.tracking import TAG, _process_start, process_alive

    proc = subprocess.Popen(["sleep", "600"])
    try:
        tags = {f"{TAG}.host": socket.gethostname(), f"{TAG}.pid": str(proc.pid),
                f"{TAG}.pid_start": _process_start(proc.pid)}
        assert process_alive(tags) is True
        assert process_alive(tags | {f"{TAG}.pid_start": "1"}) is False  # the pid, given to another process
        assert process_alive(tags | {f"{TAG}.host": "another-host"}) is None  # nobody here can tell
        assert process_alive({}) is None
    finally:
        proc.kill()
    proc.wait()
    assert process_alive(tags) is False


# --- the next run of the stage resolves the dead one ----------------------------------------------

def test_a_dead_stage_run_ends_killed_with_the_reason_and_a_live_one_is_left_alone(store):
    from fmnist.tracking import Tracker

    folder, uri, client = store["folder"], store["uri"], store["client"]
    alive, live = stage_process(folder, uri, "train", "live")  # first: each run's start resolves the dead
    _, dead = stage_process(folder, uri, "train", "die")
    try:
        _, other_stage = stage_process(folder, uri, "evaluate", "die")
        elsewhere = workspace(folder.parent / "elsewhere")
        _, other_workspace = stage_process(elsewhere, uri, "train", "die")
        for run_id in (dead, live, other_stage, other_workspace):
            assert status(client, run_id) == "RUNNING"

        tracker = Tracker(EXPERIMENT, uri=uri)
        with tracker.run("train", tags={"fmnist.stage": "train"}) as run:
            assert run.id not in (dead, live)
        assert status(client, run.id) == "FINISHED"
        assert status(client, dead) == "KILLED"
        reason = client.get_run(dead).data.tags["fmnist.killed_reason"]
        pid = client.get_run(dead).data.tags["fmnist.pid"]
        assert reason == (f"its process (pid {pid} on {socket.gethostname()}) died without ending it, and the "
                          f"next train run in this workspace (pid {os.getpid()}) could not continue it")
        assert status(client, live) == "RUNNING"  # its process still works: another queue worker
        assert "fmnist.killed_reason" not in client.get_run(live).data.tags
        assert status(client, other_stage) == "RUNNING"  # evaluate's next run resolves it
        assert status(client, other_workspace) == "RUNNING"  # its own workspace's next run does
    finally:
        alive.kill()
        alive.wait()
    with tracker.run("train", tags={"fmnist.stage": "train"}):
        pass
    assert status(client, live) == "KILLED"


def test_the_run_a_checkpoint_names_is_continued_and_keeps_each_step_once(store):
    from fmnist.tracking import Tracker

    folder, uri, client = store["folder"], store["uri"], store["client"]
    _, dead = stage_process(folder, uri, "train", "die")
    _, other = stage_process(folder, uri, "train", "die")  # its start ended ``dead`` KILLED: still continued
    assert status(client, dead) == "KILLED"
    tracker = Tracker(EXPERIMENT, uri=uri)
    with tracker.run("train", tags={"fmnist.stage": "train"}, resume=dead) as run:
        assert run.id == dead
        assert status(client, dead) == "RUNNING"
        run.log_params({"lr": 0.001, "threads": 2})  # the same params again, and one more
        for step in (1, 2, 3):  # a resumed fit logs the checkpoint's epochs again, then its own
            run.log_metrics({"valid_acc": step / 10, "train_loss": 2.0 - step / 10}, step=step)
    after = client.get_run(dead)
    assert after.info.status == "FINISHED"
    assert after.data.tags["fmnist.resumed_by"] == f"pid {os.getpid()} on {socket.gethostname()}"
    assert after.data.tags["fmnist.pid"] == str(os.getpid())
    assert "fmnist.killed_reason" not in after.data.tags
    assert after.data.params == {"lr": "0.001", "threads": "2"}
    for key in ("valid_acc", "train_loss"):
        assert steps(client, dead, key) == [1, 2, 3], key
    assert status(client, other) == "KILLED"  # dead too, and no checkpoint names it
    runs = client.search_runs([tracker.experiment_id], "tags.`fmnist.stage` = 'train'")
    assert sorted(r.info.run_id for r in runs) == sorted([dead, other])  # no new run was started


def test_a_run_whose_process_lives_is_not_continued(store):
    from fmnist.tracking import Tracker

    folder, uri, client = store["folder"], store["uri"], store["client"]
    alive, live = stage_process(folder, uri, "train", "live")
    try:
        tracker = Tracker(EXPERIMENT, uri=uri)
        with tracker.run("train", tags={"fmnist.stage": "train"}, resume=live) as run:
            assert run.id != live
        assert status(client, live) == "RUNNING"
        assert steps(client, live, "valid_acc") == [1, 2]
    finally:
        alive.kill()
        alive.wait()


def test_a_search_that_died_ends_its_trials_too(store):
    from fmnist.tracking import Tracker

    folder, uri, client = store["folder"], store["uri"], store["client"]
    script = STAGE.replace('time.sleep(900)', '').replace(
        '    print("run", run.id, flush=True)\n',
        '    trial_ctx = tracker.run("r1 lr=0.001", tags={"fmnist.stage": "search-trial"}, parent=run.id)\n'
        '    trial = trial_ctx.__enter__()\n'
        '    print(run.id, trial.id, flush=True)\n')
    proc = subprocess.Popen([sys.executable, "-c", script, uri, "search", "die", EXPERIMENT], cwd=folder,
                            env=env_for(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ids = proc.stdout.readline().split()
    assert len(ids) == 2, proc.stderr.read()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    search, trial = ids
    tracker = Tracker(EXPERIMENT, uri=uri)
    with tracker.run("search", tags={"fmnist.stage": "search"}):
        pass
    assert status(client, search) == "KILLED" and status(client, trial) == "KILLED"
    assert client.get_run(trial).data.tags["fmnist.killed_reason"] == f"its parent run {search} died"


# --- the checkpoint names its run ------------------------------------------------------------------

class StopAfter(Exception):
    pass


def test_the_checkpoint_names_its_run_while_training_can_resume(tmp_path):
    import numpy as np

    from fmnist.batches import ImageSet
    from fmnist.checkpoint import EpochCheckpoint
    from fmnist.compute import Compute, seed_everything
    from fmnist.model import ModelSpec
    from fmnist.params import HyperParams
    from fmnist.training import FitSettings, build_net

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (84, 67, 67), dtype=np.uint8), np.arange(84) % 10
    train, valid = ImageSet(images[:64], labels[:64]), ImageSet(images[64:], labels[64:])
    seed_everything(7)
    ckpt = EpochCheckpoint(tmp_path, "fp", run_id="run-1")
    net = build_net(ModelSpec("AlexNetSmall", 67, 0.5), HyperParams(lr=1e-3, batch_size=32, dropout=0.5),
                    Compute("cpu", "fp32"), FitSettings(max_epochs=2, patience=5, seed=7), valid,
                    extra_callbacks=[("checkpoint", ckpt)])
    net.initialize()
    real_on_epoch_end = ckpt.on_epoch_end

    def die_after_first(net, **kw):  # the checkpoint is written, then the process "dies"
        real_on_epoch_end(net, **kw)
        raise StopAfter

    ckpt.on_epoch_end = die_after_first
    with pytest.raises(StopAfter):
        net.partial_fit(train, epochs=2)
    assert EpochCheckpoint(tmp_path, "fp").run_to_resume(max_epochs=2) == "run-1"
    assert EpochCheckpoint(tmp_path, "other params").run_to_resume(max_epochs=2) is None
    assert EpochCheckpoint(tmp_path, "fp").run_to_resume(max_epochs=1) is None  # it would not resume
    assert EpochCheckpoint(tmp_path / "empty", "fp").run_to_resume(max_epochs=2) is None


# --- the retry --------------------------------------------------------------------------------------

def test_a_call_to_a_server_that_is_down_is_retried_with_a_warning_then_fails_in_one_line(monkeypatch, caplog):
    import logging

    from mlflow.tracking import MlflowClient

    from fmnist.errors import TrackingError
    from fmnist.tracking import _retry
    from helpers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    client = MlflowClient(url)
    caplog.set_level(logging.WARNING, logger="fmnist.tracking")
    start = time.monotonic()
    with pytest.raises(TrackingError) as raised:
        _retry(client.get_run, "0" * 32, within_s=2)
    assert time.monotonic() - start < 30
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"MLflow tracking store {url} refused the connection for ")
    assert message.endswith(f"get_run failed {len(caplog.records) + 1} times")
    assert len(caplog.records) >= 2
    for attempt, record in enumerate(caplog.records, 1):
        assert record.levelno == logging.WARNING
        assert record.getMessage().startswith(
            f"MLflow call get_run failed, attempt {attempt} (refused the connection); retrying in ")


def test_an_error_that_is_not_transient_is_raised_at_once(store, caplog):
    from fmnist.tracking import _retry

    with pytest.raises(Exception, match="RESOURCE_DOES_NOT_EXIST|not found"):
        _retry(store["client"].get_run, "0" * 32)
    assert not caplog.records or all("retrying" not in r.getMessage() for r in caplog.records)


# --- a real dvc repro, SIGKILLed mid-train ---------------------------------------------------------

def train_runs(client, experiment_id: str, repo: Path) -> list:
    """The train runs of the workspace ``repo`` (a team server's experiment holds other people's)."""
    return client.search_runs([experiment_id], f"tags.`fmnist.stage` = 'train' and "
                                               f"tags.`fmnist.workspace` = '{repo.resolve()}'", max_results=100)


def start_repro(repo: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """``dvc repro train`` in its own process group, so that one SIGKILL takes the stage too."""
    with open(log, "w") as out:
        return subprocess.Popen(["dvc", "repro", "train"], cwd=repo, env=env or env_for(repo), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_after_epoch_one(proc: subprocess.Popen, log: Path, epoch_one_logged, timeout_s: float = REPRO_TIMEOUT):
    """SIGKILL ``proc``'s whole group once ``epoch_one_logged()`` says the store has epoch 1."""
    deadline = time.monotonic() + timeout_s
    while not epoch_one_logged():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "train never logged epoch 1"
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def checkpointed_epochs(repo: Path) -> int:
    import torch

    return len(json.loads(torch.load(repo / "checkpoints/train/last.pt", weights_only=True)["history"]))


def sigkilled_repro_is_resolved(repo: Path, client, env: dict, epochs: int, tmp_path: Path) -> None:
    """The scenario, on whichever store ``env`` points at: a SIGKILLed ``dvc repro`` mid-train;
    the rerun continues the same run; a killed run of other params ends KILLED while a run whose
    process lives is left alone."""
    from fmnist.tracking import process_alive

    def epoch_one(exclude: set[str]):
        def logged() -> bool:
            experiment = client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                return False
            runs = [r for r in train_runs(client, experiment.experiment_id, repo) if r.info.run_id not in exclude]
            return bool(runs) and bool(client.get_metric_history(runs[0].info.run_id, "valid_acc"))
        return logged

    proc = start_repro(repo, tmp_path / "killed.log", env)
    kill_after_epoch_one(proc, tmp_path / "killed.log", epoch_one(set()))
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    [killed] = train_runs(client, experiment_id, repo)
    assert killed.info.status == "RUNNING"  # nothing ended it
    assert process_alive(killed.data.tags) is False
    done = checkpointed_epochs(repo)
    assert 1 <= done < epochs

    rerun = sh(repo, "dvc", "repro", "train", env=env, timeout=REPRO_TIMEOUT)
    output = rerun.stdout + rerun.stderr
    assert f"resuming from checkpoints/train/last.pt after epoch {done}" in output, output[-3000:]
    assert f"continuing MLflow run {killed.info.run_id}" in output
    [run] = train_runs(client, experiment_id, repo)  # the same run, not a second one
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    for key in EPOCH_KEYS:
        assert steps(client, run.info.run_id, key) == list(range(1, epochs + 1)), key
    assert json.loads((repo / "metrics/mlflow.json").read_text()) == {"train_run_id": run.info.run_id}

    # Other params: the killed run cannot be continued (its checkpoint is of another fingerprint).
    edit_params(repo, "train", "seed", 8)
    proc = start_repro(repo, tmp_path / "killed2.log", env)
    kill_after_epoch_one(proc, tmp_path / "killed2.log", epoch_one({run.info.run_id}))
    [unresumable] = [r for r in train_runs(client, experiment_id, repo) if r.info.status == "RUNNING"]
    # a stage of this workspace that still runs (another queue worker, say)
    alive, live = stage_process(repo, client.tracking_uri, "train", "live", env)
    try:
        edit_params(repo, "train", "seed", 9)
        sh(repo, "dvc", "repro", "train", env=env, timeout=REPRO_TIMEOUT)
        after = {r.info.run_id: r for r in train_runs(client, experiment_id, repo)}
        assert after[unresumable.info.run_id].info.status == "KILLED"
        assert "died without ending it" in after[unresumable.info.run_id].data.tags["fmnist.killed_reason"]
        assert after[live].info.status == "RUNNING"
        newest = json.loads((repo / "metrics/mlflow.json").read_text())["train_run_id"]
        assert newest not in (unresumable.info.run_id, run.info.run_id, live)
        assert after[newest].info.status == "FINISHED"
        assert steps(client, newest, "valid_acc") == list(range(1, epochs + 1))
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.slow
def test_sigkilled_dvc_repro_leaves_no_run_running_in_the_local_store(data_source, tmp_path):
    from mlflow.tracking import MlflowClient

    repo = make_repo(tmp_path / "repo")
    epochs = 3
    edit_params(repo, "train", "max_epochs", epochs)
    env = env_for(repo)
    sh(repo, "dvc", "repro", "search", env=env, timeout=REPRO_TIMEOUT)  # upstream once, before any kill
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    sigkilled_repro_is_resolved(repo, client, env, epochs, tmp_path)
