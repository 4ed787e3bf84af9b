"""AlexNet for 1-channel images, as in the seed notebook, with its output layer fixed.

``AlexNet`` (227 px input, 4096-wide head) and ``AlexNetSmall`` (67 px, 128-wide head) share the
five-convolution trunk; the width of the first linear layer follows from the input size. The seed
put ReLU and dropout on the 10 output logits too (``head="notebook"``): logits can then never be
negative and dropout zeroes whole class scores, which cripples training. The default
``head="linear"`` ends in a plain linear layer.

The convolutions and max-pools are PyTorch's layers (the same parameters and state dict);
how each is computed is planned apart from the model, in :mod:`fmnist.conv`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fmnist.compute import Compute
from fmnist.conv import Conv2d, MaxPool2d, Plan, make_plan, map_sides

HIDDEN = {"AlexNet": 4096, "AlexNetSmall": 128}
N_CLASSES = 10


@dataclass(frozen=True)
class ModelSpec:
    """Everything that rebuilds a trained module, saved beside its weights in ``model.pt`` (as
    nanoGPT keeps ``model_args`` in its checkpoint) and read back by :meth:`from_dict`.

    ``precision`` is the setting as configured (``auto``, ``fp32``, ``bf16``): each machine that
    runs the model resolves it for its own hardware (``fmnist.compute.Compute.resolve``); ``conv``
    (``auto``, ``pytorch``) is the setting its convolution plan is made from on that machine.
    """

    model_name: str  # a key of MODELS
    input_size: int
    dropout: float
    head: str = "linear"
    lrn: bool = False
    precision: str = "auto"
    conv: str = "auto"

    @classmethod
    def of(cls, model: Any, input_size: int, dropout: float) -> "ModelSpec":
        """The spec of the params' ``model`` section at ``input_size`` px with ``dropout``."""
        return cls(model.name, int(input_size), float(dropout), model.head, model.lrn, model.precision, model.conv)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def module_class(self) -> type["AlexNetBase"]:
        return MODELS[self.model_name]

    def module_kwargs(self) -> dict:
        return {"input_size": self.input_size, "dropout": self.dropout, "head": self.head, "lrn": self.lrn}

    def build(self) -> "AlexNetBase":
        return self.module_class(**self.module_kwargs())

    def conv_plan(self, compute: Compute) -> Plan:
        """The convolution plan of the module this spec builds, under ``compute`` (from the layers'
        shapes alone: the module is built on the meta device, without weights)."""
        with torch.device("meta"):
            module = self.build()
        return make_plan(module, compute, self.input_size, self.conv)


class ConvReLU(nn.Module):
    """Conv2d + ReLU, He (Kaiming normal) init, zero bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.relu = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class LinearReLU(nn.Module):
    """Linear + ReLU + dropout, Xavier (Glorot normal) init, zero bias."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.5):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_normal_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.relu(self.linear(x)))


class AlexNetBase(nn.Module):
    """The five-convolution AlexNet trunk with a three-layer classifier.

    Parameters
    ----------
    input_size : int
        Side of the square 1-channel input; sets the width of the first linear layer.
    hidden : int
        Width of the two hidden linear layers.
    dropout : float
        Dropout after each hidden linear layer.
    head : "linear" or "notebook"
        "linear" ends in a plain ``nn.Linear``; "notebook" reproduces the notebook's ReLU + dropout
        on the logits.
    lrn : bool
        Local response normalisation after conv1 and conv2, as in the paper.
    """

    def __init__(self, input_size: int, hidden: int, dropout: float = 0.5, head: str = "linear",
                 lrn: bool = False):
        super().__init__()
        self.input_size = input_size
        # ReLU and max-pooling commute (values and gradients, bit for bit): without LRN between them,
        # conv1's and conv2's ReLU run after the pool, on 4-5x fewer values
        self.relu_after_pool = not lrn
        self.c1 = ConvReLU(1, 96, kernel_size=11, stride=4)
        self.n1 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0) if lrn else nn.Identity()
        self.p1 = MaxPool2d(3, 2)
        self.c2 = ConvReLU(96, 256, kernel_size=5, padding=2)
        self.n2 = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0) if lrn else nn.Identity()
        self.p2 = MaxPool2d(3, 2)
        self.c3 = ConvReLU(256, 384, kernel_size=3, padding=1)
        self.c4 = ConvReLU(384, 384, kernel_size=3, padding=1)
        self.c5 = ConvReLU(384, 256, kernel_size=3, padding=1)
        self.p3 = MaxPool2d(3, 2)
        self.flatten = nn.Flatten()
        side = self.feature_side(input_size)
        if side < 1:
            raise ValueError(f"input_size={input_size} is too small; allowed: {min_input_size()} or more")
        self.l1 = LinearReLU(256 * side * side, hidden, dropout=dropout)
        self.l2 = LinearReLU(hidden, hidden, dropout=dropout)
        if head == "notebook":
            self.l3 = LinearReLU(hidden, N_CLASSES, dropout=dropout)
        elif head == "linear":
            self.l3 = nn.Linear(hidden, N_CLASSES)
            nn.init.xavier_normal_(self.l3.weight)
            nn.init.zeros_(self.l3.bias)
        else:
            raise ValueError(f"head={head!r}; allowed: 'linear', 'notebook'")

    def feature_side(self, input_size: int) -> int:
        """Side of the trunk's last feature map for a square input of ``input_size`` px, from the
        layers' own kernels, strides and paddings."""
        *_, (_, _, side) = map_sides(self, input_size)
        return side

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, S, S), S = 67 for AlexNetSmall
        if self.relu_after_pool:
            x = self.c1.relu(self.p1(self.c1.conv(x)))  # (B, 96, 7, 7)
            x = self.c2.relu(self.p2(self.c2.conv(x)))  # (B, 256, 3, 3)
        else:
            x = self.p1(self.n1(self.c1(x)))
            x = self.p2(self.n2(self.c2(x)))
        x = self.p3(self.c5(self.c4(self.c3(x))))  # (B, 256, 1, 1)
        x = self.flatten(x).contiguous()  # (B, 256), row-major whatever layout the map had
        return self.l3(self.l2(self.l1(x)))  # (B, 10) logits


class AlexNet(AlexNetBase):
    """The full-size AlexNet for 227 px input (9216 -> 4096 -> 4096 -> 10)."""

    def __init__(self, input_size: int = 227, dropout: float = 0.5, head: str = "linear",
                 lrn: bool = False):
        super().__init__(input_size, HIDDEN["AlexNet"], dropout, head, lrn)


class AlexNetSmall(AlexNetBase):
    """The seed's small AlexNet for 67 px input (256 -> 128 -> 128 -> 10)."""

    def __init__(self, input_size: int = 67, dropout: float = 0.5, head: str = "linear",
                 lrn: bool = False):
        super().__init__(input_size, HIDDEN["AlexNetSmall"], dropout, head, lrn)


MODELS: dict[str, type[AlexNetBase]] = {"AlexNet": AlexNet, "AlexNetSmall": AlexNetSmall}


@functools.cache
def min_input_size() -> int:
    """The smallest input side for which the trunk still leaves a 1x1 feature map (67)."""
    with torch.device("meta"):
        probe = AlexNetSmall()
    return next(size for size in itertools.count(1) if probe.feature_side(size) >= 1)


def feature_size(input_size: int) -> int:
    """Side of the trunk's last feature map for a square input of ``input_size`` px."""
    with torch.device("meta"):
        return AlexNetSmall().feature_side(input_size)
