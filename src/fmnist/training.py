"""skorch training: the seed notebook's classifier and callbacks, made resumable and fast.

The classifier runs its module in the precision a stage resolved (:mod:`fmnist.compute`), reads
batches of uint8 images (:mod:`fmnist.batches`) and saves its state per epoch
(:mod:`fmnist.checkpoint`); :func:`fit` is the loop every run goes through.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback, EarlyStopping, EpochScoring, LRScheduler, ProgressBar
from skorch.helper import predefined_split
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from fmnist.batches import BatchIterator, ImageSet
from fmnist.checkpoint import EpochCheckpoint
from fmnist.compute import Compute, seed_everything
from fmnist.conv import Plan, plan_model, set_plan
from fmnist.model import N_CLASSES, ModelSpec
from fmnist.params import HyperParams, TrainParams

log = logging.getLogger(__name__)


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


EPOCH_KEYS = ("train_loss", "valid_loss", "train_acc", "valid_acc", "lr", "dur")


class MlflowEpochLogger(Callback):
    """skorch callback: the epoch's losses, accuracies, learning rate and seconds, step = epoch.

    Unlike skorch's ``MlflowLogger`` it logs into a given run (a :class:`fmnist.tracking.Run`) and
    never ends it, so a search can give each trial its own nested run.
    """

    def __init__(self, run, prefix: str = ""):
        self.run = run
        self.prefix = prefix

    def on_epoch_end(self, net, **kwargs):
        self.log_row(net.history[-1])

    def log_history(self, net) -> None:
        """Log every epoch so far (a resumed fit: the epochs of the interrupted run)."""
        for row in net.history:
            self.log_row(row)

    def log_row(self, row: dict) -> None:
        metrics = {self.prefix + ("epoch_seconds" if k == "dur" else k): row[k] for k in EPOCH_KEYS if k in row}
        self.run.log_metrics(metrics, step=int(row["epoch"]))


class Classifier(NeuralNetClassifier):
    """skorch's ``NeuralNetClassifier`` that runs the module as ``compute`` says (device, fp32/bf16).

    bf16 is autocast around the forward pass only: the logits come back as fp32, so the loss,
    the scores and the predicted probabilities are computed in fp32, and Adam updates fp32 weights.
    The module's convolutions compute by ``plan`` (:mod:`fmnist.conv`; none: planned here, auto).
    """

    def __init__(self, module, *args, compute: Compute = Compute("cpu", "fp32"), plan: Plan | None = None,
                 **kwargs):
        super().__init__(module, *args, device=compute.device, **kwargs)
        self.compute = compute
        self.plan = plan

    def initialize_module(self):
        super().initialize_module()
        self.compute.layout(self.module_)
        if self.plan is None:
            plan_model(self.module_, self.compute, self.module_.input_size)
        else:
            set_plan(self.module_, self.plan)
        return self

    def infer(self, x, **fit_params):
        with self.compute.autocast():
            y = super().infer(x, **fit_params)
        return y.float()

    def train_step_single(self, batch, **fit_params):
        """skorch's step, its predictions handed on without their graph. ``EpochScoring`` caches
        each batch's predictions for the epoch (train accuracy without a second pass); with the
        graph attached, every node of every step stayed alive until the epoch ended. Their saved
        tensors are freed, but the nodes' small allocations, kept between each step's large
        blocks, fragmented glibc's heap (``fmnist.allocator``): on the fp32 transformed paths the
        peak grew by about 23 MB a step and the stage peaked at 5.3 GB, not 1.4 (with large blocks
        forced into ``mmap`` nothing grew, so no tensor was kept)."""
        step = super().train_step_single(batch, **fit_params)
        step["y_pred"] = step["y_pred"].detach()
        return step


@dataclass(frozen=True)
class FitSettings:
    """How a net trains, apart from its hyper-parameters: the train section's settings
    (:meth:`of`), or a search trial's (no early stopping, no augmentation, no progress bar)."""

    max_epochs: int
    patience: int  # epochs without a better valid_acc before early stopping
    seed: int
    augment: bool = False
    progress_bar: bool = False

    @classmethod
    def of(cls, train: TrainParams) -> FitSettings:
        return cls(max_epochs=train.max_epochs, patience=train.patience, seed=train.seed, augment=train.augment,
                   progress_bar=train.progress_bar)


