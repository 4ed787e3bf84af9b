"""A convolution as one matrix product of its im2col matrix, and its gradients as two more."""

from __future__ import annotations

import threading

import torch
from torch import nn

from fmnist.conv.autograd import as_param_dtype, as_param_grad, in_autocast_dtype, onednn_input_grad, save_param_layout
from fmnist.conv.geometry import out_side

ROW_MAJOR_MIN_COLS = 1024  # im2col columns from which the weight gradient copies grad^T row-major
IM2COL_INPUT_GRAD_MAX_MAP = 3  # px: "same" convolutions on maps up to this side take the input gradient as a GEMM too
BORDERED_BUFFERS = 16  # zero-bordered inputs kept per thread; a training run uses 3-6

_BORDERED = threading.local()


def zero_bordered(x: torch.Tensor, padding: int) -> torch.Tensor:
    """``x`` (``(B, C, H, W)``) inside a border of ``padding`` zeros, channels-last, like
    ``F.pad``, but in a buffer kept per thread and shape: only the inside is written, the border
    stays zero from the buffer's first use, which saves ``F.pad``'s zero fill of the whole tensor.
    The result is overwritten by the next call for the same shape in the same thread; where
    autograd would record the copy, it is ``F.pad``'s own tensor."""
    if x.requires_grad and torch.is_grad_enabled():
        return nn.functional.pad(x, (padding,) * 4).contiguous(memory_format=torch.channels_last)
    buffers = _BORDERED.__dict__.setdefault("buffers", {})
    batch, channels, height, width = x.shape
    key = (x.shape, padding, x.dtype, x.device)
    if key not in buffers:
        if len(buffers) >= BORDERED_BUFFERS:
            buffers.clear()
        buffers[key] = torch.empty(batch, channels, height + 2 * padding, width + 2 * padding, dtype=x.dtype,
                                   device=x.device, memory_format=torch.channels_last).zero_()
    bordered = buffers[key]
    bordered[:, :, padding:padding + height, padding:padding + width].copy_(x)
    return bordered


