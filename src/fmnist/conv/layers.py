"""``nn.Conv2d`` and ``nn.MaxPool2d`` that compute by the implementation their plan names.

A layer's plan (:class:`LayerPlan`, set by :func:`fmnist.conv.plan.plan_model`) names one
implementation for passes with gradients (training) and one for passes without (validation,
prediction); ``forward`` only looks it up and calls it. Unplanned, a layer computes as PyTorch's
own. The parameters, and so the state dict, are PyTorch's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fmnist.conv.fourier import fourier_transform
from fmnist.conv.geometry import out_side
from fmnist.conv.im2col import im2col_conv2d
from fmnist.conv.layout import layout_aware_max_pool, max_pool, one_channel_as_channels_last
from fmnist.conv.row_gemm import row_gemm_conv2d
from fmnist.conv.transformed import transformed_conv2d
from fmnist.conv.winograd import winograd_transform


@dataclass(frozen=True)
class LayerPlan:
    """The implementation a layer (``kind``: ``conv`` or ``pool``) computes by with gradients
    (``train``) and without (``infer``)."""

    kind: str
    train: str = "pytorch"
    infer: str = "pytorch"


CONV_IMPLEMENTATIONS = {
    "pytorch": lambda conv, x: conv._conv_forward(x, conv.weight, conv.bias),
    # oneDNN's convolution of a one-channel input, handed it with channels-last strides so that it
    # writes its output channels-last, the layout the pool after it reads without a copy
    "onednn-channels-last": lambda conv, x: conv._conv_forward(one_channel_as_channels_last(x), conv.weight,
                                                               conv.bias),
    "im2col-gemm": lambda conv, x: im2col_conv2d(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0]),
    "row-gemm": lambda conv, x: row_gemm_conv2d(x, conv.weight, conv.bias, conv.padding[0]),
    "winograd": lambda conv, x: transformed_conv2d(x, conv.weight, conv.bias, winograd_transform),
    "fourier": lambda conv, x: transformed_conv2d(x, conv.weight, conv.bias, fourier_transform),
}
POOL_IMPLEMENTATIONS = {"pytorch": max_pool, "layout-aware": layout_aware_max_pool}


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` computed by :data:`CONV_IMPLEMENTATIONS` ``[plan]``."""

    plan = LayerPlan("conv")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # alone in its condition, so that TorchScript skips the rest
            return self._conv_forward(x, self.weight, self.bias)
        return self._planned(x)

    @torch.jit.unused
    def _planned(self, x: torch.Tensor) -> torch.Tensor:
        return CONV_IMPLEMENTATIONS[self.plan.train if torch.is_grad_enabled() else self.plan.infer](self, x)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` computed by :data:`POOL_IMPLEMENTATIONS` ``[plan]``."""

    plan = LayerPlan("pool")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return nn.functional.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)
        return self._planned(x)

    @torch.jit.unused
    def _planned(self, x: torch.Tensor) -> torch.Tensor:
        return POOL_IMPLEMENTATIONS[self.plan.train if torch.is_grad_enabled() else self.plan.infer](self, x)


def _single(value: int | tuple[int, ...]) -> int:
    return value if isinstance(value, int) else value[0]


def map_sides(module: nn.Module, input_size: int) -> Iterator[tuple[str, nn.Module, int]]:
    """``(name, layer, side of its input map)`` for each convolution and max-pool of ``module`` on
    ``input_size`` px images, in the order they are registered, which must be the order they run
    (square kernels, strides and paddings); the last item is ``("", module, side of the output)``."""
    side = input_size
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            yield name, layer, side
            side = out_side(side, _single(layer.kernel_size), _single(layer.stride), _single(layer.padding))
    yield "", module, side
