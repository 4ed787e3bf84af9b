"""DVC experiments for real: `dvc exp run` with a set param, `exp show`, params and metrics
diffs between commits, and a queue of two experiments run by two workers at once."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from helpers import ran_stages, sh
from helpers_workflow import EPOCH_METRICS, QUEUED, exp_show


pytestmark = pytest.mark.slow  # dvc repro, experiments, servers or a browser


def test_exp_run_with_a_set_param_reruns_only_train_and_evaluate(one_epoch):
    assert ran_stages(one_epoch["output"]) == {"train", "evaluate"}
    assert "Ran experiment(s): one-epoch" in one_epoch["output"]
    assert one_epoch["metrics"]["metrics/train.json"]["epochs"] == 1
    history = json.loads((one_epoch["repo"] / "results/train/history.json").read_text())
    assert [row["epoch"] for row in history] == [1]


def test_exp_show_lists_params_and_metrics(one_epoch):
    rows = exp_show(one_epoch["repo"])
    exp = rows["one-epoch"]
    assert exp["params"]["train"]["max_epochs"] == 1
    assert {"lr", "batch_size", "dropout", "max_epochs", "seed"} <= set(exp["params"]["train"])
    assert exp["metrics"]["metrics/evaluate.json"]["test_accuracy"] == \
        one_epoch["metrics"]["metrics/evaluate.json"]["test_accuracy"]
    assert 0 < exp["metrics"]["metrics/train.json"]["best_valid_acc"] <= 1
    # The table a person reads: the columns that tell experiments apart, by name.
    table = sh(one_epoch["repo"], "dvc", "exp", "show", "--csv", "-A", "--only-changed").stdout
    header = table.splitlines()[0].split(",")
    assert {"test_accuracy", "best_valid_acc", "train.max_epochs"} <= set(header)
    assert "one-epoch" in table


def test_params_and_metrics_diff_compare_two_commits(one_epoch):
    repo, old, new = one_epoch["repo"], one_epoch["baseline"], one_epoch["head"]
    params = json.loads(sh(repo, "dvc", "params", "diff", old, new, "--json").stdout)
    assert params == {"params.yaml": {"train.max_epochs": {"old": 2, "new": 1, "diff": -1}}}
    metrics = json.loads(sh(repo, "dvc", "metrics", "diff", old, new, "--json").stdout)
    assert metrics["metrics/train.json"]["epochs"] == {"old": 2, "new": 1, "diff": -1}
    accuracy = metrics["metrics/evaluate.json"]["test_accuracy"]
    assert accuracy["new"] == one_epoch["metrics"]["metrics/evaluate.json"]["test_accuracy"]
    assert accuracy["diff"] == pytest.approx(accuracy["new"] - accuracy["old"])
    md = sh(repo, "dvc", "metrics", "diff", old, new, "--md").stdout
    assert md.startswith("| Path") and "test_accuracy" in md


def test_queued_experiments_all_succeed_and_show_up(queued):
    assert queued["status"] == {name: "Success" for name in QUEUED}, queued["logs"]
    rows = exp_show(queued["repo"])
    for name, seed in QUEUED.items():
        assert rows[name]["params"]["train"]["seed"] == seed
        assert rows[name]["params"]["train"]["max_epochs"] == 2
        assert rows[name]["metrics"]["metrics/train.json"]["epochs"] == 2
        assert 0 < rows[name]["metrics"]["metrics/evaluate.json"]["test_accuracy"] <= 1
    assert rows["q-seed1"]["metrics"] != rows["q-seed2"]["metrics"]  # another seed, another model


def test_queued_experiments_log_complete_runs_to_the_root_store(queued):
    repo = queued["repo"]
    assert sorted(repo.rglob("mlflow.db")) == [repo / "mlflow.db"]  # none in DVC's temp copies
    con = sqlite3.connect(repo / "mlflow.db")
    rows = exp_show(repo)
    spans = []
    for name in QUEUED:
        assert "database is locked" not in queued["logs"][name]
        runs = con.execute("""select r.run_uuid, r.status, r.start_time, r.end_time, r.artifact_uri, s.value
                              from runs r join tags t on t.run_uuid = r.run_uuid
                              join tags s on s.run_uuid = r.run_uuid and s.key = 'fmnist.stage'
                              where t.key = 'fmnist.dvc_exp_name' and t.value = ?""", (name,)).fetchall()
        by_stage = {stage: (run, status, start, end, uri) for run, status, start, end, uri, stage in runs}
        assert sorted(by_stage) == ["evaluate", "train"] and len(runs) == 2, runs
        assert {status for _, status, *_ in by_stage.values()} == {"FINISHED"}
        train, _, start, end, uri = by_stage["train"]
        spans.append((start, end))
        for key in EPOCH_METRICS:
            steps = [s for (s,) in con.execute("select step from metrics where run_uuid = ? and key = ? "
                                               "order by step", (train, key))]
            assert steps == [1, 2], (name, key, steps)
        params = dict(con.execute("select key, value from params where run_uuid = ?", (train,)).fetchall())
        assert params["train.seed"] == str(QUEUED[name]) and params["train.max_epochs"] == "2"
        # evaluate put the test accuracy on the train run of the very model it measured
        (accuracy,) = con.execute("select value from metrics where run_uuid = ? and key = 'test_accuracy'",
                                  (train,)).fetchone()
        assert accuracy == pytest.approx(rows[name]["metrics"]["metrics/evaluate.json"]["test_accuracy"], abs=1e-6)
        assert uri.startswith((repo / "mlartifacts").as_uri()), uri
        assert (Path(uri.removeprefix("file://")) / "model.pt").is_file()
    (s1, e1), (s2, e2) = spans
    assert s1 < e2 and s2 < e1, "the two workers did not train at the same time"
