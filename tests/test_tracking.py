"""Where runs go, failing fast on an unreachable server, and the registered model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from helpers import env_for, free_port
from fmnist.errors import TrackingError
from fmnist.tracking import check_reachable, project_root, tracking_uri


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
    assert result.returncode == 2
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
