"""The seed's own model end to end: `dvc repro` of all six stages with AlexNet at 227 px on the
tiny profile's subset, its outputs, its MLflow run, and the two ways users predict with it
(``fmnist-predict`` on 28x28 PNG files, the registered MLflow model on raw 28x28 arrays).

About two minutes on 2 cores: the 10,000 test images are predicted at 227 px.
"""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import BIN, edit_params, env_for, make_repo, ran_stages, sh

pytestmark = pytest.mark.slow

STAGES = {"download", "split", "resize", "search", "train", "evaluate"}
MODEL = "fashion-mnist-alexnet"
N = 40  # test images predicted by the two user paths


@pytest.fixture(scope="module")
def run227(tmp_path_factory, data_source) -> dict:
    """The tiny profile with ``model.name: AlexNet`` and ``resize.size: 227``, run by ``dvc repro``."""
    repo = make_repo(tmp_path_factory.mktemp("alexnet227"))
    edit_params(repo, "model", "name", "AlexNet")
    edit_params(repo, "resize", "size", 227)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    sh(repo, "git", "commit", "-qam", "AlexNet at 227 px")
    result = sh(repo, "dvc", "repro", timeout=1800)
    return {"repo": repo, "output": result.stdout + result.stderr, "params": params}


def test_every_stage_runs_at_227_px(run227):
    repo = run227["repo"]
    assert ran_stages(run227["output"]) == STAGES
    split = run227["params"]["split"]
    sizes = {"train": split["train_size"], "valid": split["valid_size"], "test": 10_000}
    for name, n in sizes.items():
        images = np.load(repo / f"data/resized/{name}_images.npy", mmap_mode="r")
        assert images.shape == (n, 227, 227) and images.dtype == np.uint8, name
        assert len(np.load(repo / f"data/resized/{name}_labels.npy")) == n

    from fmnist.predict import load_model

    module, spec = load_model(repo / "models/model.pt")
    assert (spec.model_name, spec.input_size) == ("AlexNet", 227)
    assert module.l1.linear.in_features == 9216 and module.l2.linear.out_features == 4096  # 256 x 6 x 6
    assert (repo / "models/model.pt").stat().st_size > 58_000_000 * 4  # 58.3 M fp32 parameters
    # A finished run keeps no checkpoint (700 MB with Adam's state at 227 px), only a record of
    # itself, and that small folder is what DVC caches.
    assert sorted(p.name for p in (repo / "checkpoints/train").iterdir()) == ["done.json"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (ckpt,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "checkpoints/train"]
    assert ckpt["nfiles"] == 1 and ckpt["size"] < 1000
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["epochs"] == 2 and train["precision"] in ("fp32", "bf16")
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    with open(repo / "results/evaluate/predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10_000
    assert sum(r["actual"] == r["predicted"] for r in rows) / len(rows) == pytest.approx(metrics["test_accuracy"])
    assert "| model | AlexNet at 227 px, linear head" in (repo / "results/report.md").read_text()


def test_the_mlflow_run_has_params_curves_and_a_registered_version(run227):
    from mlflow.tracking import MlflowClient

    repo = run227["repo"]
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name(run227["params"]["tracking"]["experiment"])
    (train,) = client.search_runs([experiment.experiment_id], "tags.`fmnist.stage` = 'train'")
    params = train.data.params
    assert params["model.name"] == "AlexNet" and params["input_size"] == "227"
    for key in ("train_loss", "valid_loss", "valid_acc", "train_acc"):
        assert [m.step for m in client.get_metric_history(train.info.run_id, key)] == [1, 2], key
    assert "test_accuracy" in train.data.metrics  # logged onto the train run by evaluate
    (version,) = client.search_model_versions(f"name = '{MODEL}'")
    assert str(version.version) == "1" and version.run_id == train.info.run_id
    assert train.data.tags["fmnist.registered_model"] == f"{MODEL}/1"


@pytest.fixture(scope="module")
def raw_test_images(run227, tmp_path_factory) -> dict:
    """The first test images as the split stage stores them (28x28 uint8) and as PNG files, with
    the classes evaluate predicted for them from the 227 px arrays."""
    repo = run227["repo"]
    raw = np.load(repo / "data/split/test_images.npy")[:N]
    assert raw.shape == (N, 28, 28)
    with open(repo / "results/evaluate/predictions.csv") as f:
        expected = [row["predicted"] for row in csv.DictReader(f)][:N]
    folder = tmp_path_factory.mktemp("pngs227")
    for i, image in enumerate(raw):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return {"raw": raw, "expected": expected, "pngs": folder}


def test_fmnist_predict_takes_28x28_pngs_for_the_227_px_model(run227, raw_test_images):
    repo = run227["repo"]
    result = subprocess.run([str(BIN / "fmnist-predict"), str(raw_test_images["pngs"])], cwd=repo,
                            env=env_for(repo), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    names = [line.split("\t")[1] for line in result.stdout.splitlines()]
    assert names == raw_test_images["expected"]


PYFUNC = """
import json, sys
import mlflow, numpy as np
mlflow.set_tracking_uri("sqlite:///mlflow.db")
model = mlflow.pyfunc.load_model("models:/fashion-mnist-alexnet/1")
out = model.predict(np.load(sys.argv[1]).astype("float32"))  # raw (N, 28, 28), 0..255
print(json.dumps({"labels": list(out["label"]), "sums": out[[f"prob_{i}" for i in range(10)]].sum(axis=1).tolist()}))
"""


def test_the_registered_model_takes_raw_28x28_arrays(run227, raw_test_images, tmp_path):
    """As the README shows it, in a fresh Python in the project root."""
    repo = run227["repo"]
    np.save(tmp_path / "raw.npy", raw_test_images["raw"])
    result = subprocess.run([str(BIN / "python"), "-c", PYFUNC, str(tmp_path / "raw.npy")], cwd=repo,
                            env=env_for(repo), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["labels"] == raw_test_images["expected"]
    assert np.allclose(out["sums"], 1.0, atol=1e-4)
