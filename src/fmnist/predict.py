"""Load a trained model and predict classes for raw 28x28 (or any size) images."""

from __future__ import annotations

import copy
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from fmnist.data import resize_images
from fmnist.files import save_torch
from fmnist.model import MODELS, AlexNetBase
from fmnist.training import autocast, resolve_precision, to_compute_layout, to_float


def save_model(module: AlexNetBase, config: dict, path: str | Path) -> None:
    """One file: the weights and the config needed to rebuild the module."""
    save_torch(path, {"state_dict": module.state_dict(), "config": dict(config)})


def load_model(path: str | Path) -> tuple[AlexNetBase, dict]:
    """Rebuild a saved module (safe loading: tensors and plain values only).

    ``config["precision"]`` is the precision it was trained in (``auto`` by default): pass it to
    :func:`predict_proba` to predict as evaluate did.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = {"precision": "auto", **state["config"]}
    module = MODELS[config["model_name"]](input_size=config["input_size"], dropout=config["dropout"],
                                          head=config["head"], lrn=config["lrn"])
    module.load_state_dict(state["state_dict"])
    return module.eval(), config


def as_images(values: np.ndarray) -> np.ndarray:
    """Accept ``(N, H, W)`` or ``(N, H*W)`` square images with 0..255 pixels; give uint8 ``(N, H, W)``."""
    x = np.asarray(values)
    if x.ndim == 2:
        side = int(round(np.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise ValueError(f"rows of {x.shape[1]} values are not square images")
        x = x.reshape(len(x), side, side)
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"expected images of shape (N, H, W) or (N, H*W), got {x.shape}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8) if x.dtype != np.uint8 else x


_FAST: "weakref.WeakKeyDictionary[AlexNetBase, dict]" = weakref.WeakKeyDictionary()


def inference_module(module: AlexNetBase, device: str = "cpu", precision: str = "fp32") -> torch.nn.Module:
    """``module`` made fast for inference on ``device`` in ``precision`` (``fp32``/``bf16``).

    On the CPU, fp32: frozen TorchScript (``optimize_for_inference`` fuses conv + ReLU and keeps
    weights in oneDNN's layout: about 1.3x the eager speed at 67 px on 2 cores); bf16: a
    channels-last copy, to be run under :func:`fmnist.training.autocast` (about 2x the frozen fp32
    speed where the CPU has AMX). benchmarks/train.py measures both. TorchScript is deprecated in
    favour of ``torch.compile``, whose compile time would cost more than it saves for one test
    set; any failure to freeze falls back to eager mode. Elsewhere: ``module`` itself.
    """
    if device != "cpu" or module.training:
        return module
    cache = _FAST.setdefault(module, {})
    if precision not in cache:
        if precision == "bf16":
            cache[precision] = to_compute_layout(copy.deepcopy(module), precision, device)
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    cache[precision] = torch.jit.optimize_for_inference(torch.jit.script(module))
            except Exception:  # an unscriptable module or a torch without TorchScript
                cache[precision] = module
    return cache[precision]


@torch.inference_mode()
def predict_proba(module: AlexNetBase, images: np.ndarray, input_size: int, batch_size: int = 1024,
                  device: str = "cpu", precision: str = "auto") -> np.ndarray:
    """Class probabilities ``(N, 10)`` for uint8 images of any square size (resized to the model's).

    ``precision``: ``fp32``, ``bf16`` (autocast; the probabilities are computed in fp32 from the
    logits), or ``auto`` (:func:`fmnist.training.resolve_precision`, on this machine).
    """
    precision = resolve_precision(precision, device)
    fast = inference_module(module.to(device).eval(), device, precision)
    out = []
    for start in range(0, len(images), batch_size):
        block = images[start:start + batch_size]
        if block.shape[-1] != input_size:
            block = resize_images(block, input_size)
        x = to_float(torch.from_numpy(np.ascontiguousarray(block))).to(device)
        with autocast(precision, device):
            logits = fast(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 10), dtype=np.float32)
