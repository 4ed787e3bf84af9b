"""Where runs go, failing fast on an unreachable server, and the registered model."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from helpers import env_for, free_port
from fmnist.errors import TrackingError
from fmnist.repo import file_digest, git_state, project_root
from fmnist.tracking import check_reachable, source_tags, tracking_uri


def test_project_root_sees_through_dvc_experiment_copies(tmp_path):
    root = tmp_path / "proj"
    (root / ".dvc").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    exp = root / ".dvc" / "tmp" / "exps" / "tmpab12" / "stages"
    exp.mkdir(parents=True)
    (exp.parent / "dvc.yaml").write_text("stages: {}\n")  # the copy has its own dvc.yaml and .dvc
    (exp.parent / ".dvc").mkdir()
    assert project_root(exp) == root
    assert project_root(root / ".dvc") == root
    assert project_root(root) == root


def test_git_state_and_the_source_tags_made_of_it(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    assert git_state(tmp_path).commit == ""  # not a repository yet
    assert source_tags(tmp_path)["mlflow.source.git.commit"] == "unknown"
    git("init", "-q")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "dvc.lock").write_text("x\n")
    git("add", "params.yaml", "dvc.lock")
    git("commit", "-q", "-m", "first")
    git("remote", "add", "origin", "https://user:secret@git.example.org/fmnist.git")
    state = git_state(tmp_path)
    assert state.commit == git("rev-parse", "HEAD") and len(state.commit) == 40 and not state.dirty
    assert state.remote == "https://user:secret@git.example.org/fmnist.git"
    tags = source_tags(tmp_path)
    assert tags["mlflow.source.git.commit"] == state.commit and tags["fmnist.git_dirty"] == "false"
    assert "mlflow.source.git.repoURL" not in tags  # never a URL with credentials in it
    (tmp_path / "dvc.lock").write_text("y\n")  # rewritten by every run: not dirty
    assert not git_state(tmp_path).dirty
    (tmp_path / "params.yaml").write_text("a: 2\n")
    assert git_state(tmp_path).dirty and source_tags(tmp_path)["fmnist.git_dirty"] == "true"
    git("remote", "set-url", "origin", "https://git.example.org/fmnist.git")
    assert source_tags(tmp_path)["mlflow.source.git.repoURL"] == "https://git.example.org/fmnist.git"


def test_file_digest_of_a_file_and_of_a_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.npy").write_bytes(b"bb")
    (tmp_path / "d" / "a.npy").write_bytes(b"a")
    (tmp_path / "d" / "notes.txt").write_text("ignored by the pattern")
    assert file_digest(tmp_path / "d" / "a.npy") == "0cc175b9c0f1b6a831c399e269772661"  # md5 of b"a"
    names_and_bytes = "a.npy".encode() + b"a" + "b.npy".encode() + b"bb"
    assert file_digest(tmp_path / "d", "*.npy") == hashlib.md5(names_and_bytes).hexdigest()
    assert file_digest(tmp_path / "d") != file_digest(tmp_path / "d", "*.npy")


def test_tracking_uri_defaults_to_sqlite_at_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(tmp_path) == "http://mlflow.example:5000"


def test_unreachable_server_is_one_line_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=f"MLflow tracking server {uri} is unreachable"):
        check_reachable(uri, timeout_s=2)


@pytest.mark.slow  # the tiny pipeline, run by dvc repro
def test_train_stage_stops_before_training_when_the_server_is_down(pipeline):
    repo = pipeline["repo"]
    model = repo / "models" / "model.pt"
    before = model.stat().st_mtime_ns
    env = env_for(repo) | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "PYTHONPATH": "src"}
    result = subprocess.run([sys.executable, "stages/train.py"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: MLflow tracking server http://127.0.0.1:")
    assert "unreachable" in lines[-1]
    assert model.stat().st_mtime_ns == before  # nothing written or half written


@pytest.mark.slow
def test_registered_model_predicts_raw_28px_images_like_evaluate(pipeline):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    repo = pipeline["repo"]
    uri = f"sqlite:///{repo}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    versions = client.search_model_versions("name = 'fashion-mnist-alexnet'")
    latest = max(int(v.version) for v in versions)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/fashion-mnist-alexnet/{latest}")
    raw = np.load(repo / "data/split/test_images.npy")[:300]  # 28x28, as in the IDX files
    assert raw.shape[1:] == (28, 28)
    frame = model.predict(raw.astype(np.float32))
    expected = pd.read_csv(repo / "results/evaluate/predictions.csv")["predicted"][:300]
    assert list(frame["label"]) == list(expected)
    assert np.allclose(frame[[f"prob_{i}" for i in range(10)]].sum(axis=1), 1.0, atol=1e-4)
