"""The DVC workflow tests' shared repo and helpers (a pytest plugin, loaded by conftest.py).

One temp git repo on the tiny profile serves every ``test_dvc_workflow_*`` module; fixtures build
on each other (baseline -> one-epoch experiment committed -> two queued experiments), each
session-scoped so that the repo is built once however the modules are picked, and each test also
runs alone with ``-k``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from helpers import make_repo, sh, start_queue

QUEUED = {"q-seed1": 1, "q-seed2": 2}  # name -> train.seed; two epochs each, so curves are lines
EPOCH_METRICS = ("train_loss", "valid_loss", "train_acc", "valid_acc", "lr")


def exp_show(repo: Path) -> dict[str, dict]:
    """``dvc exp show --json -A`` as ``name -> {"params": ..., "metrics": ..., "rev": ...}``,
    for experiments and for baselines named by a branch."""
    rows = {}

    def add(entry):
        data = entry.get("data") or {}
        if entry.get("name") and "params" in data:
            rows[entry["name"]] = {
                "rev": entry["rev"],
                "params": data["params"].get("params.yaml", {}).get("data", {}),
                "metrics": {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()},
            }

    for baseline in json.loads(sh(repo, "dvc", "exp", "show", "--json", "-A").stdout):
        add(baseline)
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                add(rev)
    return rows


def metrics_files(repo: Path) -> dict[str, dict]:
    """The metrics files ``dvc.yaml`` declares (train, evaluate, the MLflow run id), by path, as
    ``dvc exp show`` reads them; not the per-class figures, a plain output."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values()
    paths = sorted(next(iter(entry)) if isinstance(entry, dict) else entry
                   for stage in stages for entry in stage.get("metrics", []))
    return {path: json.loads((repo / path).read_text()) for path in paths}


def commit_all(repo: Path, message: str) -> str:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", message)
    return sh(repo, "git", "rev-parse", "HEAD").stdout.strip()


def queue_status(repo: Path) -> dict[str, str]:
    """``dvc queue status`` as ``name -> Queued | Running | Success | Failed | ...``."""
    out = sh(repo, "dvc", "queue", "status").stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"^\w+\s+(\S+)\s+.*?\s(\w+)\s*$", out, re.M)
            if m.group(1) in QUEUED}


@pytest.fixture(scope="session")
def project(tmp_path_factory, data_source) -> dict:
    """The tiny pipeline reproduced and committed as ``main``; the default remote is its sibling."""
    base = tmp_path_factory.mktemp("workflow")
    repo = make_repo(base / "project")
    sh(repo, "dvc", "repro")
    baseline = commit_all(repo, "baseline: tiny profile reproduced")
    yield {"base": base, "repo": repo, "baseline": baseline}
    sh(repo, "dvc", "queue", "stop", "--kill", check=False)  # no worker outlives the module


@pytest.fixture(scope="session")
def one_epoch(project) -> dict:
    """``dvc exp run -S train.max_epochs=1`` in the workspace, then committed: two commits to diff."""
    repo = project["repo"]
    result = sh(repo, "dvc", "exp", "run", "-S", "train.max_epochs=1", "-n", "one-epoch")
    metrics = metrics_files(repo)
    head = commit_all(repo, "train one epoch")
    return project | {"output": result.stdout + result.stderr, "metrics": metrics, "head": head}


@pytest.fixture(scope="session")
def queued(one_epoch) -> dict:
    """Two queued experiments run by two workers at once; returns their final queue status."""
    repo = one_epoch["repo"]
    for name, seed in QUEUED.items():
        out = sh(repo, "dvc", "exp", "run", "--queue", "-S", "train.max_epochs=2", "-S", f"train.seed={seed}",
                 "-n", name).stdout
        assert f"Queued experiment '{name}'" in out
    assert set(queue_status(repo).values()) == {"Queued"}
    start_queue(repo, 2)
    deadline = time.monotonic() + 1800
    while True:
        status = queue_status(repo)
        if len(status) == len(QUEUED) and all(s in ("Success", "Failed") for s in status.values()):
            break
        assert time.monotonic() < deadline, f"queue still busy: {status}"
        time.sleep(5)
    logs = {name: sh(repo, "dvc", "queue", "logs", name, check=False).stdout for name in QUEUED}
    return one_epoch | {"status": status, "logs": logs}
