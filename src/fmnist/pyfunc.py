"""The trained model as an MLflow pyfunc: raw images in, class names and probabilities out.

Callers send Fashion-MNIST-style images, ``(N, 28, 28)`` or ``(N, 784)``, pixel values 0..255;
the model resizes them to its own input size, so callers need not know it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from fmnist.data import CLASS_NAMES
from fmnist.predict import as_images, load_model, predict_proba

PACKAGE_DIR = Path(__file__).resolve().parent


class FashionMnistClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.module, self.config = load_model(context.artifacts["model"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            model_input = model_input.to_numpy()
        elif isinstance(model_input, dict):  # a tensor-spec signature may hand over {"name": array}
            model_input = next(iter(model_input.values()))
        prob = predict_proba(self.module, as_images(model_input), self.config["input_size"],
                             precision=self.config["precision"])
        return result_frame(prob)


def result_frame(prob: np.ndarray) -> pd.DataFrame:
    pred = prob.argmax(axis=1)
    frame = pd.DataFrame({"class": pred, "label": [CLASS_NAMES[i] for i in pred],
                          "probability": prob[np.arange(len(pred)), pred]})
    for i in range(prob.shape[1]):
        frame[f"prob_{i}"] = prob[:, i]
    return frame


def log_pyfunc(run_id: str, model_path: str | Path, example: np.ndarray, registered_name: str) -> str | None:
    """Log the model to ``run_id`` (signature, input example) and register a new version.

    Returns the registered version, or None when ``registered_name`` is empty.
    """
    from mlflow.models import infer_signature

    wrapper = FashionMnistClassifier()
    example = example.astype(np.float32)
    signature = infer_signature(example, result_frame(np.full((len(example), 10), 0.1, np.float32)))
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's advice on type hints, cloudpickle and int columns
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=wrapper,
            artifacts={"model": str(model_path)},
            code_paths=[str(PACKAGE_DIR)],
            signature=signature,
            input_example=example,
            registered_model_name=registered_name or None,
            pip_requirements=_requirements(),
        )
    return str(info.registered_model_version) if registered_name else None


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "numpy", "pandas", "mlflow", "scikit-learn")]
