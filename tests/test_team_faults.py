"""Faults as they happen: each part of the team stack (``make team-up``'s real servers) SIGKILLed
in the middle of work, with no shutdown handler run, and what survived checked byte for byte.

- the MLflow server, mid-epoch: a client call meets the outage and is retried (its warning is in
  the stage's output), and after ``make team-up`` every epoch is on the server, once;
- PostgreSQL, mid-training: ``make team-up`` brings it back (crash recovery), and the stage
  finishes with every epoch logged, or fails in one line and a rerun resumes from its checkpoint;
  either way ``model.pt`` is byte-identical to the same training without a fault;
- SeaweedFS, during ``dvc push``: a second push completes, and ``dvc pull`` into a fresh clone
  gives the same bytes;
- ``dvc repro`` itself, mid-train: the run it left RUNNING is continued by the rerun, or ended
  KILLED when it cannot be, as against the local store in ``test_run_resolution.py``.

The stack runs under its own ``TEAM_HOME`` and free ports; ``make team-down`` ends it.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from helpers import ROOT, edit_params, env_for, free_ports, make_repo, sh
from test_run_resolution import EPOCH_KEYS, REPRO_TIMEOUT, sigkilled_repro_is_resolved, start_repro

pytestmark = pytest.mark.slow

EXPERIMENT = "fashion-mnist-alexnet"
PORTS = range(16000, 17000)  # the stack's ports are picked free from here
EPOCHS = 3  # epoch 1 is logged before the kill; the outage meets a later epoch's call
RETRY = re.compile(r"MLflow call (\w+) failed, attempt (\d+) \(([^)]*)\); retrying in")


# --- the stack, through the Makefile and the team CLI -----------------------------------------------



def team_cli() -> list[str]:
    """The team command line: the package's CLI, or the script it replaced."""
    if importlib.util.find_spec("fmnist.team") is not None:
        return [sys.executable, "-m", "fmnist.team"]
    return [sys.executable, str(ROOT / "scripts/team.py")]


def have_postgres() -> bool:
    return bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


