"""The pyfunc model as code (MLflow's models-from-code): ``log_pyfunc`` logs this file, and
loading the model runs it, so loading unpickles no Python object. Imports only what predicting
needs (``fmnist.pyfunc`` -> predict, model, compute, batches, data), never skorch or training."""

import mlflow

from fmnist.pyfunc import FashionMnistClassifier

mlflow.models.set_model(FashionMnistClassifier())
