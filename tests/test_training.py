"""Batching, schedule, and resuming a killed fit to the same weights as an unbroken one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmnist.training import (BatchIterator, EpochCheckpoint, ImageSet, augment_batch, build_net,
                             cosine_factor, fit, seed_everything)


def tiny_sets(n_train=96, n_valid=40, size=67):
    rng = np.random.default_rng(0)
    labels = np.arange(n_train + n_valid) % 10
    images = rng.integers(0, 60, (n_train + n_valid, size, size), dtype=np.uint8)
    for k in range(10):  # a learnable pattern: a bright bar whose row depends on the class
        images[labels == k, 6 * k:6 * k + 5, :] = 220
    return (ImageSet(images[:n_train], labels[:n_train]), ImageSet(images[n_train:], labels[n_train:]))


def test_batches_cover_every_image_once():
    train, _ = tiny_sets()
    torch.manual_seed(0)
    batches = list(BatchIterator(train, batch_size=25, shuffle=True))
    assert len(batches) == len(BatchIterator(train, batch_size=25)) == 4
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (96, 1, 67, 67) and float(x.max()) <= 1.0
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(train.labels.tolist())


def test_augment_keeps_shape_and_flips():
    x = torch.zeros(8, 1, 16, 16)
    x[:, :, :, :4] = 1.0  # a bar on the left
    g = torch.Generator().manual_seed(1)
    out = augment_batch(x, g)
    assert out.shape == x.shape
    right = out[:, 0, :, 8:].sum(dim=(1, 2))
    assert (right > 0).any() and (right == 0).any()  # some flipped, some not


def test_cosine_factor_closed_form():
    assert cosine_factor(0, 8) == 1.0
    assert cosine_factor(4, 8) == pytest.approx(0.5)
    assert cosine_factor(8, 8) == pytest.approx(0.0)


def make_net(valid, checkpoint, epochs=3):
    return build_net(model_name="AlexNetSmall", input_size=67, head="linear", lrn=False, lr=1e-3,
                     batch_size=32, dropout=0.5, max_epochs=epochs, patience=5, seed=7, valid=valid,
                     extra_callbacks=[("checkpoint", checkpoint)], device="cpu")


class StopAfter(Exception):
    pass


def test_resume_gives_the_same_weights_as_an_unbroken_run(tmp_path):
    torch.set_num_threads(1)
    train, valid = tiny_sets()
    seed_everything(7)
    straight_ckpt = EpochCheckpoint(tmp_path / "straight", "fp")
    straight = make_net(valid, straight_ckpt)
    fit(straight, train, straight_ckpt, seed=7)

    seed_everything(7)
    ckpt = EpochCheckpoint(tmp_path / "resumed", "fp")
    broken = make_net(valid, ckpt)
    broken.initialize()
    real_on_epoch_end = ckpt.on_epoch_end

    def die_after_first(net, **kw):  # the checkpoint is written, then the process "dies"
        real_on_epoch_end(net, **kw)
        raise StopAfter

    ckpt.on_epoch_end = die_after_first
    with pytest.raises(StopAfter):
        broken.partial_fit(train, epochs=3)
    assert (tmp_path / "resumed" / "last.pt").is_file()

    seed_everything(1234)  # a fresh process: nothing in memory carries over
    ckpt2 = EpochCheckpoint(tmp_path / "resumed", "fp")
    resumed = make_net(valid, ckpt2)
    trained = fit(resumed, train, ckpt2, seed=7)
    assert trained == 2
    assert [r["valid_acc"] for r in resumed.history] == [r["valid_acc"] for r in straight.history]
    for a, b in zip(straight.module_.state_dict().values(), resumed.module_.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_from_other_params_is_ignored(tmp_path):
    train, valid = tiny_sets()
    ckpt = EpochCheckpoint(tmp_path, "params-A")
    fit(make_net(valid, ckpt, epochs=1), train, ckpt)
    other = EpochCheckpoint(tmp_path, "params-B")
    net = make_net(valid, other, epochs=1)
    assert fit(net, train, other) == 1  # trained from scratch, not resumed


def test_a_finished_run_is_trained_again_not_resumed(tmp_path):
    train, valid = tiny_sets()
    seed_everything(7)
    ckpt = EpochCheckpoint(tmp_path, "fp")
    first = make_net(valid, ckpt, epochs=2)
    fit(first, train, ckpt, seed=7)
    seed_everything(7)
    again = make_net(valid, ckpt, epochs=2)
    assert fit(again, train, ckpt, seed=7) == 2
    for a, b in zip(first.module_.state_dict().values(), again.module_.state_dict().values()):
        assert torch.equal(a, b)
