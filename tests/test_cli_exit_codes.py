"""One exit-status rule for every command (src/fmnist/errors.py): 0 ok, 1 the work failed, 2 bad
input or usage. Each command is run as a user runs it, as a process, once for each status it uses.

``fmnist-team`` follows the same rule: its usage errors are checked here, its other codes with the
team stack running (tests/test_team_stack.py).
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fmnist.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from fmnist.model import ModelSpec
from fmnist.predict import save_model
from helpers import BIN, ROOT, env_for

STAGES = ("download", "split", "resize", "search", "train", "evaluate")


def run(cwd: Path, *cmd: str | Path, limit_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # a file system that refuses to grow a file: a write that fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env_for(cwd), capture_output=True, text=True,
                          timeout=300, preexec_fn=limit if limit_file_bytes is not None else None)


def params(tmp_path: Path, **section_edits: dict) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, edits in section_edits.items():
        raw[section].update(edits)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def last_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


# -- the stages -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STAGES)
def test_every_stage_exits_2_on_bad_params_and_on_a_wrong_command_line(tmp_path, name):
    params(tmp_path, train={"lr": -0.5})
    script = ROOT / "stages" / f"{name}.py"
    bad = run(tmp_path, sys.executable, script)
    assert bad.returncode == EXIT_USAGE
    assert last_line(bad) == "error: params.yaml: train.lr=-0.5 is not allowed; allowed: a number > 0 and <= 1.0"
    usage = run(tmp_path, sys.executable, script, "--no-such-option")
    assert usage.returncode == EXIT_USAGE and "unrecognized arguments: --no-such-option" in usage.stderr


def test_a_stage_exits_0_when_done_and_1_when_its_data_is_missing(tmp_path):
    params(tmp_path)
    split = tmp_path / "data" / "split"
    split.mkdir(parents=True)
    for name in ("train", "valid", "test"):
        np.save(split / f"{name}_images.npy", np.full((3, 28, 28), 9, np.uint8))
        np.save(split / f"{name}_labels.npy", np.array([1, 2, 3]))
    resize = (sys.executable, ROOT / "stages" / "resize.py", "--src", "data/split", "--out", "data/resized")
    done = run(tmp_path, *resize)
    assert done.returncode == EXIT_OK, done.stderr
    (split / "valid_images.npy").unlink()
    failed = run(tmp_path, *resize)
    assert failed.returncode == EXIT_FAILED
    assert last_line(failed) == ("error: data/split/valid_images.npy: file not found; run the stages before this "
                                 "one (dvc repro)")


# -- fmnist-predict -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    spec = ModelSpec("AlexNetSmall", 67, 0.5, precision="fp32")
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(spec.build().eval(), spec, path)
    return path


def test_predict_exit_statuses(model, tmp_path):
    from PIL import Image

    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "shirt.png")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "notes.pt").write_text("not a model")
    predict = BIN / "fmnist-predict"

    done = run(tmp_path, predict, "--model", model, "shirt.png")
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.startswith("shirt.png\t")
    unreadable = run(tmp_path, predict, "--model", model, "shirt.png", "notes.png")
    assert unreadable.returncode == EXIT_USAGE and unreadable.stdout.startswith("shirt.png\t")
    assert last_line(unreadable) == "error: notes.png: not a PNG or JPEG image"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(tmp_path, predict, "--model", model, empty).returncode == EXIT_USAGE
    usage = run(tmp_path, predict, "--model", model, "--model-uri", "models:/x/1", "shirt.png")
    assert usage.returncode == EXIT_USAGE and "give --model or --model-uri, not both" in usage.stderr
    not_a_model = run(tmp_path, predict, "--model", "notes.pt", "shirt.png")
    assert not_a_model.returncode == EXIT_FAILED and not_a_model.stdout == ""
    assert last_line(not_a_model).startswith("error: notes.pt: not a model saved by the pipeline (")
    missing = run(tmp_path, predict, "shirt.png")  # no models/model.pt here
    assert missing.returncode == EXIT_FAILED
    assert last_line(missing).startswith(f"error: {tmp_path / 'models' / 'model.pt'}: model not found")


# -- fmnist-params --------------------------------------------------------------------------------

def test_params_checker_exit_statuses(tmp_path):
    check = BIN / "fmnist-params"
    params(tmp_path)
    done = run(tmp_path, check)
    assert (done.returncode, done.stdout) == (EXIT_OK, "params.yaml: ok\n")
    schema = run(tmp_path, check, "--schema")
    assert schema.returncode == EXIT_OK and schema.stdout == (ROOT / "params.schema.json").read_text()
    params(tmp_path, model={"name": "VGG"})
    bad = run(tmp_path, check)
    assert bad.returncode == EXIT_USAGE and bad.stdout == ""
    assert last_line(bad) == ("error: params.yaml: model.name='VGG' is not allowed; allowed: one of "
                              "'AlexNetSmall', 'AlexNet'")
    assert run(tmp_path, check, "missing.yaml").returncode == EXIT_USAGE
    assert last_line(run(tmp_path, check, tmp_path)) == f"error: {tmp_path}: cannot read (Is a directory)"
    usage = run(tmp_path, check, "--no-such-option")
    assert usage.returncode == EXIT_USAGE and "unrecognized arguments" in usage.stderr
    module = run(tmp_path, sys.executable, "-m", "fmnist.params_cli")  # the same command
    assert (module.returncode, module.stderr) == (bad.returncode, bad.stderr)


# -- fmnist-profiles ------------------------------------------------------------------------------

def test_profiles_exit_statuses(tmp_path):
    profiles = BIN / "fmnist-profiles"
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "short.yaml").write_text("train:\n  max_epochs: 2\n")
    (tmp_path / "profiles" / "broken.yaml").write_text("train:\n  max_epochs: 0\n")
    path = params(tmp_path)
    before = path.read_text()

    printed = run(tmp_path, profiles, "short")
    assert (printed.returncode, printed.stdout) == (EXIT_OK, "-S train.max_epochs=2\n")
    unknown = run(tmp_path, profiles, "nope")
    assert unknown.returncode == EXIT_USAGE
    assert last_line(unknown) == "error: no profile 'nope'; known: broken, short"
    invalid = run(tmp_path, profiles, "broken", "--write", "params.yaml")
    assert invalid.returncode == EXIT_USAGE and path.read_text() == before
    assert last_line(invalid).startswith("error: params.yaml: train.max_epochs=0 is not allowed")
    assert run(tmp_path, profiles, "short", "--write", "missing.yaml").returncode == EXIT_USAGE
    assert run(tmp_path, profiles).returncode == EXIT_USAGE  # no profile named
    refused = run(tmp_path, profiles, "short", "--write", "params.yaml", limit_file_bytes=64)
    assert refused.returncode == EXIT_FAILED
    assert last_line(refused) == "error: params.yaml: cannot write (File too large)"
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir() if p.is_file()] == ["params.yaml"]
    written = run(tmp_path, profiles, "short", "--write", "params.yaml")
    assert written.returncode == EXIT_OK
    assert yaml.safe_load(path.read_text())["train"]["max_epochs"] == 2


def test_team_usage_errors_exit_2():
    team = BIN / "fmnist-team"
    for args in ((), ("no-such-command",), ("grant", "bob", "OWNER")):
        result = subprocess.run([str(team), *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == EXIT_USAGE and result.stderr.startswith("usage: "), (args, result.stderr)


def test_every_command_has_help():
    for command in ("fmnist-predict", "fmnist-params", "fmnist-profiles"):
        result = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == EXIT_OK and result.stdout.startswith(f"usage: {command} ")
        assert "Exit status" in result.stdout, command
    team = subprocess.run([str(BIN / "fmnist-team"), "--help"], capture_output=True, text=True, timeout=120)
    assert team.returncode == EXIT_OK and "status" in team.stdout
    for name in STAGES:
        result = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), "--help"], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == EXIT_OK and "--params PATH" in result.stdout, name
        assert "Exit status" in result.stdout, name
