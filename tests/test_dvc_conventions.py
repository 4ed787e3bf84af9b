"""DVC used as its users expect: the trained model in DVC's model registry (``artifacts:``,
``dvc artifacts get``, ``dvc ls``), the search trials as DVC plots (one scatter per
hyper-parameter, from the trials table the search stage writes)."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from helpers import ROOT, copy_repo, env_for, sh
from fmnist.params import HyperParams

MODEL = "fashion-mnist-alexnet"
TRIALS = "results/search/trials.json"


def dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_the_model_is_a_dvc_artifact_of_the_train_stage():
    artifact = dvc_yaml()["artifacts"][MODEL]
    assert artifact["type"] == "model"
    assert artifact["desc"].strip() and {"pytorch", "fashion-mnist"} <= set(artifact["labels"])
    train_outs = [next(iter(o)) if isinstance(o, dict) else o for o in dvc_yaml()["stages"]["train"]["outs"]]
    assert artifact["path"] in train_outs
    # the same name as the MLflow registered model, so both registries speak of one model
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["tracking"]["registered_model"] == MODEL


def test_each_hyper_parameter_has_a_trials_scatter():
    plots = {next(iter(p)): next(iter(p.values())) for p in dvc_yaml()["plots"]}
    scatters = {name: plot for name, plot in plots.items() if plot.get("y") == {TRIALS: "valid_acc"}}
    assert {plot["x"] for plot in scatters.values()} == set(HyperParams.names())
    assert {plot["template"] for plot in scatters.values()} == {"scatter"}
    search_outs = dvc_yaml()["stages"]["search"]["outs"]
    assert TRIALS.rsplit("/", 1)[0] in search_outs  # a file of the search stage's output folder


@pytest.mark.slow  # the tiny pipeline, run by dvc repro
def test_dvc_artifacts_get_and_dvc_ls_find_the_trained_model(pipeline, tmp_path):
    repo = copy_repo(pipeline["repo"], tmp_path / "repo")
    sh(repo, "git", "add", "dvc.lock")
    sh(repo, "git", "commit", "-qm", "the pipeline's outputs")
    expected = hashlib.md5((repo / "models" / "model.pt").read_bytes()).hexdigest()
    listed = json.loads(sh(repo, "dvc", "ls", "--json", str(repo), "models").stdout)
    assert [(entry["path"], entry["md5"]) for entry in listed] == [("model.pt", expected)]
    # a version in DVC's model registry is an annotated git tag <name>@v<semver>, as `gto register` makes
    sh(repo, "git", "tag", "-a", f"{MODEL}@v1.0.0", "-m", f"Registering artifact {MODEL} version v1.0.0")
    sh(tmp_path, "dvc", "artifacts", "get", str(repo), MODEL, "-o", str(tmp_path / "got.pt"), env=env_for(repo))
    assert hashlib.md5((tmp_path / "got.pt").read_bytes()).hexdigest() == expected


@pytest.mark.slow
def test_dvc_plots_draw_one_point_per_trial(pipeline, tmp_path):
    repo = pipeline["repo"]
    trials = json.loads((repo / TRIALS).read_text())
    out = json.loads(sh(repo, "dvc", "plots", "show", "--json", "--split",
                        *[f"Search trials by {name}" for name in HyperParams.names()]).stdout)
    assert not out.get("errors"), out.get("errors")
    for name in HyperParams.names():
        [plot] = out["data"][f"Search trials by {name}"]
        spec, anchors = plot["content"], plot["anchor_definitions"]
        assert spec["mark"]["type"] == "point"
        assert spec["encoding"]["x"]["field"] == name and spec["encoding"]["y"]["field"] == "valid_acc"
        points = [(row[name], row["valid_acc"], row["rev"]) for row in anchors["<DVC_METRIC_DATA>"]]
        assert sorted(points, key=str) == sorted(((t[name], t["valid_acc"], "workspace") for t in trials), key=str)
