"""The trained model as an MLflow pyfunc: raw images in, class names and probabilities out.

Callers send Fashion-MNIST-style images, ``(N, 28, 28)`` or ``(N, 784)``, pixel values 0..255;
the model resizes them to its own input size, so callers need not know it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from fmnist.data import CLASS_NAMES
from fmnist.compute import Compute
from fmnist.predict import as_images, load_model, predict_proba

PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_CODE = PACKAGE_DIR / "pyfunc_model.py"  # models-from-code: what loading the model runs
# What loading the model imports, beyond the standard library and the fmnist package itself
# (shipped with the model as code); tests/test_team_model.py checks the list is complete.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas")


class FashionMnistClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.module, self.spec = load_model(context.artifacts["model"])
        self.compute = Compute.resolve(self.spec.precision, "cpu")

    # np.ndarray is what the tensor signature hands over; MLflow takes it as a type hint that
    # infers no schema (mlflow.types.type_hints.type_hints_no_signature_inference), so the logged
    # signature stays the one checked, and MLflow's "Add type hints" advice has nothing to say.
    def predict(self, context: Any, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = checked_images(model_input)
        prob = predict_proba(self.module, images, self.spec.input_size, self.compute)
        return result_frame(prob)


MAX_IMAGES = 1024  # per request: more is a 400 that says to split it, not minutes of one worker's time


def bad_input(message: str) -> MlflowException:
    """An error ``mlflow models serve`` answers with 400 and the message."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def checked_images(model_input: Any) -> np.ndarray:
    """uint8 ``(N, H, W)`` images from a request, or a :func:`bad_input` error saying what is wrong:
    no images, too many, not numbers, not finite, outside 0..255, not square images."""
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.to_numpy()
    elif isinstance(model_input, dict):  # a tensor-spec signature may hand over {"name": array}
        if len(model_input) != 1:
            raise bad_input(f"expected one input of images, got {len(model_input)}: {', '.join(map(str, model_input))}")
        model_input = next(iter(model_input.values()))
    try:
        x = np.asarray(model_input)
    except ValueError as err:  # ragged nested lists
        raise bad_input(f"images must be an array of numbers ({err})") from None
    if x.ndim == 0 or len(x) == 0:
        raise bad_input("no images in the request")
    if len(x) > MAX_IMAGES:
        raise bad_input(f"{len(x)} images in one request; at most {MAX_IMAGES}: send them in several requests")
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise bad_input(f"pixel values must be numbers 0..255, got {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise bad_input("pixel values must be numbers 0..255, got NaN or infinity")
    if x.min() < 0 or x.max() > 255:
        raise bad_input(f"pixel values must be numbers 0..255, got {x.min():g}..{x.max():g}")
    try:
        return as_images(x)
    except ValueError as err:
        raise bad_input(str(err)) from None


def result_frame(prob: np.ndarray) -> pd.DataFrame:
    pred = prob.argmax(axis=1)
    frame = pd.DataFrame({"class": pred, "label": [CLASS_NAMES[i] for i in pred],
                          "probability": prob[np.arange(len(pred)), pred]})
    for i in range(prob.shape[1]):
        frame[f"prob_{i}"] = prob[:, i]
    return frame


def log_pyfunc(run_id: str, model_path: str | Path, example: np.ndarray, registered_name: str,
               params: dict[str, Any] | None = None):
    """Log the model to ``run_id`` as an MLflow logged model (signature, input example, ``params``
    on its page) and register a new version unless ``registered_name`` is empty.

    Returns MLflow's ``ModelInfo``: ``model_id``, ``registered_model_version`` (None when not
    registered).
    """
    from mlflow.models import infer_signature

    example = example.astype(np.float32)
    signature = infer_signature(example, result_frame(np.full((len(example), 10), 0.1, np.float32)))
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's advice on type hints and int columns
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"model": str(model_path)},
            code_paths=[str(PACKAGE_DIR)],
            signature=signature,
            input_example=example,
            registered_model_name=registered_name or None,
            pip_requirements=_requirements(),
            params={k: str(v) for k, v in (params or {}).items()},
        )
    return info


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in REQUIREMENTS]


def log_trained_model(run, module, spec, model_path: str | Path, best_checkpoint: str | Path, files: tuple,
                      example: np.ndarray, registered_name: str, hyper_params: dict[str, Any] | None = None):
    """A train run's record of its model: the model file's checksum and the pipeline id as tags,
    the model file and ``files`` as artifacts, the best checkpoint, a torchinfo summary, and the
    pyfunc model: an MLflow logged model with the spec and ``hyper_params`` as its params,
    registered as a new version of ``registered_name`` ("" = not registered). ``example``: a few
    input images at any size. Returns MLflow's ``ModelInfo`` (``model_id``, the version)."""
    from torchinfo import summary

    from fmnist.data import resize_images
    from fmnist.repo import file_digest

    run.set_tags({"fmnist.output.model": file_digest(model_path), "fmnist.pipeline": run.id})
    for path in (model_path, *files):
        run.log_artifact(path)
    run.log_artifact(best_checkpoint, "checkpoints")
    text = str(summary(module, input_size=(1, 1, spec.input_size, spec.input_size), verbose=0, device="cpu"))
    run.log_text(text + "\n", "model_summary.txt")
    info = log_pyfunc(run.id, model_path, resize_images(example, 28), registered_name,  # callers send 28x28
                      params=spec.to_dict() | (hyper_params or {}))
    if registered_name:
        run.set_tags({"fmnist.registered_model": f"{registered_name}/{info.registered_model_version}"})
    return info
