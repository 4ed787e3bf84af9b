"""The discrete Fourier transform over the shortest odd circle that holds a "same" convolution."""

from __future__ import annotations

import torch

from fmnist.conv.transformed import ConvTransform


def fourier_length(side: int, kernel: int) -> int:
    """The least odd circle length ``N >= side + kernel // 2``: a circular convolution that long
    wraps only taps that fall past the map's edge, onto zeros of the padded input."""
    pad = kernel // 2
    return side + pad + 1 - (side + pad) % 2


def fourier_transform(side: int, kernel: int) -> ConvTransform:
    """The DFT over :func:`fourier_length` points per axis, in float64; odd, so that ``rfft2``'s
    half plane has no Nyquist column to halve. The points are that half plane less the conjugates
    on its first column (``N * (N // 2 + 1) - N // 2``: 41 for a 7x7 map with a 5x5 kernel over 9
    points, where the convolution counts 1,225 multiply-adds per channel pair and a complex product
    4). Unlike Winograd's, the transform is well conditioned at any size."""
    pad = kernel // 2
    n = fourier_length(side, kernel)
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
