"""``fmnist-predict``: class name and probability for image files, from the pipeline's model or
an MLflow model URI.

    fmnist-predict shirt.png more-images/                     # models/model.pt
    fmnist-predict --model-uri models:/fashion-mnist-alexnet/1 shirt.png

Images may be PNG or JPEG of any size, colour or grey; they are turned grey and resized to
28x28 first, like Fashion-MNIST (a light item on a dark background).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def collect(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


def read_image(path: Path) -> np.ndarray:
    """A grey 28x28 uint8 image; ``ValueError`` naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            grey = img.convert("L")
            if grey.size != (28, 28):
                grey = grey.resize((28, 28), Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(grey, dtype=np.uint8)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable PNG or JPEG image ({err})") from None


def predict_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fmnist-predict", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", help="image files or folders of them")
    p.add_argument("--model", default="models/model.pt", help="the pipeline's model file (default: %(default)s)")
    p.add_argument("--model-uri", help="an MLflow model URI, e.g. models:/fashion-mnist-alexnet/1")
    args = p.parse_args(argv)

    files = collect(args.images)
    if not files:
        print("error: no PNG or JPEG images found in " + ", ".join(args.images), file=sys.stderr)
        return 2
    images, readable, failed = [], [], 0
    for path in files:
        try:
            images.append(read_image(path))
            readable.append(path)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
    if images:
        batch = np.stack(images)
        for path, (name, prob) in zip(readable, _predict(batch, args)):
            print(f"{path}\t{name}\t{prob:.4f}")
    return 2 if failed else 0


def _predict(images: np.ndarray, args) -> list[tuple[str, float]]:
    if args.model_uri:
        import mlflow.pyfunc

        from fmnist.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
        frame = mlflow.pyfunc.load_model(args.model_uri).predict(images.astype(np.float32))
        return list(zip(frame["label"], frame["probability"].astype(float)))
    from fmnist.data import CLASS_NAMES
    from fmnist.predict import load_model, predict_proba

    if not Path(args.model).is_file():
        raise SystemExit(f"error: {args.model}: model not found; run the pipeline (dvc repro) or pass --model-uri")
    module, config = load_model(args.model)
    prob = predict_proba(module, images, config["input_size"])
    return [(CLASS_NAMES[i], float(prob[k, i])) for k, i in enumerate(prob.argmax(axis=1))]


if __name__ == "__main__":
    sys.exit(predict_main())
