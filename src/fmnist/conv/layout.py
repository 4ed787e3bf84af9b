"""Memory layouts passed between layers, and the max-pool that takes each as it lies.

Three layouts of a ``(B, C, H, W)`` map travel between the layers: NCHW, channels-last
(``(B, H, W, C)`` in memory: oneDNN's fast bf16 layout and the im2col GEMMs' output) and batch
last (``(H, W, C, B)`` in memory: the transformed convolutions read and write their maps as
``(H*W, C*B)`` matrices, so between two of them nothing is copied).
"""

from __future__ import annotations

import torch
from torch import nn

CHANNELS_LAST_POOL_MAX_MAP = 15  # px: the largest NCHW map the layout-aware pool pools in channels-last


def batch_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``(B, C, H, W)``) as ``(H*W, C*B)``: a view where ``x`` is :func:`from_batch_last`'s."""
    return x.permute(2, 3, 1, 0).reshape(x.shape[2] * x.shape[3], -1)


def from_batch_last(t: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """``t`` (``(height*width, C*batch)``) as ``(batch, C, height, width)``, a view in that memory."""
    return t.view(height, width, -1, batch).permute(3, 2, 0, 1)


def batch_last_strides(batch: int, channels: int, side: int) -> tuple[int, ...]:
    """The strides of a ``(batch, channels, side, side)`` tensor laid out as ``(side, side, channels, batch)``."""
    return 1, batch, side * channels * batch, channels * batch


def is_batch_last(x: torch.Tensor) -> bool:
    """Whether ``x`` (``(B, C, H, W)``) lies in memory as ``(H, W, C, B)``, and is not also NCHW
    (a single image and channel)."""
    return x.permute(2, 3, 1, 0).is_contiguous() and not x.is_contiguous()


def one_channel_as_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``(B, 1, H, W)``) with channels-last strides, the same memory. With one channel the
    two layouts hold the same bytes, and PyTorch gives such a tensor NCHW strides, so ``conv2d``
    writes an NCHW output; with these strides oneDNN writes it channels-last."""
    x = x.contiguous()
    return x.as_strided(x.shape, (x.shape[2] * x.shape[3], 1, x.shape[3], 1))


def max_pool(pool: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``pool`` applied to ``x`` by PyTorch's kernel for ``x``'s layout."""
    return nn.functional.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                    ceil_mode=pool.ceil_mode, return_indices=pool.return_indices)


def layout_aware_max_pool(pool: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``pool`` applied to ``x`` on the CPU in the layout whose kernel is vectorized.

    PyTorch's NCHW max-pool kernel on the CPU walks each channel's map in scalar code; its
    channels-last kernel runs along the channels. So a batch-last map pools as it lies (in memory a
    channels-last ``(1, C*B, H, W)``: no copy either way, and the next transformed convolution
    reads the result as it is); a small NCHW map (``CHANNELS_LAST_POOL_MAX_MAP``: on larger ones
    the two copies cost more than they save) is pooled channels-last and handed back NCHW; any
    other map pools as it is. Both kernels take the first maximum of a window: the same values,
    indices and gradients as ``nn.MaxPool2d``, bit for bit."""
    if x.dim() == 4 and is_batch_last(x):
        planes = batch_last(x).view(1, *x.shape[-2:], -1).permute(0, 3, 1, 2)  # channels-last (1, C*B, H, W)
        pooled = max_pool(pool, planes)
        height, width = pooled.shape[-2:]
        return from_batch_last(pooled.permute(0, 2, 3, 1).view(height * width, -1), x.shape[0], height, width)
    if (x.device.type == "cpu" and x.dim() == 4 and max(x.shape[-2:]) <= CHANNELS_LAST_POOL_MAX_MAP
            and not x.is_contiguous(memory_format=torch.channels_last)):
        return max_pool(pool, x.contiguous(memory_format=torch.channels_last)).contiguous()
    return max_pool(pool, x)
