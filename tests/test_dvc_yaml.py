"""dvc.yaml lists, per stage, exactly the package modules its script imports, directly or not."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from helpers import ROOT

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
