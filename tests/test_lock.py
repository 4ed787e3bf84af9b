"""The committed dvc.lock is the lock of the code in the tree.

`dvc repro` records, per stage, the md5 of every dependency and the value of every param it read.
A commit that changes code or params without rerunning the pipeline leaves a lock that describes
other code: `dvc status` then lists stages as changed in a fresh clone, and the committed metrics
are not those of the committed code. These tests fail such a commit, without running DVC: the md5 of
every dependency that is a file in git, the recorded params against params.yaml, and the stages and
their dependency lists against dvc.yaml.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIX = "rerun the pipeline (dvc repro) and commit dvc.lock with the change"


def load(name: str, root: Path = ROOT) -> dict:
    return yaml.safe_load((root / name).read_text())


def tracked(paths: list[str]) -> set[str]:
    out = subprocess.run(["git", "ls-files", "--", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def lookup(params: dict, dotted: str):
    value = params
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def file_deps(lock: dict) -> list[tuple[str, str, str]]:
    """(stage, path, recorded md5) of every dependency the lock records for a single file."""
    return [(name, dep["path"], dep["md5"]) for name, stage in lock["stages"].items()
            for dep in stage.get("deps", []) if not str(dep.get("md5", "")).endswith(".dir")]


def stale_code(root: Path, in_git: set[str]) -> list[str]:
    """The code (and committed data) dependencies whose md5 in the tree differs from the lock's."""
    checked = [d for d in file_deps(load("dvc.lock", root)) if d[1] in in_git]
    assert any(path.startswith("src/") for _, path, _ in checked), "no code dependency found in dvc.lock"
    return [f"{stage}: {path} (lock {recorded[:8]}, tree {md5(root / path)[:8]})"
            for stage, path, recorded in checked if md5(root / path) != recorded]


def stale_params(root: Path) -> list[str]:
    """The params the lock records with another value than params.yaml's (or that it lacks)."""
    params, lock = load("params.yaml", root), load("dvc.lock", root)
    stale = []
    for name, stage in lock["stages"].items():
        for key, recorded in stage.get("params", {}).get("params.yaml", {}).items():
            try:
                now = lookup(params, key)
            except KeyError:
                stale.append(f"{name}: {key} is not in params.yaml")
                continue
            if now != recorded:
                stale.append(f"{name}: {key}={now!r} in params.yaml, {recorded!r} in the lock")
    return stale


def test_the_lock_has_every_stage_of_dvc_yaml_with_its_dependencies():
    stages, lock = load("dvc.yaml")["stages"], load("dvc.lock")["stages"]
    assert set(lock) == set(stages), f"dvc.lock's stages {sorted(lock)} differ from dvc.yaml's {sorted(stages)}; {FIX}"
    wrong = []
    for name, stage in stages.items():
        declared = set(stage.get("deps", []))
        recorded = {dep["path"] for dep in lock[name].get("deps", [])}
        if declared != recorded:
            wrong.append(f"{name}: dvc.yaml lists {sorted(declared - recorded)} not in the lock, the lock "
                         f"{sorted(recorded - declared)} not in dvc.yaml")
        if " ".join(str(stage["cmd"]).split()) != " ".join(str(lock[name]["cmd"]).split()):
            wrong.append(f"{name}: the command differs from the lock's")
    assert not wrong, "; ".join(wrong) + f"; {FIX}"


def test_every_code_dependency_in_the_lock_is_the_file_in_the_tree():
    in_git = tracked(sorted({path for _, path, _ in file_deps(load("dvc.lock"))}))
    stale = stale_code(ROOT, in_git)
    assert not stale, "dvc.lock records other versions of: " + ", ".join(stale) + f"; {FIX}"


def test_every_param_in_the_lock_has_its_value_in_params_yaml():
    stale = stale_params(ROOT)
    assert not stale, "; ".join(stale) + f"; {FIX}"


def test_the_committed_outputs_are_the_locks():
    """Metrics, history, predictions and plots are committed to git (cache: false): they must be the
    files of the run the lock records, so that the README's results are that run's."""
    lock = load("dvc.lock")
    outs = [(name, out["path"], out["md5"]) for name, stage in lock["stages"].items()
            for out in stage.get("outs", []) if not str(out.get("md5", "")).endswith(".dir")]
    in_git = tracked(sorted({path for _, path, _ in outs}))
    checked = [o for o in outs if o[1] in in_git]
    assert any(path == "metrics/evaluate.json" for _, path, _ in checked)
    stale = [f"{stage}: {path}" for stage, path, recorded in checked if md5(ROOT / path) != recorded]
    assert not stale, ("committed outputs differ from the run dvc.lock records: " + ", ".join(stale)
                       + "; commit the outputs and the lock of one run")


def test_the_checks_fail_on_a_stale_lock(tmp_path):
    """The same checks on a copy whose code and params moved on without the lock."""
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    deps = file_deps(load("dvc.lock"))
    for _, path, recorded in deps:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    _, changed, _ = next(d for d in deps if d[1].startswith("src/"))
    for _, path, recorded in deps:  # every file as the lock recorded it, but one
        if path != changed and (ROOT / path).is_file() and md5(ROOT / path) == recorded:
            shutil.copy(ROOT / path, tmp_path / path)
    (tmp_path / changed).write_text("# another version\n")
    assert any(changed in line for line in stale_code(tmp_path, {p for _, p, _ in deps}))

    params = load("params.yaml")
    params["evaluate"]["batch_size"] = 999_999
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert any(line.startswith("evaluate: ") and "999999" in line for line in stale_params(tmp_path))
