"""glibc malloc settings for a process that allocates many large, short-lived tensors.

A training step allocates and frees tens of megabytes (the float copy of the batch, activations,
gradients, im2col matrices). glibc's defaults suit neither image size this pipeline trains on:

* **Small images (67 px): keep freed blocks in the heap.** By default glibc serves a large block
  with ``mmap`` and, once such blocks are freed, raises its mmap threshold (up to 32 MiB) and
  trims the top of the heap whenever more than twice that is free. Either way pages go back to
  the kernel and come back as fresh pages, faulted in and zeroed on first touch: about 22,000
  page faults per training step of AlexNetSmall, 86 MB of fresh memory. Serving every block of
  up to 32 MiB from the heap and never trimming it (``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``)
  leaves no page faults at all; together with ``fmnist.compute.seed_everything`` not filling new
  tensors with NaN on a CPU, that makes the train stage's step 1.19x as fast in bf16 and 1.14x in
  fp32 as glibc's defaults with the fill (measured side by side in fresh processes; the
  documentation's performance page). The heap stays as large as its peak, which at 67 px is
  small (the stage peaks at 1.8 GB either way).
* **Large images (227 px): keep large blocks in mmap.** There the heap, once the threshold has
  risen, fragments: resident memory then grows with the number of batches, not with the data
  (measured by ``benchmarks/alexnet227.py memory``). Fixing the threshold at 1 MiB keeps large
  blocks in ``mmap``, returned when freed; the page faults cost less than at 67 px, where the
  same setting made training 1.2-1.6x slower.

:func:`tune_malloc_for` picks by the image side. A user's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` wins, and off Linux/glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 1 << 20  # bytes; a batch's tensors at 227 px are far larger, small objects far smaller
MMAP_THRESHOLD_MAX = 32 << 20  # the largest glibc accepts on 64-bit (half its heap size)
NEVER_TRIM = 2**31 - 1  # bytes of free heap top before glibc returns it: an int's largest
LARGE_SIDE = 128  # px; AlexNet trains at 227, AlexNetSmall at 67
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _mallopt(settings: dict[int, int]) -> bool:
    """Apply glibc ``mallopt`` ``settings``; False (nothing set) off glibc or where the user set
    the malloc thresholds in the environment."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in settings.items())


def keep_large_blocks_in_mmap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (and so turn off its dynamic raising);
    return whether it was set."""
    return _mallopt({M_MMAP_THRESHOLD: threshold})


def keep_freed_blocks() -> bool:
    """Serve blocks of up to 32 MiB from the heap and never trim it, so that a freed block is
    reused as it is, without page faults; return whether it was set."""
    return _mallopt({M_MMAP_THRESHOLD: MMAP_THRESHOLD_MAX, M_TRIM_THRESHOLD: NEVER_TRIM})


def tune_malloc_for(image_side: int) -> str:
    """Set glibc's malloc for a process that trains on ``image_side`` px images: ``"mmap"``
    (:func:`keep_large_blocks_in_mmap`) from ``LARGE_SIDE`` px, else ``"heap"``
    (:func:`keep_freed_blocks`); ``""`` when nothing was set."""
    policy, done = (("mmap", keep_large_blocks_in_mmap()) if image_side >= LARGE_SIDE
                    else ("heap", keep_freed_blocks()))
    log.debug("glibc malloc for %d px images: %s", image_side, policy if done else "defaults")
    return policy if done else ""
