"""dvc.yaml lists, per stage, exactly the package modules its script imports, directly or not."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import ROOT, env_for

PACKAGE = ROOT / "src" / "fmnist"


def module_path(name: str) -> Path | None:
    """The file of module ``fmnist.x.y``, or None for a name outside the package."""
    if name != "fmnist" and not name.startswith("fmnist."):
        return None
    parts = name.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(path: Path) -> set[str]:
    """Modules a file imports anywhere in it (also inside functions), as dotted names, and package
    files it names by path (the pyfunc model's code file, which MLflow runs by its path)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from fmnist import stage`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and path.is_relative_to(PACKAGE) \
                and re.fullmatch(r"\w+\.py", node.value) and (path.parent / node.value).is_file():
            names.add(".".join(("fmnist", *(path.parent / node.value).relative_to(PACKAGE).with_suffix("").parts)))
    return names


def package_closure(script: Path) -> set[str]:
    """The package files ``script`` imports, directly or through other package modules; a module
    in a subpackage brings its package's ``__init__.py``, as Python imports it first."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in imported(todo.pop()):
            path = module_path(name)
            parents = [module_path(".".join(name.split(".")[:i])) for i in range(2, name.count(".") + 1)]
            for found in (path, *parents):
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return {p.relative_to(ROOT).as_posix() for p in seen if p.name != "__init__.py" or p.parent != PACKAGE}


def test_each_stage_depends_on_exactly_the_code_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"download", "split", "resize", "search", "train", "evaluate"}
    for name, stage in stages.items():
        script = f"stages/{name}.py"
        listed = {d for d in stage["deps"] if d.endswith(".py")}
        assert listed == {script} | package_closure(ROOT / script), name


def test_stage_commands_run_the_installed_package():
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        assert not re.search(r"PYTHONPATH", stage["cmd"]), name
        assert stage["cmd"].startswith(f"python stages/{name}.py"), name


def test_serving_depends_on_compute_model_and_data_only():
    """Predicting and the pyfunc model import no training code and no skorch."""
    for module in ("predict.py", "pyfunc.py", "pyfunc_model.py"):
        closure = package_closure(PACKAGE / module)
        assert not closure & {"src/fmnist/training.py", "src/fmnist/checkpoint.py"}, module
        third_party = set().union(*(imported(ROOT / path) for path in closure | {f"src/fmnist/{module}"}))
        assert not {n for n in third_party if n.split(".")[0] == "skorch"}, module


def test_per_class_scores_stay_out_of_the_experiments_table_but_at_hand(tmp_path):
    """evaluate's two score files declared as in dvc.yaml, written by a stand-in command and run by
    real DVC: `dvc exp show` has the headline column only, `dvc metrics show FILE` the per-class ones."""
    evaluate = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]
    files = {"metrics/evaluate.json": {"test_accuracy": 0.9},
             "metrics/per_class.json": {"per_class": {"Bag": {"f1": 0.98}}}}
    declared = {section: [entry for entry in evaluate.get(section, [])
                          if (next(iter(entry)) if isinstance(entry, dict) else entry) in files]
                for section in ("outs", "metrics", "plots")}
    assert sum(len(entries) for entries in declared.values()) == 2, declared
    write = "; ".join(f"json.dump({content!r}, open({path!r}, 'w'))" for path, content in files.items())
    stage = {"cmd": f'{sys.executable} -c "import json; {write}"', **{k: v for k, v in declared.items() if v}}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": stage}}))
    env = env_for(tmp_path)

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "repro", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "evaluate")
    table = json.loads(run("dvc", "exp", "show", "--json"))
    assert table[0]["data"]["metrics"] == {"metrics/evaluate.json": {"data": {"test_accuracy": 0.9}}}
    assert json.loads(run("dvc", "metrics", "show", "--json"))[""]["data"] == {
        "metrics/evaluate.json": {"data": {"test_accuracy": 0.9}}}
    asked = json.loads(run("dvc", "metrics", "show", "--json", "metrics/per_class.json"))
    assert asked[""]["data"]["metrics/per_class.json"]["data"] == {"per_class": {"Bag": {"f1": 0.98}}}
