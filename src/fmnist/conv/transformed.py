"""A stride-1 "same" convolution of a small map as a pointwise product in a transform domain (the
transforms: :mod:`fmnist.conv.winograd`, :mod:`fmnist.conv.fourier`), one GEMM per point."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fmnist.conv.autograd import as_param_dtype, as_param_grad, in_autocast_dtype, save_param_layout
from fmnist.conv.layout import batch_last, batch_last_strides, from_batch_last


@dataclass(frozen=True)
class ConvTransform:
    """``y = conv(x, w)`` of a ``side`` px map by a ``kernel`` px kernel as ``y = T_out^T (Ŵ ⊙ X̂)``
    with ``X̂ = T_in x`` and ``Ŵ = T_w w`` (``x``, ``y``, ``w`` flattened per channel pair to
    ``side**2`` and ``kernel**2`` values). ``parts`` is 1 where the points are real (Winograd) and
    2 where they are complex (Fourier): rows of ``T_in``, ``T_w`` and ``T_out`` are then
    ``(point, real/imaginary)``. The gradients are the same maps transposed."""

    t_in: torch.Tensor  # (parts * points, side**2)
    t_w: torch.Tensor  # (parts * points, kernel**2)
    t_out: torch.Tensor  # (parts * points, side**2)
    parts: int

    @property
    def points(self) -> int:
        return self.t_in.shape[0] // self.parts


@functools.cache
def cast_transform(build: Callable[[int, int], ConvTransform], side: int, kernel: int, dtype: torch.dtype,
                   device: torch.device) -> ConvTransform:
    """``build(side, kernel)`` (float64) in ``dtype`` on ``device``; built once."""
    exact = build(side, kernel)
    return ConvTransform(*(t.to(dtype=dtype, device=device) for t in (exact.t_in, exact.t_w, exact.t_out)),
                         exact.parts)


class _TransformedConv2d(torch.autograd.Function):
    """Per point one GEMM over the channels, ``Ŷ_p = Ŵ_p X̂_p``, all points in one batched GEMM; a
    complex point's product is a real GEMM of twice the size, ``[[Ŵr, -Ŵi], [Ŵi, Ŵr]] @ [X̂r; X̂i]``.
    The gradients are the same products transposed: ``dX̂_p = Ŵ_p^T dŶ_p``, ``dŴ_p = dŶ_p X̂_p^T``
    (summed over the batch inside the GEMM). The maps are read and written batch last
    (:func:`~fmnist.conv.layout.batch_last`): the transforms are GEMMs on ``(side², C·B)``
    matrices, and between two such layers neither the maps nor their gradients are copied."""

    @staticmethod
    def forward(ctx, x, weight, bias, transform: ConvTransform):
        batch, channels, side, _ = x.shape
        out_channels, _, kernel, _ = weight.shape
        tf = transform  # already in x.dtype on x.device (cast_transform)
        p, m = tf.points, tf.parts
        x_hat = torch.mm(tf.t_in, batch_last(x)).view(p, m * channels, batch)
        w_hat = torch.mm(tf.t_w, weight.to(x.dtype).reshape(out_channels * channels, -1).t())
        w_hat = real_form(w_hat.view(p, m, out_channels, channels))
        y_hat = torch.bmm(w_hat, x_hat)  # (p, m * O, B)
        # written into a tensor of its own, laid out batch last, not returned as a view: ReLU works in place
        out = torch.empty_strided((batch, out_channels, side, side), batch_last_strides(batch, out_channels, side),
                                  dtype=x.dtype, device=x.device)
        y = torch.mm(tf.t_out.t(), y_hat.view(p * m, -1), out=batch_last(out))  # (side², O * B)
        if bias is not None:
            y.view(side * side, out_channels, batch).add_(bias.to(x.dtype)[:, None])
        ctx.save_for_backward(x_hat, w_hat)
        ctx.geometry = (tf, batch, side, kernel, bias is not None)
        save_param_layout(ctx, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        x_hat, w_hat = ctx.saved_tensors
        tf, batch, side, kernel, has_bias = ctx.geometry
        p, m = tf.points, tf.parts
        out_channels, channels = w_hat.shape[1] // m, w_hat.shape[2] // m
        g = batch_last(grad)  # (side², O * B)
        g_hat = torch.mm(tf.t_out, g).view(p, m * out_channels, batch)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            dx_hat = torch.bmm(w_hat.transpose(1, 2), g_hat)  # (p, m * C, B)
            grad_x = from_batch_last(torch.mm(tf.t_in.t(), dx_hat.view(p * m, -1)), batch, side, side)
        if ctx.needs_input_grad[1]:
            dw_hat = real_form_grad(torch.bmm(g_hat, x_hat.transpose(1, 2)), m)  # (p, m, O, C)
            grad_w = torch.mm(dw_hat.view(p * m, -1).t(), tf.t_w).view(out_channels, channels, kernel, kernel)
            grad_w = as_param_grad(ctx, grad_w)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = as_param_dtype(ctx, g.view(side * side, out_channels, batch).sum((0, 2)))
        return grad_x, grad_w, grad_b, None


def real_form(w_hat: torch.Tensor) -> torch.Tensor:
    """``w_hat`` (``(points, parts, O, C)``) as the real matrices that multiply: itself for real
    points, ``[[Wr, -Wi], [Wi, Wr]]`` (``(points, 2*O, 2*C)``) for complex ones, written once into
    its four quarters."""
    points, parts, o, c = w_hat.shape
    if parts == 1:
        return w_hat[:, 0]
    re, im = w_hat[:, 0], w_hat[:, 1]
    block = torch.empty(points, 2, o, 2, c, dtype=w_hat.dtype, device=w_hat.device)
    block[:, 0, :, 0] = re
    torch.neg(im, out=block[:, 0, :, 1])
    block[:, 1, :, 0] = im
    block[:, 1, :, 1] = re
    return block.view(points, 2 * o, 2 * c)


def real_form_grad(grad: torch.Tensor, parts: int) -> torch.Tensor:
    """The gradient of :func:`real_form`'s input from its output's, ``(points, parts, O, C)``."""
    if parts == 1:
        return grad.unsqueeze(1)
    points, o, c = grad.shape[0], grad.shape[1] // 2, grad.shape[2] // 2
    quarters = grad.view(points, 2, o, 2, c)
    out = torch.empty(points, 2, o, c, dtype=grad.dtype, device=grad.device)
    torch.add(quarters[:, 0, :, 0], quarters[:, 1, :, 1], out=out[:, 0])
    torch.sub(quarters[:, 1, :, 0], quarters[:, 0, :, 1], out=out[:, 1])
    return out


def transformed_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       build: Callable[[int, int], ConvTransform]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=kernel // 2)`` (stride 1, odd square kernel, square map)
    as a pointwise product in the domain of ``build(side, kernel)`` (``winograd_transform``,
    ``fourier_transform``); the output is laid out batch last."""
    x = in_autocast_dtype(x)
    transform = cast_transform(build, x.shape[-1], weight.shape[-1], x.dtype, x.device)
    return _TransformedConv2d.apply(x, weight, bias, transform)
