"""Bit-for-bit reruns, resuming a SIGKILLed train stage, bad params through `dvc repro`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import env_for, make_repo, ran_stages, sh

pytestmark = pytest.mark.slow

PROFILE_EDITS = {"split": {"train_size": 2000}, "train": {"max_epochs": 3}}


def lock_outs(repo: Path) -> dict[str, str]:
    """{output path: md5} for every output in dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def make_repro_repo(dest: Path) -> Path:
    repo = make_repo(dest)
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in PROFILE_EDITS.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "commit", "-qam", "three epochs on 2000 images")
    return repo


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_source) -> dict:
    repo = make_repro_repo(tmp_path_factory.mktemp("reference"))
    sh(repo, "dvc", "repro")
    return {"repo": repo, "outs": lock_outs(repo)}


def test_forced_rerun_is_bit_identical(reference):
    repo = reference["repo"]
    out = sh(repo, "dvc", "repro", "-f")
    assert ran_stages(out.stdout) == {"download", "split", "resize", "search", "train", "evaluate"}
    assert "training again from scratch" in out.stdout + out.stderr  # not a resume of the finished run
    again = lock_outs(repo)
    assert set(again) == set(reference["outs"])
    different = {path for path in again if again[path] != reference["outs"][path]}
    assert different == set(), f"outputs that changed between two runs: {sorted(different)}"


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


def test_sigkill_mid_epoch_resumes_to_the_same_model(reference, tmp_path):
    repo = make_repro_repo(tmp_path / "killed")
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env_for(repo), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last = repo / "checkpoints" / "train" / "last.pt"
    deadline = time.monotonic() + 600
    while not last.exists():  # epoch 1 is done once its checkpoint is written
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "train never wrote a checkpoint"
        time.sleep(0.1)
    time.sleep(0.5)  # well inside epoch 2
    pid = train_pid(repo)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, output
    assert not (repo / "models" / "model.pt").exists()

    out = sh(repo, "dvc", "repro")
    assert ran_stages(out.stdout) == {"train", "evaluate"}
    assert "resuming from" in out.stdout + out.stderr
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
    assert lock_outs(repo) == before
