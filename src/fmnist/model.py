"""AlexNet for 1-channel images, as in the seed notebook, with its output layer fixed.

``AlexNet`` (227 px input, 4096-wide head) and ``AlexNetSmall`` (67 px, 128-wide head) share the
five-convolution trunk; the width of the first linear layer follows from the input size. The seed
put ReLU and dropout on the 10 output logits too (``head="notebook"``): logits can then never be
negative and dropout zeroes whole class scores, which cripples training. The default
``head="linear"`` ends in a plain linear layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

HIDDEN = {"AlexNet": 4096, "AlexNetSmall": 128}
N_CLASSES = 10
SMALL_MAP = 3  # px: AlexNetSmall's conv3-conv5 maps, where oneDNN's backward kernels do worst
MID_MAP = 7  # px: conv2's maps at 67 px (bf16: the row-GEMM weight gradient; fp32: the Fourier transform)
ROW_MAJOR_MIN_COLS = 1024  # im2col columns from which the weight gradient copies grad^T row-major
CL_POOL_MAX_MAP = 15  # px: the largest NCHW map that MaxPool2d pools in channels-last (AlexNetSmall's)
BORDERED_BUFFERS = 16  # zero-bordered inputs kept per thread (kernel_windows); a training run uses 3-6


@dataclass(frozen=True)
class ModelSpec:
    """Everything that rebuilds a trained module, saved beside its weights in ``model.pt`` (as
    nanoGPT keeps ``model_args`` in its checkpoint) and read back by :meth:`from_dict`.

    ``precision`` is the setting as configured (``auto``, ``fp32``, ``bf16``): each machine that
    runs the model resolves it for its own hardware (``fmnist.compute.Compute.resolve``).
    """

    model_name: str  # a key of MODELS
    input_size: int
    dropout: float
    head: str = "linear"
    lrn: bool = False
    precision: str = "auto"

    @classmethod
    def of(cls, model: Any, input_size: int, dropout: float) -> "ModelSpec":
        """The spec of the params' ``model`` section at ``input_size`` px with ``dropout``."""
        return cls(model.name, int(input_size), float(dropout), model.head, model.lrn, model.precision)

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


def _out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Side of a convolution's or pooling's output on a ``size`` px side."""
    return (size + 2 * padding - kernel) // stride + 1


class _RowGemmConv2d(torch.autograd.Function):
    """A stride-1 "same" ``conv2d`` whose weight gradient is :func:`weight_grad_by_kernel_rows`'s
    GEMMs (bf16, conv2's 7x7 maps: about 1.3x as fast as oneDNN's there, with memory flat); the
    forward pass and the input gradient are oneDNN's. Same parameters, same result up to float
    rounding."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        ctx.param_layout = (weight.dtype, weight.stride())
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
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [p, p], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_by_kernel_rows(x, _rows_of(grad), weight.shape[-1], p)
            grad_w = _param_grad(grad_w, *ctx.param_layout)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3)).to(ctx.param_layout[0])
        return grad_x, grad_w, grad_b, None


def _rows_of(grad: torch.Tensor) -> torch.Tensor:
    """``grad`` (``(B, O, H, W)``) as ``grad^T``, ``(O, B*H*W)``, row-major: the operand of a weight
    gradient's GEMM (a transposed bf16 operand halves the GEMM's speed on AMX). A channels-last
    ``grad`` is copied twice, to NCHW and then to ``(O, B, H*W)``: PyTorch copies the one 2-D
    transpose this is in a single thread, 1.1-1.6x as slowly as the two copies (AlexNetSmall's
    conv2 and conv3-conv5 gradients, bf16, batch 256)."""
    return grad.contiguous().transpose(0, 1).reshape(grad.shape[1], -1)


def weight_grad_by_kernel_rows(x: torch.Tensor, grad_t: torch.Tensor, kernel: int, padding: int) -> torch.Tensor:
    """The weight gradient of a stride-1 ``conv2d`` of ``x`` (``(B, C, H, W)``) whose output's
    gradient is ``grad_t`` (:func:`_rows_of`), as ``kernel`` GEMMs, one per kernel row ``ky``:
    ``grad_t @ cols_ky``, where ``cols_ky`` is the slice of the im2col matrix (:func:`im2col`) for
    that row. Built one row at a time, the matrix never exists whole: for conv2 at batch 256 a
    slice is 12 MB and is reused from glibc's heap, where the whole matrix (60 MB) would come as
    fresh pages every step. Each product writes its own columns of the result, summed in fp32
    inside the GEMM, so nothing is added up in bf16 afterwards."""
    out_channels, channels = grad_t.shape[0], x.shape[1]
    windows = kernel_windows(x, kernel, 1, padding)
    rows = torch.empty(out_channels, kernel, kernel * channels, dtype=grad_t.dtype, device=grad_t.device)
    for ky in range(kernel):
        torch.mm(grad_t, windows[:, :, :, ky].reshape(-1, kernel * channels), out=rows[:, ky])
    return rows.view(out_channels, kernel, kernel, channels).permute(0, 3, 1, 2)


