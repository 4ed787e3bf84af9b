"""The environment is locked: pyproject.toml declares, uv.lock pins every package with hashes,
requirements/<set>.txt are the lock's exports that ``make setup`` installs, and deptry finds every
import declared and every declaration used."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from helpers import BIN, ROOT

LOCK = ROOT / "uv.lock"
EXPORTS = ROOT / "requirements"
PYPI = "https://pypi.org/simple"


def extras() -> list[str]:
    return sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def sets() -> list[str]:
    """The installable sets: the runtime, and each extra of pyproject.toml."""
    return ["runtime", *extras()]


def uv(*args: str, cwd: Path = ROOT, check: bool = False) -> subprocess.CompletedProcess:
    # Offline: the lock's own metadata says whether it is current; a fresh clone needs no network.
    env = dict(os.environ, UV_OFFLINE="1", UV_PYTHON=sys.executable, UV_NO_PROGRESS="1")
    result = subprocess.run([str(BIN / "uv"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"uv {' '.join(args)} failed ({result.returncode}): {result.stderr[-3000:]}")
    return result


def export_command(name: str) -> list[str]:
    extra = [] if name == "runtime" else ["--extra", name]
    return ["export", "--frozen", "--no-emit-project", "--format", "requirements-txt", *extra]


def without_header(text: str) -> str:
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines)


def pins(text: str) -> dict[str, tuple[str, str]]:
    """``{name: (version, marker)}`` of an export."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^ ;\\]+)(?: ; ([^\\]+?))?\s*\\?$", line)
        if m:
            found[canonicalize_name(m.group(1).split("[")[0])] = (m.group(2), (m.group(3) or "").strip())
    return found


def test_the_lock_is_current_with_pyproject():
    result = uv("lock", "--check")
    assert result.returncode == 0, (f"uv.lock is stale against pyproject.toml: run `make lock` and commit "
                                    f"uv.lock and requirements/\n{result.stderr[-3000:]}")


def test_a_dependency_added_to_pyproject_makes_the_lock_stale(tmp_path):
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    assert uv("lock", "--check", cwd=tmp_path).returncode == 0  # the copy is current, as the project
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text()
    assert '    "torchinfo>=1.8",\n' in text
    pyproject.write_text(text.replace('    "torchinfo>=1.8",\n', '    "torchinfo>=1.8",\n    "tabulate>=0.9",\n'))
    assert uv("lock", "--check", cwd=tmp_path).returncode != 0


@pytest.mark.parametrize("name", sets())
def test_each_export_is_the_lock(name):
    """``make lock`` wrote requirements/<set>.txt from uv.lock; nobody edited it since."""
    path = EXPORTS / f"{name}.txt"
    assert path.is_file(), f"{path.relative_to(ROOT)} missing: run `make lock`"
    expected = uv(*export_command(name), check=True).stdout
    assert without_header(path.read_text()) == without_header(expected), \
        f"{path.relative_to(ROOT)} differs from uv.lock: run `make lock`"


def test_every_locked_package_is_pinned_with_hashes_and_no_local_path():
    lock = tomllib.loads(LOCK.read_text())
    for package in lock["package"]:
        source = package["source"]
        if package["name"] == "fmnist-alexnet":
            assert source == {"editable": "."}
            continue
        assert source == {"registry": PYPI}, package["name"]
        files = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        assert files and all(f["hash"].startswith("sha256:") for f in files), package["name"]
    for path in [LOCK, *EXPORTS.glob("*.txt")]:
        text = path.read_text()
        assert not re.search(r"file:|/opt/|/work/|/root/|/home/|/tmp/", text), path.name
    for name in sets():
        text = (EXPORTS / f"{name}.txt").read_text()
        blocks = re.split(r"\n(?=\S)", without_header(text))
        requirements = [b for b in blocks if re.match(r"^[A-Za-z0-9]", b)]
        assert requirements and all("--hash=sha256:" in b for b in requirements), name


def test_torch_is_the_build_pyproject_names():
    """torch 2.14.1 as PyPI ships it for Linux x86_64 (the CUDA 13 build), its CUDA wheels locked."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in declared
    lock = {p["name"]: p for p in tomllib.loads(LOCK.read_text())["package"]}
    torch = lock["torch"]
    assert torch["version"] == "2.14.1" and torch["source"] == {"registry": PYPI}
    wheels = [w["url"].rsplit("/", 1)[1] for w in torch["wheels"]]
    assert "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl" in wheels
    assert {"nvidia-cudnn-cu13", "nvidia-nccl-cu13", "triton"} <= set(lock)


def test_this_environment_is_the_lock():
    """What `make test` installed: each package of the test set at its locked version."""
    wrong = {}
    for name, (locked, marker) in pins((EXPORTS / "test.txt").read_text()).items():
        if marker and not Marker(marker).evaluate():
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != locked:
            wrong[name] = (installed, locked)
    assert not wrong, f"installed, locked: {wrong}; run `make setup-test`"


def deptry(root: Path) -> subprocess.CompletedProcess:
    """deptry with pyproject.toml's configuration, and as first-party modules the package and every
    module of the folders whose files import their neighbours by name (each is on its sys.path)."""
    local = {"fmnist"} | {p.stem for folder in ("tests", "benchmarks", "scripts", "docs/hooks")
                          for p in (root / folder).glob("*.py")}
    first_party = [arg for name in sorted(local) for arg in ("--known-first-party", name)]
    return subprocess.run([str(BIN / "deptry"), ".", "--no-ansi", *first_party], cwd=root, capture_output=True,
                          text=True, timeout=300)


def test_deptry_finds_no_missing_unused_or_transitive_dependency():
    result = deptry(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_deptry_reports_an_import_that_is_only_transitive(tmp_path):
    """The same configuration fails on a module that imports a package no extra declares."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src" / "fmnist").mkdir(parents=True)
    (tmp_path / "src" / "fmnist" / "table.py").write_text("import tabulate  # installed for dvc, not declared\n")
    result = deptry(tmp_path)
    assert result.returncode == 1
    assert "DEP003 'tabulate' imported but it is a transitive dependency" in result.stdout + result.stderr
