"""uint8 image arrays as torch batches: the dataset, the float conversion, augmentation, the iterator."""

from __future__ import annotations

import math
import warnings
from typing import Iterator

import numpy as np
import torch


class ImageSet(torch.utils.data.Dataset):
    """uint8 images ``(N, S, S)`` and int labels, kept as uint8 and converted per batch.

    At 227 px, 70k images are 3.6 GB as uint8 and would be 14 GB as float32, so the float copy
    only ever exists for one batch. ``images`` may be a read-only memory map.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        with warnings.catch_warnings():  # a read-only memory map is fine: nothing writes to it
            warnings.simplefilter("ignore", UserWarning)
            self.images = torch.from_numpy(np.asarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(self.images[i:i + 1])[0], self.labels[i]

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, S, S)`` -> float32 ``(B, 1, S, S)`` in [0, 1], as ``ToTensor`` gives."""
    return images.unsqueeze(1).to(torch.float32).div_(255.0)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's augmentation, per image: a random crop after reflection padding of 1/8 of the
    side (the paper took 224 px crops from 256 px images), and a random horizontal flip."""
    b, _, s, _ = x.shape
    pad = max(1, s // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ar = torch.arange(s)
    rows = (oy[:, None] + ar)[:, :, None]  # (B, S, 1)
    cols = (ox[:, None] + ar)[:, None, :]  # (B, 1, S)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


class BatchIterator:
    """skorch ``iterator_train``/``iterator_valid``: batches sliced straight from the tensors.

    A ``DataLoader`` over :class:`ImageSet` would call ``__getitem__`` and collate per image;
    this takes one index tensor per batch instead. Shuffling draws from torch's global RNG, which
    ``fmnist.training.SeedEachEpoch`` reseeds per epoch so that a resumed run shuffles as an
    unbroken one.
    """

    def __init__(self, dataset: ImageSet, batch_size: int, shuffle: bool = False,
                 augment: bool = False):
        if not isinstance(dataset, ImageSet):
            raise TypeError(f"BatchIterator needs an ImageSet, got {type(dataset).__name__}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = torch.randperm(n) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                images = self.dataset.images[start:start + self.batch_size]
                labels = self.dataset.labels[start:start + self.batch_size]
            else:
                idx = order[start:start + self.batch_size]
                images, labels = self.dataset.images[idx], self.dataset.labels[idx]
            x = to_float(images)
            yield (augment_batch(x) if self.augment else x), labels