_BORDERED = threading.local()


def _zero_bordered(x: torch.Tensor, padding: int) -> torch.Tensor:
    """``x`` (``(B, C, H, W)``) inside a border of ``padding`` zeros, channels-last, like
    ``F.pad``, but in a buffer kept per thread and shape: only the inside is written, the border
    stays zero from the buffer's first use. That saves ``F.pad``'s zero fill of the whole tensor,
    about half its time (the zero padding of a bf16 step's six 3x3-map im2col matrices and conv2's
    weight gradient). The result is overwritten by the next call for the same shape in the same
    thread; where autograd would record the copy, it is ``F.pad``'s own tensor."""
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
    to each other, so a copy of the view runs in blocks of that length: 2-2.5x as fast as gathering
    runs of ``C`` through ``unfold``. With ``padding`` the view is of :func:`_zero_bordered`'s
    buffer: copy what you need of it before the next call."""
    batch, channels, height, width = x.shape
    padded = _zero_bordered(x, padding) if padding else x.contiguous(memory_format=torch.channels_last)
    out_h, out_w = _out(height, kernel, stride, padding), _out(width, kernel, stride, padding)
    s_b, _, s_h, s_w = padded.stride()
    return padded.as_strided((batch, out_h, out_w, kernel, kernel * channels),
                             (s_b, stride * s_h, stride * s_w, s_h, 1), padded.storage_offset())


def im2col(x: torch.Tensor, kernel: int, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """The im2col matrix of ``x`` (``(B, C, H, W)``): one row per output position ``(b, oy, ox)``,
    one column per ``(ky, kx, c)``, so that a convolution is ``im2col(x) @ weight_rows``; a copy of
    :func:`kernel_windows`, always (where the windows do not overlap, ``reshape`` would return a
    view of the zero-bordered buffer, which the next call overwrites)."""
    windows = kernel_windows(x, kernel, stride, padding)
    cols = torch.empty(windows.shape[:3].numel(), kernel * windows.shape[-1], dtype=x.dtype, device=x.device)
    cols.view(windows.shape).copy_(windows)
    return cols


class _MatmulConv2d(torch.autograd.Function):
    """A convolution as one matrix product (im2col), and its gradients as two more.

    The bf16 path. oneDNN's bf16 kernels do poorly on AlexNetSmall's small problems: on the 3x3
    maps of conv3-conv5 the weight gradient takes 5-7 times the forward pass, the forward pass
    itself runs at a quarter of the matmul peak and the input gradient of conv4 at a quarter;
    conv1's weight gradient (11x11, stride 4, one input channel) costs seven times its forward
    pass. Laid out as matrices (:func:`im2col`) they are plain GEMMs:

    * forward: ``cols @ W^T``, written straight into a channels-last output. ``W`` is the kernel
      cast and laid out as ``(O, ky, kx, C)`` in one copy: a plain cast where the model is
      channels-last (``Compute.layout`` in bf16), else a batch of small transposes. The full
      transpose to ``(ky, kx, C, O)`` that a row-major ``W`` would need copied 2-3x as slowly, and
      as a GEMM operand the transposed view of the small weight matrix runs about as fast.
    * weight gradient: ``grad^T @ cols``, returned in the parameter's dtype and layout
      (:func:`_param_grad`). The gradient arrives channels-last, so ``grad^T`` is a transposed
      view, and a large transposed bf16 operand halves the GEMM's speed on AMX: it is copied
      row-major first where ``cols`` has ``ROW_MAJOR_MIN_COLS`` columns or more (conv3-conv5,
      2,304-3,456 columns: the GEMM runs 1.1-1.4x as fast, the copy costs a tenth of it), not for
      conv1's 121 columns (there the copy costs more than it saves).
    * input gradient: for a stride-1 "same" convolution on a small map (``SMALL_MAP``) it is
      itself such a convolution, of the output's gradient by the flipped kernel with input and
      output channels swapped: ``im2col(grad) @ W_flipped``, ``W_flipped`` laid out by one
      ``index_select``. On larger maps (conv2's 7x7 would need a 160 MB im2col matrix) and other
      geometries, oneDNN's backward-data kernel.

    Same parameters as ``nn.Conv2d``, same results up to float rounding.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int):
        out_channels, channels, k, _ = weight.shape
        cols = im2col(x, k, stride, padding)
        w_rows = torch.empty(out_channels, k, k, channels, dtype=x.dtype, device=x.device)
        w_rows = w_rows.copy_(weight.permute(0, 2, 3, 1)).view(out_channels, -1)
        out = torch.empty(x.shape[0], out_channels, _out(x.shape[2], k, stride, padding),
                          _out(x.shape[3], k, stride, padding), dtype=cols.dtype, device=x.device,
                          memory_format=torch.channels_last)  # a tensor of its own, not a view: ReLU works in place
        rows = out.permute(0, 2, 3, 1).view(-1, out_channels)
        if bias is None:
            torch.mm(cols, w_rows.t(), out=rows)
        else:
            torch.addmm(bias.to(x.dtype), cols, w_rows.t(), out=rows)
        ctx.save_for_backward(cols, x if ctx.needs_input_grad[0] else None, w_rows)
        ctx.geometry = (k, stride, padding)
        ctx.param_layout = (weight.dtype, weight.stride())
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
            if s == 1 and 2 * p == k - 1 and max(grad.shape[-2:]) <= SMALL_MAP:
                # the kernel's k*k taps in reverse order, (taps, O, C): one copy, half the time of a flip and a reshape
                reverse = torch.arange(k * k - 1, -1, -1, device=w_rows.device)
                w_flipped = w_rows.view(out_channels, k * k, channels).transpose(0, 1).index_select(0, reverse)
                b, _, h, w = x.shape  # rows (b, y, x), columns c: the channels-last gradient
                grad_x = (im2col(grad, k, 1, p) @ w_flipped.view(-1, channels)).view(b, h, w, channels)
                grad_x = grad_x.permute(0, 3, 1, 2)
            else:
                grad_x = torch.ops.aten.convolution_backward(
                    grad, x, w_okkc.permute(0, 3, 1, 2), None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                    [True, False, False])[0]
        grad_t = _rows_of(grad) if cols.shape[1] >= ROW_MAJOR_MIN_COLS else (
            grad.permute(1, 0, 2, 3).reshape(out_channels, -1))  # (O, B*Ho*Wo), a view if grad is channels-last
        if ctx.needs_input_grad[1]:
            grad_w = _param_grad((grad_t @ cols).view(out_channels, k, k, channels).permute(0, 3, 1, 2),
                                 *ctx.param_layout)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_t.sum(1).to(ctx.param_layout[0])
        return grad_x, grad_w, grad_b, None, None