def kernel_windows(x: torch.Tensor, kernel: int, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """The convolution windows of ``x`` (``(B, C, H, W)``) as one strided view, no copy of their
    own: ``(B, out_h, out_w, kernel, kernel * C)``, indexed by output position, then kernel row,
    then ``(kx, c)``. In channels-last memory the ``kernel * C`` values of one kernel row lie next
    to each other, so a copy of the view runs in blocks of that length rather than gathering runs
    of ``C`` as ``unfold`` does. With ``padding`` the view is of :func:`zero_bordered`'s buffer:
    copy what you need of it before the next call."""
    batch, channels, height, width = x.shape
    padded = zero_bordered(x, padding) if padding else x.contiguous(memory_format=torch.channels_last)
    out_h, out_w = out_side(height, kernel, stride, padding), out_side(width, kernel, stride, padding)
    s_b, _, s_h, s_w = padded.stride()
    return padded.as_strided((batch, out_h, out_w, kernel, kernel * channels),
                             (s_b, stride * s_h, stride * s_w, s_h, 1), padded.storage_offset())


def im2col(x: torch.Tensor, kernel: int, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """The im2col matrix of ``x`` (``(B, C, H, W)``): one row per output position ``(b, oy, ox)``,
    one column per ``(ky, kx, c)``, so that a convolution is ``im2col(x) @ weight_rows``; always a
    copy of :func:`kernel_windows` (a view could be of the buffer the next call overwrites)."""
    windows = kernel_windows(x, kernel, stride, padding)
    cols = torch.empty(windows.shape[:3].numel(), kernel * windows.shape[-1], dtype=x.dtype, device=x.device)
    cols.view(windows.shape).copy_(windows)
    return cols


def rows_of(grad: torch.Tensor) -> torch.Tensor:
    """``grad`` (``(B, O, H, W)``) as ``grad^T``, ``(O, B*H*W)``, row-major: the operand of a weight
    gradient's GEMM (a transposed bf16 operand halves the GEMM's speed on AMX). A channels-last
    ``grad`` is copied twice, to NCHW and then to ``(O, B, H*W)``: PyTorch copies the one 2-D
    transpose this is in a single thread, more slowly than the two copies."""
    return grad.contiguous().transpose(0, 1).reshape(grad.shape[1], -1)


class _Im2colConv2d(torch.autograd.Function):
    """``F.conv2d`` (square kernel and stride) as GEMMs on the im2col matrix ``cols``:

    * forward: ``cols @ W^T``, written straight into a channels-last output, ``W`` laid out as
      ``(O, ky, kx, C)`` in one copy;
    * weight gradient: ``grad^T @ cols``; ``grad^T`` is copied row-major first where ``cols`` has
      ``ROW_MAJOR_MIN_COLS`` columns or more (a large transposed bf16 operand halves the GEMM's
      speed), not for a one-channel conv1's few columns (there the copy costs more than it saves);
    * input gradient: for a "same" convolution on a map of ``IM2COL_INPUT_GRAD_MAX_MAP`` px or less
      a convolution of the output's gradient by the flipped kernel, ``im2col(grad) @ W_flipped``;
      elsewhere oneDNN's (an im2col matrix of a larger map costs more than it saves).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int):
        out_channels, channels, k, _ = weight.shape
        cols = im2col(x, k, stride, padding)
        w_rows = torch.empty(out_channels, k, k, channels, dtype=x.dtype, device=x.device)
        w_rows = w_rows.copy_(weight.permute(0, 2, 3, 1)).view(out_channels, -1)
        out = torch.empty(x.shape[0], out_channels, out_side(x.shape[2], k, stride, padding),
                          out_side(x.shape[3], k, stride, padding), dtype=cols.dtype, device=x.device,
                          memory_format=torch.channels_last)  # a tensor of its own, not a view: ReLU works in place
        rows = out.permute(0, 2, 3, 1).view(-1, out_channels)
        if bias is None:
            torch.mm(cols, w_rows.t(), out=rows)
        else:
            torch.addmm(bias.to(x.dtype), cols, w_rows.t(), out=rows)
        ctx.save_for_backward(cols, x if ctx.needs_input_grad[0] else None, w_rows)
        ctx.geometry = (k, stride, padding)
        save_param_layout(ctx, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        cols, x, w_rows = ctx.saved_tensors
        k, s, p = ctx.geometry
        out_channels = w_rows.shape[0]
        channels = w_rows.shape[1] // (k * k)
        w_okkc = w_rows.view(out_channels, k, k, channels)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if s == 1 and 2 * p == k - 1 and max(grad.shape[-2:]) <= IM2COL_INPUT_GRAD_MAX_MAP:
                # the kernel's k*k taps in reverse order, (taps, O, C): one copy, half the time of a flip and a reshape
                reverse = torch.arange(k * k - 1, -1, -1, device=w_rows.device)
                w_flipped = w_rows.view(out_channels, k * k, channels).transpose(0, 1).index_select(0, reverse)
                b, _, h, w = x.shape  # rows (b, y, x), columns c: the channels-last gradient
                grad_x = (im2col(grad, k, 1, p) @ w_flipped.view(-1, channels)).view(b, h, w, channels)
                grad_x = grad_x.permute(0, 3, 1, 2)
            else:
                grad_x = onednn_input_grad(grad, x, w_okkc.permute(0, 3, 1, 2), s, p)
        grad_t = rows_of(grad) if cols.shape[1] >= ROW_MAJOR_MIN_COLS else (
            grad.permute(1, 0, 2, 3).reshape(out_channels, -1))  # (O, B*Ho*Wo), a view if grad is channels-last
        if ctx.needs_input_grad[1]:
            grad_w = as_param_grad(ctx, (grad_t @ cols).view(out_channels, k, k, channels).permute(0, 3, 1, 2))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = as_param_dtype(ctx, grad_t.sum(1))
        return grad_x, grad_w, grad_b, None, None


def im2col_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
                  padding: int = 0) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (square kernel and stride, groups and
    dilation 1) as im2col GEMMs; the output is channels-last."""
    return _Im2colConv2d.apply(in_autocast_dtype(x), weight, bias, stride, padding)
