"""``fmnist-predict``: class name and probability for image files, from the pipeline's model or
an MLflow model URI.

    fmnist-predict shirt.png more-images/                     # models/model.pt of this project
    fmnist-predict --model-uri models:/fashion-mnist-alexnet/1 shirt.png

Prints one line per image: path, class name and its probability, separated by tabs. Images may
be PNG or JPEG of any size up to about 89 megapixels (Pillow's guard against decompression
bombs), colour or grey, 8 or 16 bits, with a palette, CMYK or transparency (transparent pixels
become the dark background; an animated PNG is read by its first frame). Each is made like a
Fashion-MNIST image first: grey, a light item on a dark background (an image with a light border,
such as a product photo on white, is inverted; see --invert), padded to a square and resized to
28x28. Folders are read and predicted in chunks, so thousands of files take little memory. An
image that cannot be read is reported in one line on stderr; the others are still predicted.

Exit status (the rule of :mod:`fmnist.errors`): 0 every image predicted; 1 the model cannot be
found or loaded; 2 an image that cannot be read, no images, or a wrong command line.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from fmnist.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SIDE = 28  # Fashion-MNIST's images
CHUNK = 256  # images read and predicted at once: memory stays flat however many files are given


class PredictError(RuntimeError):
    """A failure reported as one line, without a traceback."""


def collect(paths: list[str]) -> list[Path]:
    """The files named, and the PNG and JPEG files of the folders named, in name order."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            files.append(path)
    return files


def read_image(path: Path, invert: str = "auto") -> np.ndarray:
    """A grey 28x28 uint8 image, light item on dark; ``ValueError`` naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between its pixel limit and twice that: refuse from the limit on.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=["PNG", "JPEG"]) as img:
                grey = _grey(img)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder of no PNG or JPEG images") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a PNG or JPEG image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
        raise ValueError(f"{path}: image too large ({size}; the limit is {Image.MAX_IMAGE_PIXELS / 1e6:.0f}, "
                         f"a guard against decompression bombs)") from None
    except (OSError, SyntaxError, ValueError, MemoryError) as err:
        reason = getattr(err, "strerror", None) or _first_line(err)
        raise ValueError(f"{path}: unreadable image ({reason})") from None
    if invert == "always" or (invert == "auto" and _border(grey).mean() > 127):
        grey = 255 - grey
    return to_side(grey)


def _grey(img) -> np.ndarray:
    """The first frame of ``img`` as uint8 grey: 16-bit scaled (not clipped), transparency over black."""
    from PIL import Image

    img.seek(0)  # an animated PNG: its first frame
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey PNG: 0..65535
        return np.rint(np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _border(img: np.ndarray) -> np.ndarray:
    return np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])


def to_side(grey: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Pad a grey image to a square with black, centred, then resize it to ``side`` x ``side``."""
    from PIL import Image

    h, w = grey.shape
    if h != w:
        n = max(h, w)
        square = np.zeros((n, n), np.uint8)
        top, left = (n - h) // 2, (n - w) // 2
        square[top:top + h, left:left + w] = grey
        grey = square
    if grey.shape[0] == side:
        return grey
    # Shrinking averages each output pixel's area (a 4x enlargement shrinks back exactly); enlarging interpolates.
    filt = Image.Resampling.BOX if grey.shape[0] > side else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(grey).resize((side, side), filt), dtype=np.uint8)


def predict_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fmnist-predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG) or folders of them")
    p.add_argument("--model", help="the pipeline's model file (default: models/model.pt at the project root)")
    p.add_argument("--model-uri", help="an MLflow model URI instead, e.g. models:/fashion-mnist-alexnet/1; "
                                       "the store is $MLFLOW_TRACKING_URI, else mlflow.db at the project root")
    p.add_argument("--invert", choices=("auto", "always", "never"), default="auto",
                   help="turn dark-on-light images into light-on-dark: auto = when the border is light "
                        "(default: %(default)s)")
    args = p.parse_args(argv)
    if args.model and args.model_uri:
        p.error("give --model or --model-uri, not both")

    files = collect(args.images)
    if not files:
        print("error: no PNG or JPEG images found in " + ", ".join(args.images), file=sys.stderr)
        return EXIT_USAGE
    predict, failed = None, 0
    for start in range(0, len(files), CHUNK):
        images, readable = [], []
        for path in files[start:start + CHUNK]:
            try:
                images.append(read_image(path, args.invert))
                readable.append(path)
            except ValueError as err:
                print(f"error: {err}", file=sys.stderr)
                failed += 1
        if not images:
            continue
        try:
            predict = predict or _predictor(args)  # loaded once, when the first image is readable
        except PredictError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_FAILED
        for path, (name, prob) in zip(readable, predict(np.stack(images))):
            print(f"{path}\t{name}\t{prob:.4f}")
    return EXIT_USAGE if failed else EXIT_OK


Predictor = Callable[[np.ndarray], "list[tuple[str, float]]"]


def _predictor(args) -> Predictor:
    """A function from ``(N, 28, 28)`` uint8 images to class name and probability per image."""
    if args.model_uri:
        return _uri_predictor(args.model_uri)
    from fmnist.compute import Compute
    from fmnist.data import CLASS_NAMES
    from fmnist.predict import load_model, predict_proba
    from fmnist.repo import project_root

    model = Path(args.model) if args.model else project_root() / "models" / "model.pt"
    if not model.is_file():
        raise PredictError(f"{model}: model not found; run the pipeline (dvc repro), pass --model or --model-uri")
    try:
        with warnings.catch_warnings():  # torch's advice on pickle protocols: not for users
            warnings.simplefilter("ignore")
            module, spec = load_model(model)
    except pickle.UnpicklingError:  # weights_only loading met code or objects: never run them
        raise PredictError(f"{model}: not a model saved by the pipeline (it holds pickled objects; refused "
                           f"unread: only tensors and plain values are loaded)") from None
    except KeyError as err:
        raise PredictError(f"{model}: not a model saved by the pipeline (no {err} in it)") from None
    except Exception as err:  # a file that is not one of ours: say which, in one line
        raise PredictError(f"{model}: not a model saved by the pipeline ({_first_line(err)[:120]})") from None
    compute = Compute.resolve(spec.precision, "cpu")

    def predict(images: np.ndarray) -> list[tuple[str, float]]:
        prob = predict_proba(module, images, spec.input_size, compute)
        return [(CLASS_NAMES[i], float(prob[k, i])) for k, i in enumerate(prob.argmax(axis=1))]

    return predict


def _uri_predictor(uri: str) -> Predictor:
    import mlflow.pyfunc

    from fmnist.tracking import tracking_uri

    store = tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as err:
        raise PredictError(f"cannot load {uri} from {store}: {_first_line(err)}") from None

    def predict(images: np.ndarray) -> list[tuple[str, float]]:
        frame = model.predict(images.astype(np.float32))  # the signature: float32 (-1, 28, 28)
        return list(zip(frame["label"], frame["probability"].astype(float)))

    return predict


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(predict_main())
