"""MLflow used as its users expect: system metrics from MLflow's own monitor on the stage runs,
the model as an MLflow 3 logged model whose page shows its test metrics and their dataset, and
dataset inputs through public entities. Checked on a local store, then through a real
``mlflow server``'s REST API on the pipeline's store."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers import ui
from fmnist.errors import TrackingError
from fmnist.tracking import Tracker

CPU = "system/cpu_utilization_percentage"
MEMORY = "system/system_memory_usage_megabytes"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One local store for the module (creating one takes seconds); an experiment per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def tracker(store, request, tmp_path, monkeypatch) -> Tracker:
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    return Tracker(request.node.name, uri=store)


def system_steps(tracker: Tracker, run_id: str) -> list[int]:
    return sorted(m.step for m in tracker.client.get_metric_history(run_id, CPU))


def test_a_run_records_system_metrics_at_mlflows_interval(tracker, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # MLflow's own variable
    with tracker.run("train", system_metrics=True) as run:
        time.sleep(3.5)
    metrics = tracker.client.get_run(run.id).data.metrics
    assert {CPU, MEMORY} <= set(metrics)
    assert len(system_steps(tracker, run.id)) >= 3  # a sample a second, not one every 5 s


def test_a_run_shorter_than_the_interval_still_records_one_sample(tracker):
    with tracker.run("evaluate", system_metrics=True) as run:
        pass
    assert system_steps(tracker, run.id) == [0]


def test_mlflows_switch_turns_system_metrics_off_and_on(tracker, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    with tracker.run("train", system_metrics=True) as off:
        pass
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    with tracker.run("trial") as on:  # a run that does not ask for them, as a search trial
        pass
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING")
    with tracker.run("trial") as default:
        pass
    assert system_steps(tracker, off.id) == []
    assert system_steps(tracker, on.id) == [0]
    assert system_steps(tracker, default.id) == []


def test_a_bad_switch_value_is_one_line_naming_it(tracker, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "maybe")
    with pytest.raises(TrackingError, match="^MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING='maybe': use true or false$"):
        with tracker.run("train", system_metrics=True):
            pass


def test_metrics_link_to_a_logged_model_and_a_dataset_input(tracker, tmp_path):
    from mlflow.entities import LoggedModelOutput

    images = tmp_path / "test_images.npy"
    images.write_bytes(b"\x93NUMPY images")
    digest = hashlib.md5(images.read_bytes()).hexdigest()
    with tracker.run("train") as train:
        model = tracker.client.create_logged_model(tracker.experiment_id, name="model", source_run_id=train.id)
        tracker.client.log_outputs(train.id, [LoggedModelOutput(model.model_id, 0)])
    assert tracker.logged_model(train.id) == model.model_id
    with tracker.run("evaluate", datasets={"test_images": images}) as run:
        run.log_metrics({"test_accuracy": 0.75}, model_id=model.model_id, dataset="test_images")

    inputs = tracker.client.get_run(run.id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest, i.dataset.source_type, json.loads(i.dataset.source)["uri"])
            for i in inputs] == [("test_images", digest, "local", images.as_posix())]
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "testing")]
    linked = tracker.client.get_logged_model(model.model_id).metrics
    assert [(m.key, m.value, m.dataset_name, m.dataset_digest, m.run_id) for m in linked] == [
        ("test_accuracy", 0.75, "test_images", digest, run.id)]


# --- the pipeline's store, through a real MLflow server ------------------------------------------

def rest(url: str, path: str, body: dict | None = None, **query: str) -> dict:
    full = f"{url}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def stage_run(url: str, experiment_id: str, stage: str) -> dict:
    found = rest(url, "runs/search", {"experiment_ids": [experiment_id], "max_results": 1,
                                      "filter": f"tags.`fmnist.stage` = '{stage}'",
                                      "order_by": ["attributes.start_time DESC"]})
    assert found.get("runs"), f"no {stage} run"
    return found["runs"][0]


@pytest.mark.slow  # the tiny pipeline, run by dvc repro, and an MLflow server
def test_the_pipeline_runs_and_the_champion_model_page_follow_mlflows_conventions(pipeline):
    repo = pipeline["repo"]
    params = yaml.safe_load((repo / "params.yaml").read_text())["tracking"]
    test_images = repo / "data" / "resized" / "test_images.npy"
    test_digest = hashlib.md5(test_images.read_bytes()).hexdigest()
    test_accuracy = json.loads((repo / "metrics" / "evaluate.json").read_text())["test_accuracy"]
    with ui.served_copy(repo / "mlflow.db") as url:
        experiment = rest(url, "experiments/get-by-name", experiment_name=params["experiment"])["experiment"]
        runs = {stage: stage_run(url, experiment["experiment_id"], stage) for stage in ("search", "train", "evaluate")}
        for stage, run in runs.items():
            keys = {m["key"] for m in run["data"].get("metrics", [])}
            assert {CPU, MEMORY} <= keys, f"{stage} run has no system metrics: {sorted(keys)}"
        evaluate_inputs = runs["evaluate"]["inputs"]["dataset_inputs"]
        assert [(i["dataset"]["name"], i["dataset"]["digest"]) for i in evaluate_inputs] == [
            ("test_images", test_digest)]

        champion = rest(url, "registered-models/alias", name=params["registered_model"], alias="champion")
        version = champion["model_version"]
        assert version["run_id"] == runs["train"]["info"]["run_id"]
        assert version["source"].startswith("models:/m-")  # the version is its logged model's
        model = rest(url, f"logged-models/{version['source'].removeprefix('models:/')}")["model"]
        assert model["info"]["source_run_id"] == runs["train"]["info"]["run_id"]
        assert model["info"]["status"] == "LOGGED_MODEL_READY"
        assert {"lr", "batch_size", "dropout", "input_size"} <= {p["key"] for p in model["data"]["params"]}
        linked = {m["key"]: m for m in model["data"]["metrics"]}
        for key in ("test_accuracy", "test_loss", "test_macro_f1"):
            assert linked[key]["dataset_name"] == "test_images", key
            assert linked[key]["dataset_digest"] == test_digest, key
            assert linked[key]["run_id"] == runs["evaluate"]["info"]["run_id"], key
        assert linked["test_accuracy"]["value"] == pytest.approx(test_accuracy, abs=1e-6)
        assert linked["best_valid_acc"]["dataset_name"] == "valid_images"
        assert not [k for k in linked if k.startswith("per_class")]  # the headline figures only
