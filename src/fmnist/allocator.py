"""glibc malloc settings for a process that allocates many large, short-lived tensors.

Training at 227 px allocates and frees tens of megabytes per batch (the float copy of the batch,
activations, gradients). glibc's malloc serves large blocks with ``mmap`` and returns them when
freed, but each time one is freed it raises its mmap threshold to that block's size (up to 32
MiB), so that from then on blocks of that size come from the heap instead, where freed blocks
stay with the process and fragment: resident memory then grows with the number of batches, not
with the data (measured at 227 px by ``benchmarks/alexnet227.py memory``). Fixing the threshold
keeps large blocks in ``mmap``; it is what ``MALLOC_MMAP_THRESHOLD_`` does, without asking users to
set it.

It has a price: a block from ``mmap`` comes as fresh pages, faulted in on first touch, on every
allocation. At 67 px, where the heap stays flat anyway (1.4 GB at its peak over 8 epochs), the
fixed threshold made the train stage's code 1.2-1.6x slower and a 2048x2048 bf16 matmul 2x slower
(measured side by side, ``MALLOC_MMAP_THRESHOLD_=1048576`` or not). So the stages fix it only for
large images (:func:`keep_large_blocks_in_mmap_for`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 1 << 20  # bytes; a batch's tensors at 227 px are far larger, small objects far smaller
LARGE_SIDE = 128  # px; AlexNet trains at 227, AlexNetSmall at 67


def keep_large_blocks_in_mmap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process; return whether it was set.

    A no-op (False) off Linux/glibc, or when the user set ``MALLOC_MMAP_THRESHOLD_`` themselves
    (theirs wins). Setting it also turns off glibc's dynamic raising of the threshold.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, threshold) == 1
    log.debug("glibc mmap threshold %s at %d bytes", "fixed" if done else "not set", threshold)
    return done


def keep_large_blocks_in_mmap_for(image_side: int) -> bool:
    """:func:`keep_large_blocks_in_mmap` for a process that trains on ``image_side`` px images, if
    they are large (``LARGE_SIDE`` px or more); otherwise glibc's defaults stay (False)."""
    return image_side >= LARGE_SIDE and keep_large_blocks_in_mmap()
