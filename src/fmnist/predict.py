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
from fmnist.conv import plan_model, plan_of
from fmnist.data import resize_images
from fmnist.files import save_torch
from fmnist.model import AlexNetBase, ModelSpec


def save_model(module: AlexNetBase, spec: ModelSpec, path: str | Path) -> None:
    """One file: the weights, the spec that rebuilds the module and the convolution plan it was
    trained with (a record: each machine that loads the file plans for itself)."""
    plan = plan_of(module)
    save_torch(path, {"state_dict": module.state_dict(), "config": spec.to_dict(),
                      "plan": plan.to_dict() if plan else None})


def load_model(path: str | Path) -> tuple[AlexNetBase, ModelSpec]:
    """Rebuild a saved module (safe loading: tensors and plain values only), in eval mode.

    ``spec.precision`` is the precision setting it was trained with: resolve it on this machine
    (``Compute.resolve(spec.precision)``) to predict as evaluate did. The module is planned for that
    compute with ``spec.conv``; :func:`predict_proba` plans it again for any other.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    spec = ModelSpec.from_dict(state["config"])
    module = spec.build()
    module.load_state_dict(state["state_dict"])
    plan_model(module, Compute.resolve(spec.precision), spec.input_size, spec.conv)
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
    """``module`` made fast for inference on ``input_size`` px images as ``compute`` says, planned
    for it (:func:`fmnist.conv.plan_model`, keeping the module's ``model.conv`` setting).

    On the CPU, fp32: ``module`` itself where its plan computes a convolution by one of
    :mod:`fmnist.conv`'s implementations without gradients (AlexNetSmall's transforms), else
    frozen TorchScript (``optimize_for_inference`` fuses conv + ReLU and keeps weights in oneDNN's
    layout); bf16: a channels-last copy, to be run under ``compute.autocast()``. The figures: the
    documentation's performance page. TorchScript is deprecated in favour of ``torch.compile``,
    whose compile time would cost more than it saves for one test set; any failure to freeze falls
    back to eager mode. Elsewhere: ``module`` itself.
    """
    if compute.device != "cpu" or module.training:
        return module
    cache = _FAST.setdefault(module, {})
    key = (compute.precision, input_size)
    if key not in cache:
        if compute.precision == "bf16":
            fast = compute.layout(copy.deepcopy(module))
            plan_model(fast, compute, input_size)
            cache[key] = fast
        elif set(plan_model(module, compute, input_size).convolutions("infer").values()) != {"pytorch"}:
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