def build_net(spec: ModelSpec, hp: HyperParams, compute: Compute, settings: FitSettings, valid: ImageSet,
              extra_callbacks: list | None = None) -> Classifier:
    """The seed's skorch ``NeuralNetClassifier`` with its callbacks, made resumable and fast.

    ``spec`` is the module to build (its dropout is ``hp.dropout``), ``hp`` the learning rate and
    batch size, ``compute`` where and in which precision it runs, ``settings`` how long and how it
    trains, ``valid`` what it is scored on after each epoch. Callbacks: progress bar (optional),
    cosine LR per epoch, early stopping on ``valid_acc``, train accuracy (from the cached training
    predictions, no extra pass), per-epoch reseeding.
    """
    max_epochs = settings.max_epochs
    callbacks: list = [
        ("seed_each_epoch", SeedEachEpoch(settings.seed)),
        ("train_acc", EpochScoring("accuracy", name="train_acc", on_train=True, lower_is_better=False)),
        ("lr_scheduler", LRScheduler(policy=LambdaLR, lr_lambda=partial(cosine_factor, total=max_epochs),
                                     event_name="lr")),
        ("early_stopping", ResumableEarlyStopping(monitor="valid_acc", lower_is_better=False,
                                                  patience=settings.patience)),
    ]
    if settings.progress_bar:
        callbacks.insert(0, ("progress_bar", ProgressBar()))
    callbacks.extend(extra_callbacks or [])
    return Classifier(
        spec.module_class,
        **{f"module__{k}": v for k, v in spec.module_kwargs().items()},
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        # one kernel per step over all parameters instead of a dozen tensor ops per parameter:
        # at 227 px (58M parameters) the for-loop Adam costs a third of a CPU training step
        optimizer__fused=True,
        lr=hp.lr,
        batch_size=hp.batch_size,
        max_epochs=max_epochs,
        train_split=predefined_split(valid),
        iterator_train=BatchIterator,
        iterator_train__shuffle=True,
        iterator_train__augment=settings.augment,
        iterator_valid=BatchIterator,
        callbacks=callbacks,
        classes=list(range(N_CLASSES)),
        verbose=1 if settings.progress_bar else 0,
        compute=compute,
        plan=spec.conv_plan(compute),
    )


HISTORY_KEYS = ("train_loss", "valid_loss", "train_acc", "valid_acc", "lr", "valid_acc_best")


def epoch_history(net: NeuralNetClassifier) -> list[dict]:
    """One row per epoch: the epoch number, losses, accuracies, learning rate and whether it was
    the best so far; no timings, so that two runs write identical files."""
    return [{k: row[k] for k in HISTORY_KEYS if k in row} | {"epoch": row["epoch"]} for row in net.history]


def fit(net: NeuralNetClassifier, train: ImageSet, checkpoint: EpochCheckpoint | None = None,
        on_resume: Callable[[NeuralNetClassifier], None] | None = None, seed: int = 0) -> int:
    """Fit ``net`` for ``max_epochs`` in all, resuming an interrupted run from ``checkpoint``.

    A checkpoint of a run that had finished (all epochs, or stopped early) is not resumed: that
    is a forced rerun, and it trains from scratch, seeded as a fresh process would be; so does a
    checkpoint that was ignored (made by other params, data or code, or unreadable).
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
    elif checkpoint is not None and checkpoint.last_path.exists():  # ignored: the net may be half restored
        seed_everything(seed)
        net.initialize()
    elif checkpoint is not None and checkpoint.finished():  # EpochCheckpoint.finish left only a record
        log.info("%s is of a finished run: training again from scratch", checkpoint.done_path)
    net.partial_fit(train, y=None, epochs=net.max_epochs - done)
    if checkpoint is not None:
        checkpoint.load_best(net)
    return len(net.history) - done
