"""Bit-for-bit reruns, resuming a SIGKILLed train stage, bad params through `dvc repro`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import env_for, lock_outs, make_repo, ran_stages, sh

pytestmark = pytest.mark.slow  # dvc repro of the whole pipeline, several times

PROFILE_EDITS = {"train": {"max_epochs": 3}}
REPRO_TIMEOUT = 2400  # a loaded 2-core machine takes its time


def make_repro_repo(dest: Path) -> Path:
    repo = make_repo(dest)
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in PROFILE_EDITS.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "commit", "-qam", "three epochs")
    return repo


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_source) -> dict:
    repo = make_repro_repo(tmp_path_factory.mktemp("reference"))
    sh(repo, "dvc", "repro", timeout=REPRO_TIMEOUT)
    return {"repo": repo, "outs": lock_outs(repo)}


def test_forced_rerun_is_bit_identical(reference):
    repo = reference["repo"]
    out = sh(repo, "dvc", "repro", "-f", timeout=REPRO_TIMEOUT)
    assert ran_stages(out.stdout) == {"download", "split", "resize", "search", "train", "evaluate"}
    assert "training again from scratch" in out.stdout + out.stderr  # not a resume of the finished run
    again = lock_outs(repo)
    assert set(again) == set(reference["outs"])
    different = {path for path in again if again[path] != reference["outs"][path]}
    # metrics/mlflow.json names the train run's MLflow id: a new run, a new id, by design
    assert different == {"metrics/mlflow.json"}, f"outputs that changed between two runs: {sorted(different)}"


def train_pid(repo: Path) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"stages/train.py" in cmd and Path(cwd) == repo and cmd[0].endswith(b"python"):
            return int(pid)
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def train_run_started(repo: Path) -> bool:
    """Whether the train stage has created its MLflow run (it does so just before training)."""
    if not (repo / "mlflow.db").is_file():
        return False
    try:
        con = sqlite3.connect(f"file:{repo / 'mlflow.db'}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("select count(*) from tags where key = 'fmnist.stage' and value = 'train'"
                               ).fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:  # being written: ask again
        return False


def checkpointed_epochs(last: Path) -> int:
    return len(json.loads(torch.load(last, weights_only=True)["history"]))


def test_sigkill_mid_epoch_resumes_after_the_last_finished_epoch(reference, tmp_path):
    repo = make_repro_repo(tmp_path / "killed")
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env_for(repo), stdout=out, stderr=subprocess.STDOUT)
    last = repo / "checkpoints" / "train" / "last.pt"
    deadline = time.monotonic() + REPRO_TIMEOUT
    pid = at_start = None
    while not last.exists():  # epoch 1 is done once its checkpoint is written
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "train never wrote a checkpoint"
        pid = pid or train_pid(repo)
        if pid and at_start is None and train_run_started(repo):  # its MLflow run: training begins
            at_start = cpu_seconds(pid)
        time.sleep(0.1)
    assert pid is not None and at_start is not None
    # Epoch 2 is under way once the process has worked 40% of what epoch 1 took (CPU time, which
    # the machine's load does not stretch as it stretches a sleep).
    at_checkpoint = cpu_seconds(pid)
    epoch = at_checkpoint - at_start
    while cpu_seconds(pid) < at_checkpoint + 0.4 * epoch:
        assert checkpointed_epochs(last) == 1, "epoch 2 ended before the kill"
        time.sleep(0.02)
    worked = cpu_seconds(pid) - at_checkpoint
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=300) != 0, log.read_text()
    assert checkpointed_epochs(last) == 1  # killed inside epoch 2: its checkpoint never came
    assert worked >= 0.4 * epoch > 0, (worked, epoch)
    assert not (repo / "models" / "model.pt").exists()

    out = sh(repo, "dvc", "repro", timeout=REPRO_TIMEOUT)
    output = out.stdout + out.stderr
    assert ran_stages(out.stdout) == {"train", "evaluate"}
    assert "resuming from checkpoints/train/last.pt after epoch 1" in output
    assert "of 3 (2 trained now," in output  # epochs 2 and 3, not 1 to 3 again
    con = sqlite3.connect(repo / "mlflow.db")
    [(run,)] = con.execute("""select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid
                              where t.key = 'fmnist.stage' and t.value = 'train'
                              and r.status = 'FINISHED'""").fetchall()
    # One run, the killed process's, continued: epoch 1's duration logged before the kill, 2 and 3
    # by the rerun, each once (the resumed history's epoch 1 has no duration to log again).
    trained = [step for (step,) in con.execute("select step from metrics where run_uuid = ? and key = 'epoch_seconds' "
                                               "order by step", (run,))]
    assert trained == [1, 2, 3]
    resumed = lock_outs(repo)
    for path in ("models/model.pt", "results/train/history.json", "metrics/train.json", "metrics/evaluate.json",
                 "results/evaluate/predictions.csv"):
        assert resumed[path] == reference["outs"][path], path


def test_bad_param_stops_the_stage_with_one_line(reference):
    repo = reference["repo"]
    before = lock_outs(repo)
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("  lr: 0.001\n", "  lr: -0.5\n", 1))
    result = sh(repo, "dvc", "repro", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: params.yaml")]
    assert errors == ["error: params.yaml: train.lr=-0.5 is not allowed; allowed: a number > 0 and <= 1.0"]
    assert ran_stages(result.stdout) == {"train"}  # the first stage that reads train.*
    assert not list((repo / "models").glob("*.tmp"))  # nothing half written
    (repo / "params.yaml").write_text(params)
    sh(repo, "dvc", "repro")  # fixed: the same outputs come back, nothing lost
    after = lock_outs(repo)
    # DVC removed train's outputs before the failed run; those not in its cache (cache: false) are
    # made again, by a new MLflow run with a new id: all the same but metrics/mlflow.json
    assert {k: v for k, v in after.items() if k != "metrics/mlflow.json"} == \
        {k: v for k, v in before.items() if k != "metrics/mlflow.json"}
    assert set(after) == set(before)
