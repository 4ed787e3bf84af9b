"""Load a trained model and predict classes for raw 28x28 (or any size) images.

Depends on the model, the compute settings and the data helpers only: serving a model imports
neither skorch nor the training code.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from fmnist.batches import to_float
from fmnist.compute import Compute
from fmnist.data import resize_images
from fmnist.files import save_torch
from fmnist.model import AlexNetBase, ModelSpec, paths_taken


def save_model(module: AlexNetBase, spec: ModelSpec, path: str | Path) -> None:
    """One file: the weights and the spec that rebuilds the module."""
    save_torch(path, {"state_dict": module.state_dict(), "config": spec.to_dict()})


def load_model(path: str | Path) -> tuple[AlexNetBase, ModelSpec]:
    """Rebuild a saved module (safe loading: tensors and plain values only), in eval mode.

    ``spec.precision`` is the precision setting it was trained with: resolve it on this machine
    (``Compute.resolve(spec.precision)``) to predict as evaluate did.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    spec = ModelSpec.from_dict(state["config"])
    module = spec.build()
    module.load_state_dict(state["state_dict"])
    return module.eval(), spec


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


def inference_module(module: AlexNetBase, compute: Compute, input_size: int) -> torch.nn.Module:
    """``module`` made fast for inference on ``input_size`` px images as ``compute`` says.

    On the CPU, fp32: ``module`` itself where a layer takes a fast path without gradients
    (AlexNetSmall: the Winograd and Fourier transforms, :meth:`fmnist.model.ConvReLU.path`; 1.4x
    frozen TorchScript's speed at batch 1000, 1.9x at 256), else frozen TorchScript
    (``optimize_for_inference`` fuses conv + ReLU and keeps weights in oneDNN's layout: about 1.3x
    the plain eager speed on 2 cores); bf16: a channels-last copy, to be run under
    ``compute.autocast()`` (about 2x the frozen fp32 speed where the CPU has AMX).
    benchmarks/train.py measures the choice. TorchScript is deprecated in favour of
    ``torch.compile``, whose compile time would cost more than it saves for one test set; any
    failure to freeze falls back to eager mode. Elsewhere: ``module`` itself.
    """
    if compute.device != "cpu" or module.training:
        return module
    cache = _FAST.setdefault(module, {})
    key = (compute.precision, input_size)
    if key not in cache:
        if compute.precision == "bf16":
            cache[key] = compute.layout(copy.deepcopy(module))
        elif paths_taken(module, input_size, training=False):
            cache[key] = module
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    cache[key] = torch.jit.optimize_for_inference(torch.jit.script(module))
            except Exception:  # an unscriptable module or a torch without TorchScript
                cache[key] = module
    return cache[key]


@torch.inference_mode()
def predict_proba(module: AlexNetBase, images: np.ndarray, input_size: int, compute: Compute,
                  batch_size: int = 1024) -> np.ndarray:
    """Class probabilities ``(N, 10)`` for uint8 images of any square size (resized to the model's).

    ``compute`` says where and in which precision (bf16: autocast; the probabilities are computed
    in fp32 from the logits).
    """
    fast = inference_module(module.to(compute.device).eval(), compute, input_size)
    out = []
    for start in range(0, len(images), batch_size):
        block = images[start:start + batch_size]
        if block.shape[-1] != input_size:
            block = resize_images(block, input_size)
        x = to_float(torch.from_numpy(np.ascontiguousarray(block))).to(compute.device)
        with compute.autocast():
            logits = fast(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 10), dtype=np.float32)
