"""What the implementations' autograd functions share: the parameters come in their own dtype and
layout and their gradients go back the same way, and oneDNN computes an input gradient where no
implementation of ours does better."""

from __future__ import annotations

import torch


def in_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the autocast dtype when autocast is on, as ``F.conv2d`` would compute. The
    implementations take the parameters in their own dtype and cast them themselves."""
    device = x.device.type
    return x.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else x


def save_param_layout(ctx, weight: torch.Tensor) -> None:
    """Remember ``weight``'s dtype and strides for :func:`as_param_grad`."""
    ctx.param_layout = (weight.dtype, weight.stride())


def as_param_grad(ctx, grad: torch.Tensor) -> torch.Tensor:
    """A weight's gradient, computed in another dtype or layout, as the parameter's own (its dtype
    and strides, saved by :func:`save_param_layout`), in one copy. AccumulateGrad then keeps it as
    it is; returned as it was, it would be cast by autocast's backward and copied again into the
    parameter's layout."""
    dtype, stride = ctx.param_layout
    return torch.empty_strided(grad.shape, stride, dtype=dtype, device=grad.device).copy_(grad)


def as_param_dtype(ctx, grad: torch.Tensor) -> torch.Tensor:
    """A bias gradient in the parameter's dtype."""
    return grad.to(ctx.param_layout[0])


def onednn_input_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int,
                      padding: int) -> torch.Tensor:
    """The gradient of ``conv2d(x, weight, stride=stride, padding=padding)``'s input from its
    output's, by oneDNN's backward-data kernel (PyTorch's own)."""
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [stride, stride], [padding, padding], [1, 1], False, [0, 0], 1,
        [True, False, False])[0]
