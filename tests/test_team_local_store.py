"""MLflow's own conventions on the default local store, from the session's tiny pipeline run:
standard source tags, dataset inputs with DVC's checksums, the champion alias, the run id for DVC."""

from __future__ import annotations

import hashlib
import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(pipeline):
    from mlflow.tracking import MlflowClient

    repo = pipeline["repo"]
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashion-mnist-alexnet")
    runs = {}
    for run in client.search_runs([experiment.experiment_id]):
        runs.setdefault(run.data.tags["fmnist.stage"], []).append(run)
    return {"repo": repo, "client": client, "runs": runs}


def test_runs_carry_mlflow_source_tags(store):
    from fmnist.repo import git_state

    commit = git_state(store["repo"]).commit
    assert len(commit) == 40
    for stage in ("search", "train", "evaluate"):
        tags = store["runs"][stage][0].data.tags
        assert tags["mlflow.source.git.commit"] == commit
        assert tags["mlflow.source.name"] == f"stages/{stage}.py"
        assert tags["mlflow.source.type"] == "JOB" and tags["mlflow.user"]
        assert "fmnist.git_commit" not in tags  # the standard tag replaced ours


def test_runs_log_the_data_they_read_with_dvc_checksums(store):
    repo = store["repo"]
    expected = {"train": {"train_images": "training", "valid_images": "validation"},
                "search": {"train_images": "training", "valid_images": "validation"},
                "evaluate": {"test_images": "testing"}}
    for stage, names in expected.items():
        inputs = store["runs"][stage][0].inputs.dataset_inputs
        got = {d.dataset.name: (d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"])
               for d in inputs}
        want = {name: (hashlib.md5((repo / f"data/resized/{name}.npy").read_bytes()).hexdigest(), context)
                for name, context in names.items()}
        assert got == want, stage


def test_champion_alias_and_the_run_id_for_dvc(store):
    client, train = store["client"], store["runs"]["train"][0]
    champion = client.get_model_version_by_alias("fashion-mnist-alexnet", "champion")
    assert champion.run_id == train.info.run_id
    assert champion.tags["fmnist.champion"].startswith("first champion: test_accuracy=")
    assert train.data.tags["fmnist.champion"] == champion.tags["fmnist.champion"]
    assert json.loads((store["repo"] / "metrics/mlflow.json").read_text()) == {"train_run_id": train.info.run_id}
    train_metrics = json.loads((store["repo"] / "metrics/train.json").read_text())
    assert train.info.run_id not in json.dumps(train_metrics)  # metrics/train.json stays run-independent
