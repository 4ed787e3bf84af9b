"""Where and how the numbers are computed: seeds, threads, device, precision, autocast, layout.

Every stage resolves its :class:`Compute` once, at its start, and hands it down: the model,
training and prediction code never look at the hardware themselves.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fmnist.errors import ParamsError

PRECISIONS = ("auto", "fp32", "bf16")


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and torch, and on a GPU ask torch for deterministic kernels.

    On a CPU the torch kernels this pipeline runs are deterministic already (runs are
    bit-identical, ``tests/test_reproducibility.py``), and the switch would turn on a debugging
    aid that fills every new tensor with NaN, 9-15% of a training step at 67 px
    (the documentation's performance page); it also imports torch's compiler to set its flag there, 2.3 s of
    start-up in a stage that builds no optimizer (evaluate; an optimizer imports most of it
    anyway). On a GPU, where cuDNN and atomic adds are not deterministic, it is on, without the
    fill: no kernel here reads memory it did not write.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False


def set_threads(threads: int) -> int:
    """Use ``threads`` torch threads (0: one per core); return the number used."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (``auto``, ``fp32`` or ``bf16``) on ``device``.

    ``auto`` is bf16 where the hardware computes it natively: a CPU with AMX or AVX512-BF16
    (where oneDNN's bf16 convolutions train AlexNetSmall about 1.5x as fast as fp32 and predict
    about 2x as fast; benchmarks/train.py measures it), or a GPU that supports bf16. Elsewhere
    bf16 is emulated and slower than fp32, so ``auto`` is fp32 there. An explicit ``bf16`` on a
    GPU without it is a :class:`ParamsError`; on such a CPU it runs, slowly, with a warning.
    """
    if precision not in PRECISIONS:
        raise ParamsError(f"model.precision={precision!r} is not allowed; allowed: one of 'auto', 'fp32', 'bf16'")
    if precision == "fp32":
        return precision
    if device.startswith("cuda"):
        native = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not native:
            raise ParamsError(f"model.precision=bf16: {torch.cuda.get_device_name(device)} does not support "
                              f"bfloat16; allowed here: auto or fp32")
    else:
        native = ((torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
                  and torch.backends.mkldnn.is_available())
        if precision == "bf16" and not native:
            warnings.warn("model.precision=bf16 on a CPU without AMX or AVX512-BF16: emulated, slower than fp32",
                          RuntimeWarning, stacklevel=2)
    if precision == "bf16":
        return precision
    return "bf16" if native else "fp32"


@dataclass(frozen=True)
class Compute:
    """A device and the precision resolved for it (``fp32`` or ``bf16``), decided once per process."""

    device: str
    precision: str

    @classmethod
    def resolve(cls, precision: str, device: str | None = None) -> "Compute":
        """``precision`` as configured (``auto``, ``fp32``, ``bf16``) on ``device`` (default: CUDA if any)."""
        device = device or pick_device()
        return cls(device, resolve_precision(precision, device))

    def autocast(self):
        """Mixed precision for ``bf16`` (weights, gradients and optimizer stay fp32), a no-op for fp32."""
        return torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def layout(self, module: nn.Module) -> nn.Module:
        """``module`` in the memory layout its precision runs fastest in: channels-last for bf16 on a
        CPU (oneDNN's blocked bf16 kernels: a further 1.1-1.2x over NCHW in training), else as is
        (channels-last fp32 trained 10% slower on the CPU). In place, as ``Module.to``."""
        if self.precision == "bf16" and self.device == "cpu":
            return module.to(memory_format=torch.channels_last)
        return module