class Team:
    """One stack: its home and ports, started and restarted with ``make team-up`` as a user does."""

    def __init__(self, home: Path):
        self.home = home
        ports = {"TEAM_MLFLOW_PORT": free_ports(1, PORTS.start, PORTS.stop), "TEAM_S3_PORT": free_ports(1, PORTS.start, PORTS.stop), "TEAM_PG_PORT": free_ports(1, PORTS.start, PORTS.stop),
                 "TEAM_WEED_PORTS": free_ports(10, PORTS.start, PORTS.stop)}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAM_", "MLFLOW_", "AWS_"))}
        self.env |= {"TEAM_HOME": str(home)} | {k: str(v) for k, v in ports.items()}
        self.url = f"http://127.0.0.1:{ports['TEAM_MLFLOW_PORT']}"

    def make(self, target: str) -> str:
        # -o: the suite runs in the venv `make test` set up (the team extra included); nothing is
        # reinstalled under it
        result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-o", "setup", "-o", "setup-team",
                                 target],
                                env=self.env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"make {target} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def cli(self, *args: str, cwd: Path | None = None) -> str:
        result = subprocess.run([*team_cli(), *args], env=self.env, capture_output=True, text=True, timeout=300,
                                cwd=cwd or ROOT)
        assert result.returncode == 0, f"team {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def client_env(self) -> dict[str, str]:
        """What ``env`` exports: the tracking URI, the admin account, the S3 keys."""
        found = {}
        for line in self.cli("env").splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            found[key] = shlex.split(value)[0] if value else ""
        return found

    def user_env(self, repo: Path) -> dict[str, str]:
        return env_for(repo) | self.client_env()

    def api(self, method: str, path: str, **kwargs) -> dict:
        c = self.client_env()
        response = requests.request(method, f"{self.url}/api/2.0/mlflow/{path}", timeout=60,
                                    auth=(c["MLFLOW_TRACKING_USERNAME"], c["MLFLOW_TRACKING_PASSWORD"]), **kwargs)
        response.raise_for_status()
        return response.json()

    def s3(self):
        import boto3

        c = self.client_env()
        return boto3.client("s3", endpoint_url=c["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id=c["AWS_ACCESS_KEY_ID"], aws_secret_access_key=c["AWS_SECRET_ACCESS_KEY"])

    # -- SIGKILL, as a crash, the OOM killer or a power cut would: no handler runs ---------------------

    def kill(self, service: str) -> list[int]:
        """SIGKILL every process of ``service`` (mlflow, seaweedfs or postgres) at once; the pids."""
        if service == "postgres":
            [pid_file] = glob.glob(str(self.home / "**" / "postmaster.pid"), recursive=True)
        else:
            pid_file = str(self.home / "run" / f"{service}.pid")
        leader = int(Path(pid_file).read_text().split()[0])
        tree = [leader, *descendants(leader)]  # all of them first: a child outliving its parent is re-parented
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(running(pid) for pid in tree):
            assert time.monotonic() < deadline, f"{service} processes outlived SIGKILL: {tree}"
            time.sleep(0.1)
        return tree


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stack_processes(home: Path) -> list[str]:
    """Processes whose command line or environment names the stack's home: what ``down`` must end."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if (str(home) in cmd or f"={home}".encode() in environ) and "pytest" not in cmd and running(int(proc.name)):
            found.append(f"{proc.name}: {cmd[:200]}")
    return found


@pytest.fixture(scope="module")
def team(data_source):
    if not have_postgres():
        pytest.skip("PostgreSQL missing (initdb): bash scripts/install-system-deps.sh installs it")
    # Not pytest's tmp_path: its folders are 0700 root's, and PostgreSQL runs as the postgres user.
    base = Path(tempfile.mkdtemp(prefix="fmnist-faults-"))
    os.chmod(base, 0o755)
    t = Team(base / "team")
    try:
        t.make("team-up")
        yield t
    finally:
        down = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "team-down"], env=t.env,
                              capture_output=True, text=True, timeout=600)
        left = stack_processes(t.home)
        shutil.rmtree(base, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not left, f"make team-down left processes behind: {left}"


@pytest.fixture(scope="module")
def project(team, tmp_path_factory) -> dict:
    """The tiny project logging to the stack, reproduced up to search (train is what gets hit)."""
    repo = make_repo(tmp_path_factory.mktemp("faults") / "repo")
    edit_params(repo, "train", "max_epochs", EPOCHS)
    sh(repo, "git", "commit", "-qam", f"{EPOCHS} epochs")
    env = team.user_env(repo)
    sh(repo, "dvc", "repro", "search", env=env, timeout=REPRO_TIMEOUT)
    return {"repo": repo, "env": env}


def runs(team: Team, filter_string: str = "") -> list[dict]:
    experiment = team.api("GET", "experiments/get-by-name", params={"experiment_name": EXPERIMENT})["experiment"]
    body = {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000, "filter": filter_string}
    return team.api("POST", "runs/search", json=body).get("runs", [])


def train_runs(team: Team) -> dict[str, dict]:
    return {r["info"]["run_id"]: r for r in runs(team, "tags.`fmnist.stage` = 'train'")}


def steps(team: Team, run_id: str, key: str) -> list[int]:
    """Every logged step of ``key``, duplicates included."""
    history = team.api("GET", "metrics/get-history", params={"run_id": run_id, "metric_key": key})
    return sorted(m["step"] for m in history.get("metrics", []))


def wait_for(check, what: str, proc: subprocess.Popen, log: Path, timeout_s: float = REPRO_TIMEOUT):
    """Poll ``check()`` until it returns something true; fail when ``proc`` ends first."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert proc.poll() is None, f"{what}: dvc repro ended first\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.3)


def epoch_one_of_a_new_run(team: Team, before: set[str]):
    def check() -> str | None:
        try:
            new = [r for r in train_runs(team) if r not in before]
            return next((r for r in new if steps(team, r, "valid_acc")), None)
        except requests.RequestException:
            return None
    return check


def retries_in(log: Path) -> list[tuple[str, int, str]]:
    return [(m.group(1), int(m.group(2)), m.group(3)) for m in RETRY.finditer(log.read_text())]


def assert_every_epoch_once(team: Team, run_id: str) -> None:
    for key in EPOCH_KEYS:
        assert steps(team, run_id, key) == list(range(1, EPOCHS + 1)), key


def sha256_tree(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {p.relative_to(path).as_posix() if path.is_dir() else p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


# --- the MLflow server -----------------------------------------------------------------------------

def test_mlflow_server_sigkilled_mid_epoch_retries_and_keeps_every_epoch_once(team, project, tmp_path):
    repo, env = project["repo"], project["env"]
    before = set(train_runs(team))
    log = tmp_path / "repro.log"
    proc = start_repro(repo, log, env)
    try:
        run_id = wait_for(epoch_one_of_a_new_run(team, before), "epoch 1 on the server", proc, log)
        team.kill("mlflow")
        assert not _listening(team.url)
        wait_for(lambda: retries_in(log), "a client call meeting the outage", proc, log)
        team.make("team-up")
        assert proc.wait(timeout=REPRO_TIMEOUT) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    retried = retries_in(log)
    assert retried and all(reason == "refused the connection" for _, _, reason in retried), retried
    first_call = [attempt for call, attempt, _ in retried if call == retried[0][0]]
    assert first_call == list(range(1, len(first_call) + 1)), retried  # one call, tried again and again
    run = team.api("GET", "runs/get", params={"run_id": run_id})["run"]
    assert run["info"]["status"] == "FINISHED"
    assert set(train_runs(team)) - before == {run_id}  # one run, not one per restart
    assert_every_epoch_once(team, run_id)
    assert json.loads((repo / "metrics/mlflow.json").read_text()) == {"train_run_id": run_id}


def _listening(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- PostgreSQL --------------------------------------------------------------------------------------

def test_postgres_sigkilled_mid_training_recovers_and_the_model_is_byte_identical(team, project, tmp_path):
    repo, env = project["repo"], project["env"]
    edit_params(repo, "train", "seed", 11)
    sh(repo, "dvc", "repro", "train", env=env, timeout=REPRO_TIMEOUT)  # the same training, no fault
    reference = (repo / "models/model.pt").read_bytes()

    before = set(train_runs(team))
    log = tmp_path / "repro.log"
    with open(log, "w") as out:  # -f: train again from scratch, into a new run
        proc = subprocess.Popen(["dvc", "repro", "-f", "-s", "train"], cwd=repo, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run_id = wait_for(epoch_one_of_a_new_run(team, before), "epoch 1 on the server", proc, log)
        team.kill("postgres")
        wait_for(lambda: retries_in(log), "a client call meeting the dead database", proc, log)
        up = team.make("team-up")
        assert "PostgreSQL" in up
        finished = proc.wait(timeout=REPRO_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    if not finished:  # allowed: one line naming what was unreachable, then a rerun resumes
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"MLflow tracking store {team.url}" in errors[0], output[-4000:]
        rerun = sh(repo, "dvc", "repro", "train", env=env, timeout=REPRO_TIMEOUT)
        assert "resuming from checkpoints/train/last.pt after epoch" in rerun.stdout + rerun.stderr
    assert "refused the connection" not in {reason for _, _, reason in retries_in(log)}  # the server stayed up
    assert (repo / "models/model.pt").read_bytes() == reference
    run = team.api("GET", "runs/get", params={"run_id": run_id})["run"]
    assert run["info"]["status"] == "FINISHED"
    assert set(train_runs(team)) - before == {run_id}
    assert_every_epoch_once(team, run_id)


# --- SeaweedFS -------------------------------------------------------------------------------------

def test_seaweedfs_sigkilled_during_dvc_push_a_second_push_completes_and_a_clone_pulls_the_same_bytes(
        team, project, tmp_path):
    import numpy as np

    repo, env = project["repo"], project["env"]
    team.cli("remote", "--repo", str(repo))
    sh(repo, "dvc", "remote", "default", "--local", "team", env=env)
    # many files, so that the push lasts long enough to be caught in the middle
    bulk = repo / "bulk"
    bulk.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1500):
        (bulk / f"{i:04d}.bin").write_bytes(rng.bytes(48 * 1024))
    sh(repo, "dvc", "add", "bulk", env=env)
    sh(repo, "git", "add", "-A", env=env)
    sh(repo, "git", "commit", "-qm", "outputs and a bulk folder to push", env=env)

    s3 = team.s3()

    def objects() -> int:
        try:
            return s3.list_objects_v2(Bucket="dvc", Prefix="fmnist/", MaxKeys=1000).get("KeyCount", 0)
        except Exception:  # noqa: BLE001  (any failure of a probe is "not yet")
            return 0

    log = tmp_path / "push.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["dvc", "push", "-j", "2"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: objects() >= 20, "the push under way", proc, log, timeout_s=600)
        team.kill("seaweedfs")
        team.make("team-up")
        # The interrupted push fails, or its client's retries finish it: what the store then
        # holds is what counts, and the second push and the clone check that.
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    sh(repo, "dvc", "push", env=env, timeout=900)
    status = sh(repo, "dvc", "status", "--cloud", env=env).stdout
    assert "Cache and remote 'team' are in sync" in status, status

    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone), env=env)
    team.cli("remote", "--repo", str(clone))
    sh(clone, "dvc", "remote", "default", "--local", "team", env=env)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    sh(clone, "dvc", "pull", "bulk.dvc", *lock["stages"], env=env, timeout=900)  # what has run so far
    outs = [o["path"] for stage in lock["stages"].values() for o in stage.get("outs", [])
            if (repo / o["path"]).exists() and o.get("cache", True)]
    assert "bulk" not in outs and len(outs) >= 4, outs
    for path in [*outs, "bulk"]:
        assert sha256_tree(clone / path) == sha256_tree(repo / path), path
    status = sh(clone, "dvc", "status", "--cloud", env=env).stdout
    assert "Cache and remote 'team' are in sync" in status, status


# --- dvc repro SIGKILLed: the run it left RUNNING ---------------------------------------------------

def test_sigkilled_dvc_repro_leaves_no_run_running_on_the_team_server(team, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    repo = make_repo(tmp_path / "repo")  # its own workspace: the other tests' runs are not its business
    epochs = 3
    edit_params(repo, "train", "max_epochs", epochs)
    env = team.user_env(repo)
    sh(repo, "dvc", "repro", "search", env=env, timeout=REPRO_TIMEOUT)
    for key, value in env.items():  # the client below logs in as the stages do
        if key.startswith(("MLFLOW_", "AWS_")):
            monkeypatch.setenv(key, value)
    sigkilled_repro_is_resolved(repo, MlflowClient(env["MLFLOW_TRACKING_URI"]), env, epochs, tmp_path)
