"""skorch training on uint8 image arrays: dataset, batch iterator, callbacks, resumable fit."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback, EarlyStopping, EpochScoring, LRScheduler, ProgressBar
from skorch.helper import predefined_split
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from fmnist.errors import ParamsError
from fmnist.files import save_torch
from fmnist.model import MODELS, N_CLASSES

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def set_threads(threads: int) -> int:
    """Use ``threads`` torch threads (0: one per core); return the number used."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (``auto``, ``fp32`` or ``bf16``) on ``device``.

    ``auto`` is bf16 where the hardware computes it natively: a CPU with AMX or AVX512-BF16
    (where oneDNN's bf16 convolutions train AlexNetSmall about 1.7x as fast as fp32 and predict
    about 2x as fast; benchmarks/train.py measures it), or a GPU that supports bf16. Elsewhere
    bf16 is emulated and slower than fp32, so ``auto`` is fp32 there. An explicit ``bf16`` on a
    GPU without it is a :class:`ParamsError`; on such a CPU it runs, slowly, with a warning.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ParamsError(f"model.precision={precision!r} is not allowed; allowed: one of 'auto', 'fp32', 'bf16'")
    if precision == "fp32":
        return precision
    if device.startswith("cuda"):
        native = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not native:
            raise ParamsError(f"model.precision=bf16: {torch.cuda.get_device_name(device)} does not support "
                              f"bfloat16; allowed here: auto or fp32")
    else:
        native = ((torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
                  and torch.backends.mkldnn.is_available())
        if precision == "bf16" and not native:
            warnings.warn("model.precision=bf16 on a CPU without AMX or AVX512-BF16: emulated, slower than fp32",
                          RuntimeWarning, stacklevel=2)  # shown once per caller, not per batch
    if precision == "bf16":
        return precision
    return "bf16" if native else "fp32"


def autocast(precision: str, device: str):
    """Mixed precision for ``bf16`` (weights, gradients and optimizer stay fp32), a no-op for fp32."""
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")


def to_compute_layout(module: nn.Module, precision: str, device: str) -> nn.Module:
    """``module`` in the memory layout its precision runs fastest in: channels-last for bf16 on a
    CPU (oneDNN's blocked bf16 kernels: a further 1.1-1.2x over NCHW in training), else as is
    (channels-last fp32 trained 10% slower on the CPU). In place, as ``Module.to``."""
    if precision == "bf16" and device == "cpu":
        return module.to(memory_format=torch.channels_last)
    return module


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
    :class:`SeedEachEpoch` reseeds per epoch so that a resumed run shuffles as an unbroken one.
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


class SeedEachEpoch(Callback):
    """Reseed torch at each epoch's start from (seed, epoch): shuffling and dropout of epoch k
    then depend only on the seed and k, so a run resumed at epoch k matches an unbroken run."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_epoch_begin(self, net, **kwargs):
        torch.manual_seed(self.seed * 10_007 + len(net.history))


class ResumableEarlyStopping(EarlyStopping):
    """skorch's ``EarlyStopping`` that, on a resumed fit, recounts its misses from the history."""

    def on_train_begin(self, net, **kwargs):
        super().on_train_begin(net, **kwargs)
        for row in net.history:
            if self._is_score_improved(row[self.monitor]):
                self.dynamic_threshold_ = self._calc_new_threshold(row[self.monitor])
                self.misses_ = 0
                self.best_epoch_ = row["epoch"]
            else:
                self.misses_ += 1

    def stopped(self) -> bool:
        return self.misses_ >= self.patience


def cosine_factor(epoch: int, total: int) -> float:
    """Cosine annealing from 1 to 0 over ``total`` epochs, in closed form (CosineAnnealingLR's
    recursive form drifts by rounding and depends on where a run was resumed)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch, total) / total))


class EpochCheckpoint(Callback):
    """Per-epoch checkpoint in one file (weights, optimizer, history) plus the best weights.

    ``fingerprint`` names what was trained (params and data); a checkpoint with another
    fingerprint is ignored, so a changed param never resumes a stale run.
    """

    def __init__(self, dirname: str | Path, fingerprint: str, monitor: str = "valid_acc_best"):
        self.dirname = dirname
        self.fingerprint = fingerprint
        self.monitor = monitor

    @property
    def last_path(self) -> Path:
        return Path(self.dirname) / "last.pt"

    @property
    def best_path(self) -> Path:
        return Path(self.dirname) / "best.pt"

    def on_epoch_end(self, net, **kwargs):
        if net.history[-1, self.monitor]:
            save_torch(self.best_path, {"module": net.module_.state_dict(), "fingerprint": self.fingerprint,
                                   "epoch": len(net.history)})
        save_torch(self.last_path, {**net_state(net), "fingerprint": self.fingerprint})

    def load_last(self, net) -> bool:
        """Restore weights, optimizer and history from ``last.pt`` if it matches; return whether."""
        state = _load(self.last_path)
        if state is None or state.get("fingerprint") != self.fingerprint:
            if state is not None:
                log.info("ignoring %s: it was made by other params or data", self.last_path)
            return False
        restore_net_state(net, state)
        return True

    def load_best(self, net) -> None:
        state = _load(self.best_path)
        if state is None or state.get("fingerprint") != self.fingerprint:
            raise RuntimeError(f"{self.best_path}: no best checkpoint for this run")
        net.module_.load_state_dict(state["module"])


def net_state(net) -> dict:
    """What a fit goes on from: weights, optimizer state and history. The history drops the
    per-batch rows (large, not needed to resume) and the timings (so that two runs write
    identical checkpoints)."""
    history = [{k: v for k, v in row.items() if k not in ("batches", "dur")} for row in net.history]
    return {"module": net.module_.state_dict(), "optimizer": net.optimizer_.state_dict(),
            "history": json.dumps(history)}


def restore_net_state(net, state: dict) -> None:
    """Put an initialized ``net`` back where :func:`net_state` found it."""
    from skorch.history import History

    net.module_.load_state_dict(state["module"])
    net.optimizer_.load_state_dict(state["optimizer"])
    net.history_ = History(json.loads(state["history"]))


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a checkpoint we cannot read is as good as none
        log.warning("ignoring unreadable checkpoint %s (%s)", path, err)
        return None


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Classifier(NeuralNetClassifier):
    """skorch's ``NeuralNetClassifier`` that runs the module in ``precision`` (``fp32``/``bf16``).

    bf16 is autocast around the forward pass only: the logits come back as fp32, so the loss,
    the scores and the predicted probabilities are computed in fp32, and Adam updates fp32 weights.
    """

    def __init__(self, module, *args, precision: str = "fp32", **kwargs):
        super().__init__(module, *args, **kwargs)
        self.precision = precision

    def initialize_module(self):
        super().initialize_module()
        to_compute_layout(self.module_, self.precision, str(self.device))
        return self

    def infer(self, x, **fit_params):
        with autocast(self.precision, str(self.device)):
            y = super().infer(x, **fit_params)
        return y.float()


def build_net(*, model_name: str, input_size: int, head: str, lrn: bool, lr: float, batch_size: int,
              dropout: float, max_epochs: int, patience: int, seed: int, valid: ImageSet,
              augment: bool = False, progress_bar: bool = False, extra_callbacks: list | None = None,
              device: str | None = None, precision: str = "fp32") -> Classifier:
    """The seed's skorch ``NeuralNetClassifier`` with its callbacks, made resumable and fast.

    Callbacks: progress bar (optional), cosine LR per epoch, early stopping on ``valid_acc``,
    train accuracy (from the cached training predictions, no extra pass), per-epoch reseeding.
    ``precision`` may be ``auto`` (:func:`resolve_precision`); ``net.precision`` says what it became.
    """
    device = device or pick_device()
    callbacks: list = [
        ("seed_each_epoch", SeedEachEpoch(seed)),
        ("train_acc", EpochScoring("accuracy", name="train_acc", on_train=True, lower_is_better=False)),
        ("lr_scheduler", LRScheduler(policy=LambdaLR, lr_lambda=partial(cosine_factor, total=max_epochs),
                                     event_name="lr")),
        ("early_stopping", ResumableEarlyStopping(monitor="valid_acc", lower_is_better=False,
                                                  patience=patience)),
    ]
    if progress_bar:
        callbacks.insert(0, ("progress_bar", ProgressBar()))
    callbacks.extend(extra_callbacks or [])
    return Classifier(
        MODELS[model_name],
        module__input_size=input_size,
        module__dropout=dropout,
        module__head=head,
        module__lrn=lrn,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=lr,
        batch_size=batch_size,
        max_epochs=max_epochs,
        train_split=predefined_split(valid),
        iterator_train=BatchIterator,
        iterator_train__shuffle=True,
        iterator_train__augment=augment,
        iterator_valid=BatchIterator,
        callbacks=callbacks,
        classes=list(range(N_CLASSES)),
        device=device,
        verbose=1 if progress_bar else 0,
        precision=resolve_precision(precision, device),
    )


def fit(net: NeuralNetClassifier, train: ImageSet, checkpoint: EpochCheckpoint | None = None,
        on_resume: Callable[[NeuralNetClassifier], None] | None = None, seed: int = 0) -> int:
    """Fit ``net`` for ``max_epochs`` in all, resuming an interrupted run from ``checkpoint``.

    A checkpoint of a run that had finished (all epochs, or stopped early) is not resumed: that
    is a forced rerun, and it trains from scratch, seeded as a fresh process would be.
    Returns the number of epochs this call trained. With a checkpoint, the best weights are
    loaded at the end (skorch's ``Checkpoint(load_best=True)``, but resumable and atomic).
    """
    net.initialize()
    done = 0
    if checkpoint is not None and checkpoint.load_last(net):
        done = len(net.history)
        stopper = dict(net.callbacks_).get("early_stopping")
        if stopper is not None:
            stopper.on_train_begin(net)  # replay the history: had it stopped early?
        if done >= net.max_epochs or (stopper is not None and stopper.stopped()):
            log.info("%s is of a finished run: training again from scratch", checkpoint.last_path)
            seed_everything(seed)
            net.initialize()
            done = 0
        else:
            log.info("resuming from %s after epoch %d", checkpoint.last_path, done)
            if on_resume is not None:
                on_resume(net)
    net.partial_fit(train, y=None, epochs=net.max_epochs - done)
    if checkpoint is not None:
        checkpoint.load_best(net)
    return len(net.history) - done
