"""The real pipeline: `dvc repro` of all six stages in a temp git repo, on the tiny profile."""

from __future__ import annotations

import csv
import json
import re
import sqlite3

import pytest
import yaml

from helpers import copy_repo, edit_params, ran_stages, sh

pytestmark = pytest.mark.slow  # dvc repro of the tiny profile

STAGES = {"download", "split", "resize", "search", "train", "evaluate"}


def test_first_repro_runs_every_stage_and_writes_the_outputs(pipeline):
    repo = pipeline["repo"]
    assert ran_stages(pipeline["output"]) == STAGES
    assert sorted(p.name for p in (repo / "data" / "raw").iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
    assert {p.name for p in (repo / "data" / "resized").iterdir()} == {
        f"{s}_{k}.npy" for s in ("train", "valid", "test") for k in ("images", "labels")}
    best = json.loads((repo / "results/search/best_params.json").read_text())
    trials = json.loads((repo / "results/search/trials.json").read_text())
    assert len(trials) == 2 and all(t["status"] == "ok" for t in trials)
    # the grid's winner by trials.json (first in grid order on a tie), whichever dropout it is
    top = max(trials, key=lambda t: t["valid_acc"])
    assert {k: best[k] for k in ("lr", "batch_size", "dropout", "valid_acc")} == \
        {k: top[k] for k in ("lr", "batch_size", "dropout", "valid_acc")}

    history = json.loads((repo / "results/train/history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert {"train_loss", "valid_loss", "train_acc", "valid_acc", "lr"} <= set(history[0])
    assert history[1]["lr"] < history[0]["lr"]  # cosine schedule

    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert 0.3 < metrics["test_accuracy"] <= 1.0  # 1000 images, 2 epochs: well above chance
    assert set(metrics) == {"test_accuracy", "test_loss", "test_macro_f1"}  # the experiments table's columns
    per_class = json.loads((repo / "metrics/per_class.json").read_text())["per_class"]
    assert set(per_class) == {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                              "Bag", "Ankle boot"}
    assert sum(row["support"] for row in per_class.values()) == 10_000
    with open(repo / "results/evaluate/predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10_000 and set(rows[0]) == {"actual", "predicted"}
    correct = sum(r["actual"] == r["predicted"] for r in rows) / len(rows)
    assert abs(correct - metrics["test_accuracy"]) < 1e-6
    for name in ("confusion_matrix.png", "curves.png", "mistakes.png"):
        assert (repo / "plots/evaluate" / name).read_bytes()[:4] == b"\x89PNG"
    report = (repo / "results/report.md").read_text()
    assert f"| test accuracy | {metrics['test_accuracy'] * 100:.2f}% |" in report
    assert "](../plots/evaluate/confusion_matrix.png)" in report and "| Ankle boot |" in report
    train = json.loads((repo / "metrics/train.json").read_text())
    used = ("lr", "batch_size", "dropout")
    assert {k: train[k] for k in used} == {k: best[k] for k in used}  # train took the winner's
    assert train["precision"] in ("fp32", "bf16")  # what auto became on this machine
    assert re.search(rf"^\| model \| AlexNetSmall at 67 px, linear head, dropout {train['dropout']:g}; "
                     r"predicted in (fp32|bf16) on (cpu|cuda) \|$", report, re.MULTILINE)


def test_dvc_metrics_show_reads_the_metrics(pipeline):
    out = sh(pipeline["repo"], "dvc", "metrics", "show", "--json").stdout
    shown = json.loads(out)
    text = json.dumps(shown)
    assert "test_accuracy" in text and "best_valid_acc" in text


def test_mlflow_runs_land_in_the_repo_root_store(pipeline):
    repo = pipeline["repo"]
    db = repo / "mlflow.db"
    assert db.is_file()
    con = sqlite3.connect(db)
    tags = dict(con.execute("select run_uuid, value from tags where key = 'fmnist.stage'").fetchall())
    stages = sorted(tags.values())
    assert stages == ["evaluate", "search", "search-trial", "search-trial", "train"]
    train_run = next(r for r, s in tags.items() if s == "train")
    steps = con.execute("select step from metrics where run_uuid = ? and key = 'valid_acc' order by step",
                        (train_run,)).fetchall()
    assert [s for (s,) in steps] == [1, 2]
    params = dict(con.execute("select key, value from params where run_uuid = ?", (train_run,)).fetchall())
    assert params["train.max_epochs"] == "2" and params["used.batch_size"] == "32"
    on_train = {k for (k,) in con.execute("select key from metrics where run_uuid = ?", (train_run,))}
    assert "test_accuracy" in on_train  # evaluate's metrics sit with the model they measure
    assert con.execute("select count(*) from model_versions").fetchone()[0] == 1
    assert (repo / "mlartifacts").is_dir()


def test_second_repro_runs_nothing(pipeline):
    out = sh(pipeline["repo"], "dvc", "repro")
    assert ran_stages(out.stdout) == set()
    assert "Data and pipelines are up to date" in out.stdout


def test_only_affected_stages_rerun(pipeline, tmp_path):
    repo = copy_repo(pipeline["repo"], tmp_path / "copy")  # the shared run stays as it was
    edit_params(repo, "evaluate", "n_misclassified", 4)
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == {"evaluate"}

    edit_params(repo, "train", "max_epochs", 1)
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == {"train", "evaluate"}

    model = repo / "src/fmnist/model.py"
    model.write_text(model.read_text() + "\n# an edit to the model code\n")
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == {"search", "train", "evaluate"}
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == set()


def stages_reading(repo, path: str) -> set[str]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {name for name, stage in stages.items() if path in stage.get("deps", [])}


def test_upstream_changes_rerun_exactly_the_stages_that_read_them(pipeline, tmp_path):
    repo = copy_repo(pipeline["repo"], tmp_path / "copy")
    # resize.chunk changes how resize works, not what it writes: resize reruns, nothing after it
    edit_params(repo, "resize", "chunk", 100)
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == {"resize"}

    # a file that no stage reads: nothing reruns
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nAn edit.\n")
    (repo / "profiles" / "tiny.yaml").write_text((repo / "profiles" / "tiny.yaml").read_text() + "# an edit\n")
    out = sh(repo, "dvc", "repro").stdout
    assert ran_stages(out) == set() and "Data and pipelines are up to date" in out

    # the data code: every stage that lists it reruns; their outputs are the same, so no other does
    readers = stages_reading(repo, "src/fmnist/data.py")
    assert {"download", "split", "resize"} <= readers
    data_py = repo / "src/fmnist/data.py"
    data_py.write_text(data_py.read_text() + "\n# an edit to the data code\n")
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == readers

    # another split: everything downstream of it, not the download
    before = (repo / "data/split/train_labels.npy").read_bytes()
    edit_params(repo, "split", "seed", 7)
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == STAGES - {"download"}
    assert (repo / "data/split/train_labels.npy").read_bytes() != before
