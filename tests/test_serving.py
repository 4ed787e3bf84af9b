"""The trained model for users: the ``fmnist-predict`` command and ``mlflow models serve`` of the
registered model, on test images of the tiny pipeline, checked against evaluate's predictions."""

from __future__ import annotations

import csv
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import BIN, env_for, free_port, stop, wait_http
from fmnist.data import CLASS_NAMES

pytestmark = pytest.mark.slow  # the tiny pipeline, a model server

MODEL = "fashion-mnist-alexnet"
N = 100  # test images checked


@pytest.fixture(scope="module")
def test_set(pipeline, tmp_path_factory) -> dict:
    """The first test images, raw and as PNG files, with evaluate's predicted class names."""
    repo = pipeline["repo"]
    raw = np.load(repo / "data/split/test_images.npy")[:N]
    with open(repo / "results/evaluate/predictions.csv") as f:
        expected = [row["predicted"] for row in csv.DictReader(f)][:N]
    pngs = tmp_path_factory.mktemp("test-images")
    for i, image in enumerate(raw):
        Image.fromarray(image).save(pngs / f"{i:04d}.png")
    return {"repo": repo, "raw": raw, "expected": expected, "pngs": pngs}


@pytest.fixture(scope="module")
def newest_version(pipeline) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{pipeline['repo']}/mlflow.db")
    return str(max(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")))


def predict(repo: Path, *args: str | Path) -> subprocess.CompletedProcess:
    """The installed console command, run in the pipeline's repo like a user would."""
    return subprocess.run([str(BIN / "fmnist-predict"), *map(str, args)], cwd=repo, env=env_for(repo),
                          capture_output=True, text=True, timeout=300)


def lines(stdout: str) -> list[tuple[str, str, float]]:
    rows = [line.split("\t") for line in stdout.splitlines()]
    assert all(len(r) == 3 for r in rows), stdout
    return [(path, name, float(prob)) for path, name, prob in rows]


@pytest.fixture(scope="module")
def by_file(test_set) -> subprocess.CompletedProcess:
    """``fmnist-predict <folder of PNGs>``: the model file, models/model.pt."""
    return predict(test_set["repo"], test_set["pngs"])


def test_predict_command_matches_evaluate_with_the_model_file(test_set, by_file):
    assert by_file.returncode == 0, by_file.stderr
    rows = lines(by_file.stdout)
    assert [Path(p).name for p, _, _ in rows] == [f"{i:04d}.png" for i in range(N)]
    assert [name for _, name, _ in rows] == test_set["expected"]
    assert all(0.1 <= prob <= 1 for _, _, prob in rows)  # the top one of ten probabilities


def test_predict_command_matches_evaluate_with_the_registered_model(test_set, newest_version, by_file):
    by_uri = predict(test_set["repo"], "--model-uri", f"models:/{MODEL}/{newest_version}", test_set["pngs"])
    assert by_uri.returncode == 0, by_uri.stderr
    assert by_uri.stderr == ""  # no MLflow advice meant for model authors
    rows = lines(by_uri.stdout)
    assert [name for _, name, _ in rows] == test_set["expected"]
    from_file = lines(by_file.stdout)
    assert np.allclose([p for _, _, p in rows], [p for _, _, p in from_file], atol=2e-4)  # the same model


def test_predict_command_takes_colour_bigger_jpeg_and_dark_on_light_images(test_set, tmp_path):
    n = 30
    folders = {kind: tmp_path / kind for kind in ("colour4x", "jpeg3x", "inverted", "wide")}
    for folder in folders.values():
        folder.mkdir()
    for i, image in enumerate(test_set["raw"][:n]):
        grey = Image.fromarray(image)
        grey.convert("RGB").resize((112, 112), Image.Resampling.NEAREST).save(folders["colour4x"] / f"{i:02d}.png")
        grey.convert("RGB").resize((84, 84), Image.Resampling.NEAREST).save(folders["jpeg3x"] / f"{i:02d}.jpg",
                                                                             quality=95)
        Image.fromarray(255 - image).save(folders["inverted"] / f"{i:02d}.png")  # dark item on white
        Image.fromarray(np.pad(image, ((0, 0), (10, 10)))).save(folders["wide"] / f"{i:02d}.png")  # 48x28
    expected = test_set["expected"][:n]
    result = predict(test_set["repo"], *folders.values())  # one run: the command takes several folders
    assert result.returncode == 0, result.stderr
    rows = lines(result.stdout)
    assert len(rows) == 4 * n
    names = {kind: [name for path, name, _ in rows if Path(path).parent.name == kind] for kind in folders}
    # Lossless enlargements shrink back to the very pixels; the inverted images are turned back.
    assert names["colour4x"] == expected
    assert names["inverted"] == expected
    assert sum(a == b for a, b in zip(names["jpeg3x"], expected)) >= 0.9 * n  # JPEG is lossy
    assert len(names["wide"]) == n and set(names["wide"]) <= set(CLASS_NAMES)


def test_unreadable_images_are_one_line_errors_and_the_rest_is_predicted(test_set, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    png = (test_set["pngs"] / "0000.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[:len(png) // 2])
    missing = tmp_path / "missing.jpg"
    result = predict(test_set["repo"], tmp_path / "notes.png", tmp_path / "truncated.png", missing,
                     test_set["pngs"] / "0000.png")
    assert result.returncode == 2
    errors = result.stderr.splitlines()
    assert errors == [f"error: {tmp_path / 'notes.png'}: not a PNG or JPEG image",
                      f"error: {tmp_path / 'truncated.png'}: unreadable image (image file is truncated)",
                      f"error: {missing}: file not found"]
    assert [name for _, name, _ in lines(result.stdout)] == test_set["expected"][:1]


def test_a_model_that_cannot_be_loaded_is_a_one_line_error(test_set, newest_version, tmp_path):
    absent = f"models:/{MODEL}/{int(newest_version) + 1}"
    result = predict(test_set["repo"], "--model-uri", absent, test_set["pngs"] / "0000.png")
    assert result.returncode == 1 and result.stdout == ""  # the model cannot be loaded
    assert result.stderr.splitlines() == [
        f"error: cannot load {absent} from sqlite:///{test_set['repo']}/mlflow.db: Model Version "
        f"(name={MODEL}, version={int(newest_version) + 1}) not found"]
    elsewhere = subprocess.run([str(BIN / "fmnist-predict"), str(test_set["pngs"] / "0000.png")], cwd=tmp_path,
                               env=env_for(tmp_path), capture_output=True, text=True, timeout=300)
    assert elsewhere.returncode == 1
    assert elsewhere.stderr.splitlines() == [f"error: {tmp_path / 'models' / 'model.pt'}: model not found; run the "
                                             f"pipeline (dvc repro), pass --model or --model-uri"]


@pytest.fixture(scope="module")
def served_model(pipeline, newest_version, tmp_path_factory):
    """``mlflow models serve`` of the newest registered version on a free port of 127.0.0.1."""
    repo = pipeline["repo"]
    port = free_port()
    workdir = tmp_path_factory.mktemp("serve")
    log = workdir / "serve.log"
    env = env_for(repo) | {"MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow.db"}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/{newest_version}",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as out:  # its own session: stopping it stops the uvicorn it starts
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/ping", proc, timeout_s=180, log=log)
        yield url
    finally:
        stop(proc)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_served_model_answers_scoring_requests_like_evaluate(served_model, test_set):
    status, answer = post(served_model, {"inputs": test_set["raw"].tolist()})  # (N, 28, 28) pixel values
    assert status == 200, answer
    predictions = answer["predictions"]
    assert [p["label"] for p in predictions] == test_set["expected"]
    assert [CLASS_NAMES[p["class"]] for p in predictions] == test_set["expected"]
    for p in predictions:
        probs = [p[f"prob_{i}"] for i in range(10)]
        assert abs(sum(probs) - 1) < 1e-4 and p["probability"] == max(probs)


def test_served_model_rejects_images_of_the_wrong_shape(served_model, test_set):
    status, answer = post(served_model, {"inputs": test_set["raw"][:2, :14, :14].tolist()})
    assert status == 400
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "does not match expected shape (-1, 28, 28)" in answer["message"]


def post_raw(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "application/json"},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_served_model_answers_bad_requests_with_400_and_a_message(served_model, test_set):
    image = test_set["raw"][0].tolist()
    nan = json.dumps({"inputs": [[[float("nan")] * 28] * 28]}).encode()  # Python's JSON writes NaN
    requests = {
        "NaN": (nan, "NaN"),
        "strings": (json.dumps({"inputs": [[["white"] * 28] * 28]}).encode(), ""),
        "an empty batch": (json.dumps({"inputs": []}).encode(), ""),
        # (JSON booleans are no bad request here: the float32 signature casts them to pixels 0 and 1)
        "objects": (json.dumps({"inputs": [[[{"pixel": 1}] * 28] * 28]}).encode(), ""),
        "out of range": (json.dumps({"inputs": [[[300.0] * 28] * 28]}).encode(), "0..255"),
        "10,000 images": (json.dumps({"inputs": [image] * 10_000}).encode(), "at most 1024"),
        "not JSON": (b'{"inputs": [[[', ""),
    }
    for what, (body, says) in requests.items():
        status, answer = post_raw(served_model, body)
        assert status == 400, (what, status, answer)
        assert answer.get("message") and says in answer["message"], (what, answer)
    status, _ = post(served_model, {"inputs": [image]})
    assert status == 200  # the server is still up and well
