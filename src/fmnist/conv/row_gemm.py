"""A "same" convolution whose weight gradient is one GEMM per kernel row; forward and input
gradient are oneDNN's."""

from __future__ import annotations

import torch
from torch import nn

from fmnist.conv.autograd import as_param_dtype, as_param_grad, in_autocast_dtype, onednn_input_grad, save_param_layout
from fmnist.conv.im2col import kernel_windows, rows_of


def weight_grad_by_kernel_rows(x: torch.Tensor, grad_t: torch.Tensor, kernel: int, padding: int) -> torch.Tensor:
    """The weight gradient of a stride-1 ``conv2d`` of ``x`` (``(B, C, H, W)``) whose output's
    gradient is ``grad_t`` (:func:`~fmnist.conv.im2col.rows_of`), as ``kernel`` GEMMs, one per
    kernel row ``ky``: ``grad_t @ cols_ky``, where ``cols_ky`` is that row's slice of the im2col
    matrix. Built one row at a time, the matrix never exists whole (a slice is reused from the
    heap, where the whole matrix would come as fresh pages every step). Each product writes its
    own columns of the result, summed in fp32 inside the GEMM, so nothing is added up in bf16."""
    out_channels, channels = grad_t.shape[0], x.shape[1]
    windows = kernel_windows(x, kernel, 1, padding)
    rows = torch.empty(out_channels, kernel, kernel * channels, dtype=grad_t.dtype, device=grad_t.device)
    for ky in range(kernel):
        torch.mm(grad_t, windows[:, :, :, ky].reshape(-1, kernel * channels), out=rows[:, ky])
    return rows.view(out_channels, kernel, kernel, channels).permute(0, 3, 1, 2)


class _RowGemmConv2d(torch.autograd.Function):
    """A stride-1 "same" ``conv2d``: forward and input gradient by oneDNN, the weight gradient by
    :func:`weight_grad_by_kernel_rows`."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        save_param_layout(ctx, weight)
        weight = weight.to(x.dtype)
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        bias = None if bias is None else bias.to(x.dtype)
        return nn.functional.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_input_grad(grad, x, weight, 1, p)
        if ctx.needs_input_grad[1]:
            grad_w = as_param_grad(ctx, weight_grad_by_kernel_rows(x, rows_of(grad), weight.shape[-1], p))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = as_param_dtype(ctx, grad.sum((0, 2, 3)))
        return grad_x, grad_w, grad_b, None


def row_gemm_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (stride 1, odd square kernel, output as large
    as the input) with the weight gradient as per-row GEMMs."""
    return _RowGemmConv2d.apply(in_autocast_dtype(x), weight, bias, padding)
