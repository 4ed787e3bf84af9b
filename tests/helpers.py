"""Helpers the test modules share, each written once: temp project repos, commands, ports,
servers and the browser. Fixtures and the CI skip rule live in ``conftest.py``."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running the tests has dvc, mlflow and the package
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "bash scripts/install-system-deps.sh installs it"

sys.path.insert(0, str(ROOT / "scripts"))
# The README's screenshot script starts MLflow servers and drives Chromium; tests use the same code.
import screenshot_mlflow as ui  # noqa: E402,F401  (scripts/ is not a package)
from screenshot_mlflow import free_port, stop, wait_http  # noqa: E402,F401  (one copy, there)

# The folder the session's data fixture found or filled; make_repo lists it first in
# download.sources so that each temp repo reads it instead of downloading again.
data_folder: Path | None = None


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    """Wait until something listens on 127.0.0.1:``port``; fail early when ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{' '.join(map(str, proc.args[:3]))} exited ({proc.returncode})"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def chromium() -> str:
    """The headless browser's path, or a skip saying how to install it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(f"chromium missing: {INSTALL_HINT}")


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return [f for f in out if (ROOT / f).is_file()]


def env_for(repo: Path) -> dict[str, str]:
    """The environment to run commands in ``repo``: the venv's tools, no tracking URI, a git
    identity, and ``repo``'s own package first on the path (the venv's editable install points at
    this checkout, whose code may differ from the temp repo's, e.g. after a test edits it)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    if (Path(repo) / "src" / "fmnist").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(repo) / "src"), env.get("PYTHONPATH")]))
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


def start_queue(repo: Path, workers: int = 2, env: dict | None = None) -> str:
    """``dvc queue start -j workers`` in ``repo``; returns what it printed. Its output goes to a
    file, not a pipe: the workers it starts in the background inherit the descriptors, and with a
    pipe the call would wait for the whole queue to finish (under load, past ``sh``'s timeout)."""
    with tempfile.TemporaryFile("w+") as out:
        result = subprocess.run(["dvc", "queue", "start", "-j", str(workers)], cwd=repo, stdout=out,
                                stderr=subprocess.STDOUT, text=True, env=env or env_for(repo), timeout=300)
        out.seek(0)
        printed = out.read()
    if result.returncode != 0:
        raise AssertionError(f"dvc queue start failed ({result.returncode}):\n{printed[-4000:]}")
    return printed


def ran_stages(output: str) -> set[str]:
    """Stages that ``dvc repro`` ran, from its output."""
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def edit_params(repo: Path, section: str, key: str, value) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def lock_outs(repo: Path) -> dict[str, str]:
    """{output path: md5} for every output in dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


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
    if data_folder is not None and data_folder != DEBIAN:
        path = dest / "params.yaml"
        params = yaml.safe_load(path.read_text())
        params["download"]["sources"] = [str(data_folder), *params["download"]["sources"]]
        path.write_text(yaml.safe_dump(params, sort_keys=False))
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", f"{profile} profile")
    return dest


def copy_repo(repo: Path, dest: Path) -> Path:
    """A copy of a reproduced repo (git, DVC cache, outputs, MLflow store) to change freely."""
    import sqlite3

    shutil.copytree(repo, dest, symlinks=True)
    if (dest / "mlflow.db").is_file():  # new runs of the copy keep their artifacts in the copy
        con = sqlite3.connect(dest / "mlflow.db")
        with con:
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                con.execute(f"update {table} set {column} = replace({column}, ?, ?)", (str(repo), str(dest)))
        con.close()
    return dest


def free_ports(count: int, low: int = 20000, high: int = 40000) -> int:
    """The first of ``count`` consecutive free ports of 127.0.0.1 in ``[low, high)``."""
    import random

    for _ in range(500):
        base = random.randrange(low, high - count)
        socks = []
        try:
            for port in range(base, base + count):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports in {low}..{high}")
