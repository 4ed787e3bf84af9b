"""The team setup: the same pipeline, unchanged, logging to a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import ROOT, env_for, make_repo, ran_stages, sh

pytestmark = pytest.mark.slow

sys.path.insert(0, str(ROOT / "scripts"))
import screenshot_mlflow as ui  # noqa: E402  (scripts/ is not a package; it starts servers the same way)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` with its own SQLite backend and artifact folder, as a team would run it."""
    home = tmp_path_factory.mktemp("mlflow-server")
    with ui.mlflow_server(home / "server.db", home / "artifacts", home / "server.log", timeout_s=300) as uri:
        yield {"uri": uri, "home": home}


@pytest.fixture(scope="module")
def team_run(server, tmp_path_factory, data_source):
    repo = make_repo(tmp_path_factory.mktemp("team"))
    env = env_for(repo) | {"MLFLOW_TRACKING_URI": server["uri"]}
    out = sh(repo, "dvc", "repro", env=env)
    return {"repo": repo, "output": out.stdout + out.stderr, **server}


def test_runs_metrics_artifacts_and_model_arrive_at_the_server(team_run):
    from mlflow.tracking import MlflowClient

    assert ran_stages(team_run["output"]) >= {"search", "train", "evaluate"}
    assert not (team_run["repo"] / "mlflow.db").exists()  # nothing went to the local store
    client = MlflowClient(tracking_uri=team_run["uri"])
    experiment = client.get_experiment_by_name("fashion-mnist-alexnet")
    runs = client.search_runs([experiment.experiment_id])
    by_stage: dict[str, list] = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get("fmnist.stage"), []).append(run)
    assert {k: len(v) for k, v in by_stage.items()} == {"search": 1, "search-trial": 2, "train": 1, "evaluate": 1}
    assert all(r.info.status == "FINISHED" for r in runs)

    search = by_stage["search"][0]
    assert {r.data.tags["mlflow.parentRunId"] for r in by_stage["search-trial"]} == {search.info.run_id}

    train = by_stage["train"][0]
    assert train.data.params["train.max_epochs"] == "2"
    assert train.data.tags["fmnist.search_run_id"] == search.info.run_id
    assert len(train.data.tags["fmnist.git_commit"]) == 40
    history = client.get_metric_history(train.info.run_id, "valid_acc")
    assert [m.step for m in history] == [1, 2]
    assert "test_accuracy" in train.data.metrics  # evaluate's result sits with the model

    artifacts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert {"model.pt", "history.json", "model_summary.txt", "params.yaml", "checkpoints"} <= artifacts
    evaluate = by_stage["evaluate"][0]
    assert evaluate.data.tags["fmnist.train_run_id"] == train.info.run_id
    expected = {"confusion_matrix.png", "curves.png", "mistakes.png"}
    assert expected <= {Path(a.path).name for a in client.list_artifacts(evaluate.info.run_id)}
    assert expected <= {Path(a.path).name for a in client.list_artifacts(train.info.run_id, "evaluate")}
    # the server stored the files in its own artifact folder
    assert list((team_run["home"] / "artifacts").rglob("confusion_matrix.png"))

    versions = client.search_model_versions("name = 'fashion-mnist-alexnet'")
    assert [v.run_id for v in versions] == [train.info.run_id]


def test_registered_model_loads_from_the_server(team_run):
    import mlflow
    import numpy as np
    import pandas as pd

    mlflow.set_tracking_uri(team_run["uri"])
    model = mlflow.pyfunc.load_model("models:/fashion-mnist-alexnet/1")
    repo = team_run["repo"]
    images = np.load(repo / "data/split/test_images.npy")[:200].astype(np.float32)
    expected = pd.read_csv(repo / "results/evaluate/predictions.csv")["predicted"][:200]
    assert list(model.predict(images)["label"]) == list(expected)
