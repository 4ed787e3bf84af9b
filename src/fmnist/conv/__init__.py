"""How the model's convolutions and max-pools are computed, apart from what they compute.

``fmnist.model`` declares its layers with :class:`Conv2d` and :class:`MaxPool2d` (PyTorch's,
state dict included); :func:`plan_model` picks each layer's implementation once, from the rules
table in :mod:`fmnist.conv.plan`, and stores it on the layers. The implementations, one module
each: :mod:`~fmnist.conv.im2col` (the convolution as GEMMs), :mod:`~fmnist.conv.row_gemm` (the
weight gradient as one GEMM per kernel row), :mod:`~fmnist.conv.winograd` and
:mod:`~fmnist.conv.fourier` (pointwise products in a transform domain,
:mod:`~fmnist.conv.transformed`); :mod:`~fmnist.conv.layout` holds the memory layouts and the
layout-aware pool.
"""

from fmnist.conv.layers import CONV_IMPLEMENTATIONS, POOL_IMPLEMENTATIONS, Conv2d, LayerPlan, MaxPool2d, map_sides
from fmnist.conv.plan import RULES, SETTINGS, Plan, make_plan, plan_model, plan_of, set_plan

__all__ = ["CONV_IMPLEMENTATIONS", "POOL_IMPLEMENTATIONS", "RULES", "SETTINGS", "Conv2d", "LayerPlan", "MaxPool2d",
           "Plan", "make_plan", "map_sides", "plan_model", "plan_of", "set_plan"]
