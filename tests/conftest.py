"""Shared fixtures: the project copied into a temp git repo and run with the tiny profile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running the tests has dvc, mlflow and the package
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return [f for f in out if (ROOT / f).is_file()]


def env_for(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.com"
    return env


def sh(repo: Path, *cmd: str, check: bool = True, env: dict | None = None,
       timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env or env_for(repo),
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def ran_stages(output: str) -> set[str]:
    """Stages that ``dvc repro`` ran, from its output."""
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def make_repo(dest: Path, profile: str = "tiny") -> Path:
    """Copy the project's files into ``dest``, apply a profile, commit; no outputs, no store."""
    for name in project_files():
        if name.startswith(("data/", "models/", "metrics/", "plots/", "results/", "checkpoints/")) \
                or name == "dvc.lock":
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    sh(dest, "git", "init", "-q", "-b", "main")
    sh(dest, sys.executable, "-m", "fmnist.profiles", profile, "--write", "params.yaml")
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "tiny profile")
    return dest


@pytest.fixture(scope="session")
def data_source() -> Path:
    if not (DEBIAN / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{DEBIAN} missing: install the Debian package dataset-fashion-mnist")
    return DEBIAN


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, data_source) -> dict:
    """The whole pipeline, run once by ``dvc repro`` on the tiny profile in a temp git repo."""
    repo = make_repo(tmp_path_factory.mktemp("pipeline"))
    result = sh(repo, "dvc", "repro")
    return {"repo": repo, "output": result.stdout + result.stderr}
