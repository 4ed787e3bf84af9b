"""Winograd's minimal convolution of a whole small map as one tile."""

from __future__ import annotations

import torch

from fmnist.conv.transformed import ConvTransform

WINOGRAD_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0)  # evaluation points; more would make the transform ill-conditioned


def winograd_points(side: int, kernel: int) -> int:
    """How many evaluation points a ``side`` px map and a ``kernel`` px kernel need."""
    return side + kernel - 1


def winograd_transform(side: int, kernel: int) -> ConvTransform:
    """Winograd's transform for a "same" convolution of a ``side`` px map, in float64: the output
    ``y[j] = sum_t x[j + t - kernel // 2] w[t]`` is the middle of the product of the polynomials
    ``X(z) = sum_i x[i] z^i`` and ``W(z) = sum_t w[t] z^(kernel-1-t)``, found from their values at
    ``side + kernel - 1`` points (``WINOGRAD_POINTS``); in 2-D, per axis (Kronecker products). On
    a 3x3 map with a 3x3 kernel: 25 products per channel pair where the convolution counts 81."""
    n = winograd_points(side, kernel)
    if n > len(WINOGRAD_POINTS):
        raise ValueError(f"a {side} px map with a {kernel} px kernel needs {n} Winograd points; "
                         f"allowed: {len(WINOGRAD_POINTS)} or fewer")
    z = torch.tensor(WINOGRAD_POINTS[:n], dtype=torch.float64)[:, None]
    powers = lambda count: z ** torch.arange(count, dtype=torch.float64)  # noqa: E731  (n, count)
    v_x, v_w = powers(side), powers(kernel).flip(1)  # W's coefficients run backwards
    rows = torch.arange(side) + kernel - 1 - kernel // 2  # the product's coefficients that are y
    a = torch.linalg.inv(powers(n))[rows]  # (side, n): values -> those coefficients
    return ConvTransform(torch.kron(v_x, v_x), torch.kron(v_w, v_w), torch.kron(a, a).t().contiguous(), 1)
