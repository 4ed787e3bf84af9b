"""A convolution's shape as the rules read it, and the side of a layer's output."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


def out_side(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Side of a convolution's or pooling's output on a ``size`` px side."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class Geometry:
    """A square-kernel convolution on a square ``side`` px map, as the plan's rules see it."""

    in_channels: int
    kernel: int
    stride: int
    padding: int
    side: int
    simple: bool  # square kernel, equal strides and paddings, no dilation, one group, zero padding

    @classmethod
    def of(cls, conv: nn.Conv2d, side: int) -> "Geometry":
        k = conv.kernel_size[0]
        simple = (conv.kernel_size == (k, k) and conv.stride[0] == conv.stride[1] and conv.dilation == (1, 1)
                  and conv.groups == 1 and conv.padding[0] == conv.padding[1] and conv.padding_mode == "zeros")
        return cls(conv.in_channels, k, conv.stride[0], conv.padding[0], side, simple)

    @property
    def same(self) -> bool:
        """A stride-1 convolution whose output is as large as its input (odd kernel, padding k // 2)."""
        return self.simple and self.kernel % 2 == 1 and self.stride == 1 and self.padding == self.kernel // 2

    @property
    def out_side(self) -> int:
        return out_side(self.side, self.kernel, self.stride, self.padding)