def _param_grad(grad: torch.Tensor, dtype: torch.dtype, stride: tuple[int, ...]) -> torch.Tensor:
    """A weight's gradient, computed in another dtype or layout (``grad``), as the parameter's own:
    its ``dtype`` and ``stride`` (NCHW, or channels-last where ``Compute.layout`` made the model
    so), in one copy. AccumulateGrad then keeps it as it is; returned as it was, it would be cast by
    autocast's backward and copied again into the parameter's layout."""
    return torch.empty_strided(grad.shape, stride, dtype=dtype, device=grad.device).copy_(grad)


def _in_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the autocast dtype when autocast is on, as ``F.conv2d`` would compute. The fast
    paths take the parameters in their own dtype and cast them themselves (:func:`_param_grad`)."""
    device = x.device.type
    return x.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else x


def matmul_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
                  padding: int = 0) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (square kernel and stride, groups and
    dilation 1) computed by :class:`_MatmulConv2d`."""
    return _MatmulConv2d.apply(_in_autocast_dtype(x), weight, bias, stride, padding)


def row_gemm_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (stride 1, odd square kernel, output as large
    as the input) computed by :class:`_RowGemmConv2d`."""
    return _RowGemmConv2d.apply(_in_autocast_dtype(x), weight, bias, padding)


WINOGRAD_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0)  # evaluation points of the Winograd transform, at most 5 used


@dataclass(frozen=True)
class ConvTransform:
    """A stride-1 "same" convolution of a ``side`` px map by a ``kernel`` px kernel, ``y = conv(x, w)``,
    as a pointwise product in a transform domain, one GEMM per point (:class:`_TransformedConv2d`):
    ``y = T_out^T (Ŵ ⊙ X̂)`` with ``X̂ = T_in x`` and ``Ŵ = T_w w`` (``x``, ``y``, ``w`` flattened
    per channel pair to ``side**2`` and ``kernel**2`` values). ``parts`` is 1 where the points are
    real (Winograd) and 2 where they are complex (Fourier): rows of ``T_in``, ``T_w`` and ``T_out``
    are then ``(point, real/imaginary)``. The gradients are the same maps transposed."""

    t_in: torch.Tensor  # (parts * points, side**2)
    t_w: torch.Tensor  # (parts * points, kernel**2)
    t_out: torch.Tensor  # (parts * points, side**2)
    parts: int

    @property
    def points(self) -> int:
        return self.t_in.shape[0] // self.parts


def winograd_transform(side: int, kernel: int) -> ConvTransform:
    """Winograd's minimal algorithm for the whole map as one tile, in float64: the "same" output
    ``y[j] = sum_t x[j + t - kernel // 2] w[t]`` is the middle of the product of the polynomials
    ``X(z) = sum_i x[i] z^i`` and ``W(z) = sum_t w[t] z^(kernel-1-t)``, found from their values at
    ``side + kernel - 1`` points (``WINOGRAD_POINTS``); in 2-D, per axis (Kronecker products). On
    a 3x3 map with a 3x3 kernel: 25 products per channel pair where the convolution counts 81
    (49 of them inside the map)."""
    n = side + kernel - 1
    if n > len(WINOGRAD_POINTS):
        raise ValueError(f"a {side} px map with a {kernel} px kernel needs {n} Winograd points; "
                         f"allowed: {len(WINOGRAD_POINTS)} or fewer")
    z = torch.tensor(WINOGRAD_POINTS[:n], dtype=torch.float64)[:, None]
    powers = lambda count: z ** torch.arange(count, dtype=torch.float64)  # noqa: E731  (n, count)
    v_x, v_w = powers(side), powers(kernel).flip(1)  # W's coefficients run backwards
    rows = torch.arange(side) + kernel - 1 - kernel // 2  # the product's coefficients that are y
    a = torch.linalg.inv(powers(n))[rows]  # (side, n): values -> those coefficients
    return ConvTransform(torch.kron(v_x, v_x), torch.kron(v_w, v_w), torch.kron(a, a).t().contiguous(), 1)


def fourier_transform(side: int, kernel: int) -> ConvTransform:
    """The discrete Fourier transform over ``N`` points per axis, in float64: a circular
    convolution of length ``N >= side + kernel // 2`` wraps only what falls outside the "same"
    output (the taps past either edge of the map land on zeros of the padded input), so the "same"
    output is exact with fewer points than the full linear convolution's ``side + kernel - 1``;
    ``N`` odd, so that ``rfft2``'s half plane has no Nyquist column to halve. The points are that
    half plane less the conjugates on its first column (``N * (N // 2 + 1) - N // 2``: 41 for
    AlexNetSmall's conv2, 7x7 with a 5x5 kernel over 9 points, where the convolution counts 1,225
    multiply-adds per channel pair; a complex product is 4). Unlike Winograd's, the transform is
    well conditioned at any size: as exact as oneDNN in fp32."""
    pad = kernel // 2
    n = side + pad + 1 - (side + pad) % 2  # the least odd length that holds the "same" output
    half = n // 2 + 1
    kept = [(fy, fx) for fy in range(n) for fx in range(half) if fx > 0 or fy <= n // 2]
    index = torch.tensor([fy * half + fx for fy, fx in kept])

    def spectra(images: torch.Tensor) -> torch.Tensor:  # (count, n, n) -> (2 * points, count)
        return torch.view_as_real(torch.fft.rfft2(images).flatten(1)[:, index]).flatten(1).t().contiguous()

    pixels = torch.zeros(side * side, n, n, dtype=torch.float64)
    pixels[:, :side, :side] = torch.eye(side * side, dtype=torch.float64).view(-1, side, side)
    taps = torch.zeros(kernel * kernel, n, n, dtype=torch.float64)  # tap t at -(t - pad), circularly:
    for t in range(kernel * kernel):  # the product is then the correlation conv2d computes
        taps[t, (pad - t // kernel) % n, (pad - t % kernel) % n] = 1
    outputs = []  # each point's real and imaginary unit, with its conjugate where it stands for two
    for fy, fx in kept:
        for unit in (1, 1j):
            spectrum = torch.zeros(n, half, dtype=torch.complex128)
            spectrum[fy, fx] = unit
            if fx == 0 and fy:
                spectrum[-fy, 0] = complex(unit).conjugate()
            outputs.append(torch.fft.irfft2(spectrum, s=(n, n))[:side, :side].flatten())
    return ConvTransform(spectra(pixels), spectra(taps), torch.stack(outputs), 2)


TRANSFORMS = {"winograd": winograd_transform, "fourier": fourier_transform}


@functools.cache
def conv_transform(kind: str, side: int, kernel: int, dtype: torch.dtype, device: torch.device) -> ConvTransform:
    """``kind`` (``"winograd"``, ``"fourier"``) for a ``side`` px map and ``kernel`` px kernel, in
    ``dtype`` on ``device``; built once."""
    exact = TRANSFORMS[kind](side, kernel)
    return ConvTransform(*(t.to(dtype=dtype, device=device) for t in (exact.t_in, exact.t_w, exact.t_out)),
                         exact.parts)


def _batch_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``(B, C, H, W)``) as ``(H*W, C*B)``: a view where ``x`` is :func:`_from_batch_last`'s."""
    return x.permute(2, 3, 1, 0).reshape(x.shape[2] * x.shape[3], -1)


def _from_batch_last(t: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """``t`` (``(height*width, C*batch)``) as ``(batch, C, height, width)``, a view in that memory."""
    return t.view(height, width, -1, batch).permute(3, 2, 0, 1)


def is_batch_last(x: torch.Tensor) -> bool:
    """Whether ``x`` (``(B, C, H, W)``) lies in memory as ``(H, W, C, B)``, and is not also NCHW
    (a single image and channel)."""
    return x.permute(2, 3, 1, 0).is_contiguous() and not x.is_contiguous()


def _batch_last_strides(batch: int, channels: int, side: int) -> tuple[int, ...]:
    """The strides of a ``(batch, channels, side, side)`` tensor laid out as ``(side, side, channels, batch)``."""
    return 1, batch, side * channels * batch, channels * batch


class _TransformedConv2d(torch.autograd.Function):
    """A stride-1 "same" convolution of a small map as a pointwise product in a transform domain
    (:class:`ConvTransform`): per point one GEMM over the channels, ``Ŷ_p = Ŵ_p X̂_p``, all
    ``points`` in one batched GEMM. A complex point's product is real GEMM of twice the size,
    ``[[Ŵr, -Ŵi], [Ŵi, Ŵr]] @ [X̂r; X̂i]``. Fewer multiply-adds than the convolution (Winograd on
    the 3x3 maps: 25 per channel pair against 81; Fourier on conv2's 7x7: 164 against 1,225), as
    large GEMMs. Its gradients are the same products transposed: ``dX̂_p = Ŵ_p^T dŶ_p``,
    ``dŴ_p = dŶ_p X̂_p^T`` (summed over the batch inside the GEMM).

    Batch last: the transforms are GEMMs on ``(side², C·B)`` matrices, so the input is read and
    the output written as ``(H, W, C, B)`` in memory (:func:`_batch_last`). Between two such layers
    (conv3-conv5, their ReLUs in place) neither the maps nor their gradients are copied."""

    @staticmethod
    def forward(ctx, x, weight, bias, kind: str):
        batch, channels, side, _ = x.shape
        out_channels, _, kernel, _ = weight.shape
        tf = conv_transform(kind, side, kernel, x.dtype, x.device)
        p, m = tf.points, tf.parts
        x_hat = torch.mm(tf.t_in, _batch_last(x)).view(p, m * channels, batch)
        w_hat = torch.mm(tf.t_w, weight.to(x.dtype).reshape(out_channels * channels, -1).t())
        w_hat = _real_form(w_hat.view(p, m, out_channels, channels))
        y_hat = torch.bmm(w_hat, x_hat)  # (p, m * O, B)
        # written into a tensor of its own, laid out batch last, not returned as a view: ReLU works in place
        out = torch.empty_strided((batch, out_channels, side, side), _batch_last_strides(batch, out_channels, side),
                                  dtype=x.dtype, device=x.device)
        y = torch.mm(tf.t_out.t(), y_hat.view(p * m, -1), out=_batch_last(out))  # (side², O * B)
        if bias is not None:
            y.view(side * side, out_channels, batch).add_(bias.to(x.dtype)[:, None])
        ctx.save_for_backward(x_hat, w_hat)
        ctx.geometry = (tf, batch, side, kernel, bias is not None)
        ctx.param_layout = (weight.dtype, weight.stride())
        return out

    @staticmethod
    def backward(ctx, grad):
        x_hat, w_hat = ctx.saved_tensors
        tf, batch, side, kernel, has_bias = ctx.geometry
        p, m = tf.points, tf.parts
        out_channels, channels = w_hat.shape[1] // m, w_hat.shape[2] // m
        g = _batch_last(grad)  # (side², O * B)
        g_hat = torch.mm(tf.t_out, g).view(p, m * out_channels, batch)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            dx_hat = torch.bmm(w_hat.transpose(1, 2), g_hat)  # (p, m * C, B)
            grad_x = _from_batch_last(torch.mm(tf.t_in.t(), dx_hat.view(p * m, -1)), batch, side, side)
        if ctx.needs_input_grad[1]:
            dw_hat = _real_form_grad(torch.bmm(g_hat, x_hat.transpose(1, 2)), m)  # (p, m, O, C)
            grad_w = torch.mm(dw_hat.view(p * m, -1).t(), tf.t_w).view(out_channels, channels, kernel, kernel)
            grad_w = _param_grad(grad_w, *ctx.param_layout)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = g.view(side * side, out_channels, batch).sum((0, 2)).to(ctx.param_layout[0])
        return grad_x, grad_w, grad_b, None


def _real_form(w_hat: torch.Tensor) -> torch.Tensor:
    """``w_hat`` (``(points, parts, O, C)``) as the real matrices that multiply: itself for real
    points, ``[[Wr, -Wi], [Wi, Wr]]`` (``(points, 2*O, 2*C)``) for complex ones, written once into
    its four quarters (``torch.cat`` copied it twice: 5.4 against ~2 ms a step for conv2)."""
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


def _real_form_grad(grad: torch.Tensor, parts: int) -> torch.Tensor:
    """The gradient of :func:`_real_form`'s input from its output's, ``(points, parts, O, C)``."""
    if parts == 1:
        return grad.unsqueeze(1)
    points, o, c = grad.shape[0], grad.shape[1] // 2, grad.shape[2] // 2
    quarters = grad.view(points, 2, o, 2, c)
    out = torch.empty(points, 2, o, c, dtype=grad.dtype, device=grad.device)
    torch.add(quarters[:, 0, :, 0], quarters[:, 1, :, 1], out=out[:, 0])
    torch.sub(quarters[:, 1, :, 0], quarters[:, 0, :, 1], out=out[:, 1])
    return out


def transformed_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kind: str) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=kernel // 2)`` (stride 1, odd square kernel) computed by
    :class:`_TransformedConv2d` in the ``kind`` transform (``"winograd"``, ``"fourier"``); the
    output is laid out batch last."""
    return _TransformedConv2d.apply(_in_autocast_dtype(x), weight, bias, kind)


class ConvReLU(nn.Module):
    """Conv2d + ReLU, He (Kaiming normal) init, zero bias.

    In training on the CPU, :meth:`path` picks what measured fastest (``benchmarks/conv_step.py``,
    side by side; :meth:`suits`):

    * bf16: :func:`matmul_conv2d` for a stride-1 "same" convolution on a map of ``SMALL_MAP`` px
      or less (AlexNetSmall's conv3-conv5) and for a one-channel input (conv1);
      :func:`row_gemm_conv2d` for a "same" convolution on larger maps up to
      ``MID_MAP`` (conv2 on 7x7): oneDNN's forward pass and input gradient, the weight gradient as
      GEMMs. As GEMMs throughout, conv2 took 153.5 ms a step against oneDNN's 145: its 60 MB im2col
      matrix and its forward GEMM cost more than its weight gradient, 2.5x as fast as oneDNN's, saved.
    * fp32: :func:`transformed_conv2d` for a stride-1 "same" convolution on a small map: in the
      ``"winograd"`` transform where the map and the kernel need at most 5 points (AlexNetSmall's
      3x3 maps, conv3-conv5), in the ``"fourier"`` one up to ``MID_MAP`` (conv2 on 7x7). Forward
      and backward at batch 256, against the transposed-convolution paths they replace (stop 25):
      conv2 124 -> 75 ms (over 11 points per axis; over 9 the whole step is 1.12x faster again),
      conv3 39 -> 23, conv4 54 -> 33, conv5 36 -> 20 (``benchmarks/conv_step.py`` for the whole
      step). ``"channels-last"`` for a one-channel input whose output pools in
      channels-last (:class:`MaxPool2d`; conv1): oneDNN's convolution writing that layout itself,
      which saves the pool's copy in and the gradient's copy back (conv1 and pool1, forward and
      backward, batch 256: 30.3 -> 24.3 ms).

    Everywhere else oneDNN's own kernels: AlexNet's 13x13 and 27x27 maps at 227 px (not measured
    on the row-GEMM path; in fp32 the Fourier path, its transforms dense matrices, took 1.1-1.6x
    oneDNN's time there), its conv1 (a 55 px map, pooled NCHW), and any map that is not square
    (the transforms are built per side). On 5x5 maps (inputs of about 99 px) the Fourier path
    measured 1.0-1.13x oneDNN's speed. The parameters and state dict are the ``nn.Conv2d``'s, the
    outputs and gradients the same to float rounding.
    ``fast_paths = False`` (:func:`plain_convolutions`) gives the plain convolution everywhere.
    TorchScript always takes the plain convolution (what ``torch.jit.freeze`` fuses with the ReLU
    for inference). A pass without gradients (validation, prediction) takes the fp32 paths too,
    which do fewer multiply-adds forward as well: AlexNetSmall predicted 1.4x (batch 1000) and 1.9x
    (batch 256) as fast as frozen TorchScript (:func:`fmnist.predict.inference_module`). In bf16
    such a pass keeps oneDNN's convolutions, as before: the bf16 paths were measured in training
    steps only, where they gain in the backward pass.
    """

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, **conv_kwargs)
        self.relu = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)
        c = self.conv
        k = c.kernel_size[0]
        self.plain_geometry = (c.kernel_size == (k, k) and c.stride[0] == c.stride[1] and c.dilation == (1, 1)
                               and c.groups == 1 and c.padding[0] == c.padding[1] and c.padding_mode == "zeros")
        self.same_size = self.plain_geometry and k % 2 == 1 and c.stride == (1, 1) and c.padding == (k // 2, k // 2)
        self.fast_paths = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.pre_activation(x))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution's output, before the ReLU."""
        if not torch.jit.is_scripting():
            path = self.path(x)
            layout = self.input_layout(path)
            if layout is not None:
                x = x.contiguous(memory_format=layout)
            if path != "plain":
                return self._fast(x, path)
        return self.conv(x)

    def input_layout(self, path: str) -> torch.memory_format | None:
        """The memory format this layer reads its input in on ``path``: none (as it comes) for one
        input channel, where both layouts are the same bytes, and on the transformed paths, which
        read the batch-last maps of the layer before as they are and copy any other; else its
        weight's, which is the model's (``Compute.layout``)."""
        if self.conv.in_channels == 1 or path in TRANSFORMS:
            return None
        return torch.channels_last if self.conv.weight.is_contiguous(memory_format=torch.channels_last) else (
            torch.contiguous_format)

    def path(self, x: torch.Tensor) -> str:
        """How ``x`` (``(B, C, H, W)``) is convolved: ``"matmul"``, ``"row-gemm"``, a key of
        ``TRANSFORMS``, ``"channels-last"`` or ``"plain"``."""
        if not (self.fast_paths and self.plain_geometry and x.device.type == "cpu"):
            return "plain"
        bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        if bf16 and not torch.is_grad_enabled():  # bf16's paths: measured, and chosen, for training
            return "plain"
        side = max(x.shape[-2:])
        paths = ("matmul", "row-gemm") if bf16 else ("winograd", "fourier", "channels-last")
        if x.shape[-2] != x.shape[-1]:  # the transforms take square maps
            paths = tuple(p for p in paths if p not in TRANSFORMS)
        return next((p for p in paths if self.suits(p, side)), "plain")

    def suits(self, path: str, side: int) -> bool:
        """Whether ``path`` is where this layer, on a ``side`` px map, measured faster than oneDNN
        (in the precision that takes it: ``"matmul"`` and ``"row-gemm"`` in bf16, ``"winograd"``,
        ``"fourier"`` and ``"channels-last"`` in fp32)."""
        c = self.conv
        k = c.kernel_size[0]
        if path == "matmul":
            return (self.same_size and side <= SMALL_MAP) or c.in_channels == 1
        if path == "channels-last":
            return c.in_channels == 1 and _out(side, k, c.stride[0], c.padding[0]) <= CL_POOL_MAX_MAP
        if path == "winograd":
            return self.same_size and side + k - 1 <= len(WINOGRAD_POINTS)
        if path == "fourier":
            return self.same_size and side <= MID_MAP
        if path == "row-gemm":
            return self.same_size and SMALL_MAP < side <= MID_MAP
        return False

    @torch.jit.unused
    def _fast(self, x: torch.Tensor, path: str) -> torch.Tensor:
        c = self.conv
        if path == "matmul":
            return matmul_conv2d(x, c.weight, c.bias, c.stride[0], c.padding[0])
        if path == "channels-last":
            return c(_one_channel_as_channels_last(x))
        if path == "row-gemm":
            return row_gemm_conv2d(x, c.weight, c.bias, c.padding[0])
        return transformed_conv2d(x, c.weight, c.bias, path)


def _one_channel_as_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``(B, 1, H, W)``) with channels-last strides, the same memory. With one channel the two
    layouts hold the same bytes, and PyTorch gives such a tensor NCHW strides, so ``conv2d`` writes
    an NCHW output; with these strides oneDNN writes it channels-last, as the pooling after it wants."""
    x = x.contiguous()
    return x.as_strided(x.shape, (x.shape[2] * x.shape[3], 1, x.shape[3], 1))


def paths_taken(module: nn.Module, input_size: int, autocast: Any = None, training: bool = True) -> dict[str, str]:
    """``{layer: path}`` for the :class:`ConvReLU` layers of ``module`` that take a fast path in a
    training step (``training``; else in a prediction, without gradients) on ``input_size`` px
    images under ``autocast`` (a context manager, such as ``Compute.autocast()``; none: full
    precision), where ``module``'s parameters are (one forward pass of 2 images)."""
    used: dict[str, str] = {}
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, ConvReLU)]
    for name, m in layers:
        def record(x: torch.Tensor, m: ConvReLU = m, name: str = name) -> str:
            path = ConvReLU.path(m, x)
            if path != "plain":
                used[name] = path
            return path
        m.path = record  # an instance attribute shadows the method for this pass
    was_training = module.training
    try:  # torch's random state is left as it was (the pass draws dropout masks)
        with (torch.random.fork_rng(devices=[]), torch.set_grad_enabled(training),
              autocast or contextlib.nullcontext()):
            module.train(training)(torch.rand(2, 1, input_size, input_size, device=next(module.parameters()).device))
    finally:
        module.train(was_training)
        for _, m in layers:
            del m.path
    return used


def plain_convolutions(module: nn.Module) -> nn.Module:
    """``module`` with every :class:`ConvReLU` on the plain ``nn.Conv2d`` path, as the notebook had
    them (the baseline the fast paths are measured and tested against); returned for chaining."""
    for m in module.modules():
        if isinstance(m, ConvReLU):
            m.fast_paths = False
    return module


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pools a small NCHW map on the CPU in channels-last memory and hands it
    back NCHW.

    PyTorch's NCHW max-pool kernel on the CPU walks each channel's map in scalar code; its
    channels-last kernel runs along the channels, vectorized. In the fp32 model (NCHW: channels-last
    trained slower there) AlexNetSmall's pool1 and pool2, forward and backward at batch 256, took
    21.3 and 10.4 ms against 18.4 and 9.1 this way, the two layout copies included; a training
    step 1.017x as fast, an evaluation pass 1.07x. On maps over ``CL_POOL_MAX_MAP`` px the
    copies cost more than they save (AlexNet's 55 px pool1 at batch 64: 87 against 142 ms), so
    those pool as they are. Same values, same indices (both kernels take the first maximum of a
    window), so the same gradient, bit for bit. A channels-last input (the bf16 model) pools as it
    is, and so does TorchScript (the frozen inference module pools in oneDNN's own layout).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # alone in its condition, so that TorchScript skips the branch
            if x.dim() == 4 and is_batch_last(x):
                return self._pool_batch_last(x)
            if (x.device.type == "cpu" and x.dim() == 4 and max(x.shape[-2:]) <= CL_POOL_MAX_MAP
                    and not x.is_contiguous(memory_format=torch.channels_last)):
                return self._pool(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return self._pool(x)

    @torch.jit.unused
    def _pool_batch_last(self, x: torch.Tensor) -> torch.Tensor:
        """A batch-last map (the transformed convolutions' output) pooled as it lies: ``(H, W, C, B)``
        in memory is a channels-last ``(1, C*B, H, W)``, which the channels-last kernel pools along
        its ``C*B`` planes, and writes batch last again. No copy either way, nor of the gradient
        (conv2's, 12.8 MB each way at batch 256), and conv3 reads the result as it is."""
        planes = _batch_last(x).view(1, *x.shape[-2:], -1).permute(0, 3, 1, 2)  # channels-last (1, C*B, H, W)
        pooled = self._pool(planes)
        height, width = pooled.shape[-2:]
        return _from_batch_last(pooled.permute(0, 2, 3, 1).view(height * width, -1), x.shape[0], height, width)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                        ceil_mode=self.ceil_mode, return_indices=self.return_indices)


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


def feature_size(input_size: int) -> int:
    """Side of the trunk's last feature map for a square input of ``input_size`` pixels."""
    s = _out(input_size, 11, 4)  # conv1
    s = _out(s, 3, 2)  # pool1; conv2 keeps the size (5x5, padding 2)
    s = _out(s, 3, 2)  # pool2; conv3..conv5 keep it (3x3, padding 1)
    return _out(s, 3, 2)  # pool3


def min_input_size() -> int:
    """The smallest input side for which the trunk still leaves a 1x1 feature map (67)."""
    size = 11
    while feature_size(size) < 1:
        size += 1
    return size


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
        side = feature_size(input_size)
        if side < 1:
            raise ValueError(f"input_size={input_size} is too small; allowed: {min_input_size()} or more")
        # ReLU and max-pooling commute (bit for bit, gradients too): without LRN between them, conv1's
        # and conv2's ReLU run after the pooling, on 4.6x and 5.4x fewer values (about 4% of a step)
        self.pool_first = not lrn
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, S, S), S=67 for the small net
        if self.pool_first:
            x = self.c1.relu(self.p1(self.c1.pre_activation(x)))  # (B, 96, 7, 7)
            x = self.c2.relu(self.p2(self.c2.pre_activation(x)))  # (B, 256, 3, 3)
        else:
            x = self.p1(self.n1(self.c1(x)))
            x = self.p2(self.n2(self.c2(x)))
        x = self.p3(self.c5(self.c4(self.c3(x))))  # (B, 256, 1, 1)
        x = self.flatten(x).contiguous()  # (B, 256), row-major: a batch-last map flattens to the transposed view
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
