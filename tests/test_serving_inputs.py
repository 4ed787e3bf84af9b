"""``fmnist-predict`` on the images users have: 16-bit, palette, CMYK, transparent, animated, too
large, a decompression bomb, thousands of files; and ``--model`` files that are not ours.

A freshly built (untrained) model is enough: every variant of an image must get the predictions
of its plain 8-bit grey original, and bad input a one-line error. No pipeline run, so quick.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fmnist.cli
from fmnist.cli import predict_main
from fmnist.model import ModelSpec
from fmnist.predict import save_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    spec = ModelSpec("AlexNetSmall", 67, 0.5, precision="fp32")
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(spec.build().eval(), spec, path)
    return path


def item(seed: int = 0) -> np.ndarray:
    """A light, blocky item on a dark 28x28 background (values 0 off the item)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((28, 28), np.uint8)
    img[5:24, 8:20] = rng.integers(120, 255, (19, 12))
    return img


def run(capsys, *args) -> tuple[int, list[tuple[str, str, float]], list[str]]:
    code = predict_main([str(a) for a in args])
    out, err = capsys.readouterr()
    rows = [line.split("\t") for line in out.splitlines()]
    return code, [(Path(p).name, name, float(prob)) for p, name, prob in rows], err.splitlines()


def write_variants(folder: Path, img: np.ndarray) -> None:
    Image.fromarray(img).save(folder / "a-grey8.png")
    Image.fromarray(img.astype(np.uint16) * 257).save(folder / "b-grey16.png")  # mode I;16
    palette = Image.fromarray(img, mode="P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    palette.save(folder / "c-palette.png")
    transparent = Image.fromarray(img, mode="P")
    transparent.putpalette([255, 255, 255] + [v for i in range(1, 256) for v in (i, i, i)])
    transparent.save(folder / "d-palette-transparent.png", transparency=0)  # index 0: white, transparent
    rgba = np.full((28, 28, 4), 255, np.uint8)  # white where transparent: must not show
    rgba[..., :3][img > 0] = img[img > 0, None]
    rgba[..., 3] = np.where(img > 0, 255, 0)
    Image.fromarray(rgba, "RGBA").save(folder / "e-rgba.png")
    frames = [Image.fromarray(img), Image.fromarray(255 - img)]
    frames[0].save(folder / "f-animated.png", save_all=True, append_images=frames[1:], duration=100, loop=0)


def test_every_kind_of_png_gets_the_predictions_of_its_grey_original(model, tmp_path, capsys):
    img = item()
    write_variants(tmp_path, img)
    assert Image.open(tmp_path / "b-grey16.png").mode.startswith("I")
    assert getattr(Image.open(tmp_path / "f-animated.png"), "n_frames", 1) == 2
    code, rows, errors = run(capsys, "--model", model, tmp_path)
    assert code == 0 and errors == []
    assert [name for name, _, _ in rows] == sorted(p.name for p in tmp_path.iterdir())
    reference = rows[0]
    for name, label, prob in rows[1:]:
        assert (label, prob) == reference[1:], name


def test_cmyk_jpeg_predicts_like_the_grey_jpeg(model, tmp_path, capsys):
    img = item(1)
    big = Image.fromarray(img).resize((112, 112), Image.Resampling.NEAREST)
    big.save(tmp_path / "grey.jpg", quality=95)
    big.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    code, rows, errors = run(capsys, "--model", model, tmp_path)
    assert code == 0 and errors == []
    (_, cmyk_label, cmyk_prob), (_, grey_label, grey_prob) = rows
    assert cmyk_label == grey_label and abs(cmyk_prob - grey_prob) < 0.02


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims ``width`` x ``height`` grey pixels: what a decompression bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_huge_images_and_bombs_are_refused_in_one_line_and_the_rest_predicted(model, tmp_path, capsys):
    Image.new("L", (10_000, 10_000)).save(tmp_path / "a-100mp.png")  # a real 100-megapixel image
    png_header_only(tmp_path / "b-bomb.png", 40_000, 40_000)
    Image.fromarray(item()).save(tmp_path / "c-ok.png")
    Image.fromarray(item()).save(tmp_path / "d.gif")
    code, rows, errors = run(capsys, "--model", model, *sorted(tmp_path.iterdir()))
    assert code == 2
    assert [name for name, _, _ in rows] == ["c-ok.png"]
    assert errors == [
        f"error: {tmp_path / 'a-100mp.png'}: image too large (100 megapixels; the limit is 89, a guard against "
        f"decompression bombs)",
        f"error: {tmp_path / 'b-bomb.png'}: image too large (1600 megapixels; the limit is 89, a guard against "
        f"decompression bombs)",
        f"error: {tmp_path / 'd.gif'}: not a PNG or JPEG image"]


def test_thousands_of_files_are_predicted_in_bounded_chunks(model, tmp_path, capsys, monkeypatch):
    n = 3 * fmnist.cli.CHUNK + 7
    for i in range(n):
        Image.fromarray(item(i % 5)).save(tmp_path / f"{i:05d}.png")
    real, batches = fmnist.cli._predictor, []

    def counting(args):  # the real predictor, counting how many images it gets at once
        predict = real(args)
        return lambda images: batches.append(len(images)) or predict(images)

    monkeypatch.setattr(fmnist.cli, "_predictor", counting)
    code, rows, errors = run(capsys, "--model", model, tmp_path)
    assert code == 0 and errors == []
    assert [name for name, _, _ in rows] == [f"{i:05d}.png" for i in range(n)]
    assert batches == [fmnist.cli.CHUNK] * 3 + [7]  # never all images at once
    assert {(label, prob) for name, label, prob in rows if int(name[:5]) % 5 == 0} == {rows[0][1:]}


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "this ran"))


def test_a_model_file_that_is_not_ours_is_refused_in_one_line(model, tmp_path, capsys):
    Image.fromarray(item()).save(tmp_path / "shirt.png")
    marker = tmp_path / "ran.txt"
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}, "config": Payload(marker)}, foreign, pickle_module=pickle)
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps(Payload(marker)))
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"weight": torch.zeros(3)}, unrelated)
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    expected = {
        foreign: "it holds pickled objects; refused unread: only tensors and plain values are loaded",
        plain_pickle: "it holds pickled objects; refused unread: only tensors and plain values are loaded",
        unrelated: "no 'config' in it",
    }
    for path, reason in expected.items():
        code, rows, errors = run(capsys, "--model", path, tmp_path / "shirt.png")
        assert (code, rows) == (1, [])  # the model cannot be loaded: a failure of the work
        assert errors == [f"error: {path}: not a model saved by the pipeline ({reason})"]
    code, rows, errors = run(capsys, "--model", text, tmp_path / "shirt.png")
    assert (code, rows) == (1, []) and len(errors) == 1
    assert errors[0].startswith(f"error: {text}: not a model saved by the pipeline (")
    assert not marker.exists()  # the pickled code never ran


def test_the_pyfunc_predict_has_type_hints_mlflow_accepts():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-W", "always", "-c", "import fmnist.pyfunc"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "type hint" not in result.stderr.lower(), result.stderr  # neither "Add type hints" nor "not supported"


@pytest.fixture(scope="module")
def classifier(model):
    from types import SimpleNamespace

    from fmnist.pyfunc import FashionMnistClassifier

    wrapper = FashionMnistClassifier()
    wrapper.load_context(SimpleNamespace(artifacts={"model": str(model)}))
    return wrapper


BAD_REQUESTS = {
    "NaN": (np.full((2, 28, 28), np.nan, np.float32), "pixel values must be numbers 0..255, got NaN or infinity"),
    "inf": (np.full((1, 784), np.inf), "pixel values must be numbers 0..255, got NaN or infinity"),
    "strings": (np.full((1, 28, 28), "a"), "pixel values must be numbers 0..255, got <U1"),
    "objects": (np.array([[None] * 784], dtype=object), "pixel values must be numbers 0..255, got object"),
    "booleans": (np.ones((1, 28, 28), bool), "pixel values must be numbers 0..255, got bool"),
    "negative": (np.full((1, 28, 28), -3.0), "pixel values must be numbers 0..255, got -3..-3"),
    "empty batch": (np.zeros((0, 28, 28), np.float32), "no images in the request"),
    "a scalar": (np.float32(3), "no images in the request"),
    "10,000 images": (np.zeros((10_000, 28, 28), np.float32),
                      "10000 images in one request; at most 1024: send them in several requests"),
    "not square": (np.zeros((2, 28, 20), np.float32),
                   "expected images of shape (N, H, W) or (N, H*W), got (2, 28, 20)"),
    "two inputs": ({"a": np.zeros((1, 28, 28)), "b": np.zeros((1, 28, 28))},
                   "expected one input of images, got 2: a, b"),
}


@pytest.mark.parametrize("model_input, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_the_pyfunc_refuses_bad_requests_as_invalid_parameters(classifier, model_input, message):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        classifier.predict(None, model_input)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and err.value.get_http_status_code() == 400
    assert err.value.message == message


def test_the_pyfunc_answers_good_requests(classifier):
    import pandas as pd

    img = item().astype(np.float32)
    for model_input in (img[None], img.reshape(1, 784), pd.DataFrame(img.reshape(1, 784)), {"images": img[None]}):
        frame = classifier.predict(None, model_input)
        assert len(frame) == 1 and abs(sum(frame[f"prob_{i}"][0] for i in range(10)) - 1) < 1e-4
