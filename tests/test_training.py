"""Batching, schedule, and resuming a killed fit to the same weights as an unbroken one."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist.batches import BatchIterator, ImageSet, augment_batch
from fmnist.checkpoint import EpochCheckpoint, fingerprint
from fmnist.compute import Compute, resolve_precision, seed_everything
from fmnist.errors import ParamsError
from fmnist.conv import CONV_IMPLEMENTATIONS, plan_model
from fmnist.model import AlexNetSmall, ModelSpec
from fmnist.params import HyperParams
from fmnist.predict import inference_module, predict_proba
from fmnist.training import FitSettings, build_net, cosine_factor, fit


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


def test_fit_settings_of_the_train_section_reach_the_net():
    import yaml

    from conftest import ROOT
    from fmnist.params import parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update(max_epochs=7, patience=2, seed=11, augment=True, progress_bar=False)
    settings = FitSettings.of(parse_params(raw).train)
    assert settings == FitSettings(max_epochs=7, patience=2, seed=11, augment=True, progress_bar=False)
    valid = ImageSet(np.zeros((4, 67, 67), np.uint8), np.arange(4))
    net = build_net(ModelSpec("AlexNetSmall", 67, 0.5), HyperParams(lr=1e-3, batch_size=2, dropout=0.5),
                    Compute("cpu", "fp32"), settings, valid)
    callbacks = dict(net.callbacks)
    assert net.max_epochs == 7 and net.iterator_train__augment is True and net.verbose == 0
    assert callbacks["early_stopping"].patience == 2 and callbacks["seed_each_epoch"].seed == 11
    assert "progress_bar" not in callbacks
    assert callbacks["lr_scheduler"].kwargs["lr_lambda"].keywords == {"total": 7}


def test_cosine_factor_closed_form():
    assert cosine_factor(0, 8) == 1.0
    assert cosine_factor(4, 8) == pytest.approx(0.5)
    assert cosine_factor(8, 8) == pytest.approx(0.0)


def make_net(valid, checkpoint=None, epochs=3, precision="fp32"):
    return build_net(ModelSpec("AlexNetSmall", 67, 0.5), HyperParams(lr=1e-3, batch_size=32, dropout=0.5),
                     Compute("cpu", precision), FitSettings(max_epochs=epochs, patience=5, seed=7), valid,
                     extra_callbacks=[("checkpoint", checkpoint)] if checkpoint else [])


class StopAfter(Exception):
    pass


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_gives_the_same_weights_as_an_unbroken_run(tmp_path, precision):
    torch.set_num_threads(1)
    train, valid = tiny_sets()
    seed_everything(7)
    straight_ckpt = EpochCheckpoint(tmp_path / "straight", "fp")
    straight = make_net(valid, straight_ckpt, precision=precision)
    fit(straight, train, straight_ckpt, seed=7)

    seed_everything(7)
    ckpt = EpochCheckpoint(tmp_path / "resumed", "fp")
    broken = make_net(valid, ckpt, precision=precision)
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
    resumed = make_net(valid, ckpt2, precision=precision)
    trained = fit(resumed, train, ckpt2, seed=7)
    assert trained == 2
    assert [r["valid_acc"] for r in resumed.history] == [r["valid_acc"] for r in straight.history]
    for a, b in zip(straight.module_.state_dict().values(), resumed.module_.state_dict().values()):
        assert torch.equal(a, b)


def interrupted(folder, fp, train, valid, epochs=2) -> None:
    """A run of ``epochs`` that "dies" once epoch 1's checkpoint is written."""
    seed_everything(7)
    ckpt = EpochCheckpoint(folder, fp)
    net = make_net(valid, ckpt, epochs=epochs)
    net.initialize()
    real_on_epoch_end = ckpt.on_epoch_end

    def die_after_first(net, **kw):
        real_on_epoch_end(net, **kw)
        raise StopAfter

    ckpt.on_epoch_end = die_after_first
    with pytest.raises(StopAfter):
        net.partial_fit(train, epochs=epochs)
    assert (Path(folder) / "last.pt").is_file()


def resumed_epochs(folder, fp, train, valid, epochs=2) -> tuple[int, list[int]]:
    """Epochs a fresh process trains with checkpoint ``fp`` in ``folder``, and its history's epochs."""
    seed_everything(7)
    ckpt = EpochCheckpoint(folder, fp)
    net = make_net(valid, ckpt, epochs=epochs)
    return fit(net, train, ckpt, seed=7), [row["epoch"] for row in net.history]


def test_a_checkpoint_of_other_params_or_code_is_not_resumed(tmp_path, caplog):
    train, valid = tiny_sets(n_train=32, n_valid=20)
    params = {"train": {"lr": 0.001, "max_epochs": 2}, "model": {"name": "AlexNetSmall"}}
    code = ["md5-of-training.py", "md5-of-model.py"]
    made_by = fingerprint(params, code)
    others = {"other params": fingerprint(params | {"train": {"lr": 0.002, "max_epochs": 2}}, code),
              "other code": fingerprint(params, ["md5-of-training.py", "md5-of-an-edited-model.py"])}
    # The control: the same params and code resume after epoch 1, so the check is what stops the others.
    interrupted(tmp_path, made_by, train, valid)
    assert resumed_epochs(tmp_path, made_by, train, valid) == (1, [1, 2])
    for what, other in others.items():
        interrupted(tmp_path, made_by, train, valid)  # one folder, one last.pt, as in checkpoints/train
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fmnist.checkpoint"):
            assert resumed_epochs(tmp_path, other, train, valid) == (2, [1, 2]), what  # from scratch
        assert f"ignoring {tmp_path / 'last.pt'}: it was made by other params, data or code" in caplog.text


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "this ran"))


def test_a_corrupt_or_unsafe_checkpoint_is_refused_and_training_starts_over(tmp_path, caplog):
    train, valid = tiny_sets(n_train=32, n_valid=20)
    interrupted(tmp_path, "fp", train, valid)
    last, marker = tmp_path / "last.pt", tmp_path / "ran.txt"
    good = last.read_bytes()
    state = torch.load(last, weights_only=True)
    damages = {
        "garbage": lambda: last.write_bytes(b"\x00not a checkpoint" * 64),
        "truncated": lambda: last.write_bytes(good[:len(good) // 2]),
        # the right fingerprint: only safe loading stops it
        "a pickled object": lambda: torch.save({**state, "history": Payload(marker)}, last, pickle_module=pickle),
        "not a dict": lambda: torch.save([1, 2, 3], last),
    }
    for damage, write in damages.items():
        write()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fmnist.checkpoint"):
            assert resumed_epochs(tmp_path, "fp", train, valid) == (2, [1, 2]), damage
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and str(last) in warnings[0] and "training starts over" in warnings[0], warnings
        assert not marker.exists()  # the pickled code never ran
    last.write_bytes(good)  # the control: the undamaged file resumes
    assert resumed_epochs(tmp_path, "fp", train, valid) == (1, [1, 2])


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


@pytest.mark.parametrize("amx, avx512_bf16, cuda_bf16, device, expected", [
    (True, True, False, "cpu", "bf16"),
    (False, True, False, "cpu", "bf16"),
    (False, False, False, "cpu", "fp32"),  # emulated bf16 is slower than fp32
    (False, False, True, "cuda", "bf16"),
    (True, True, False, "cuda", "fp32"),  # the GPU decides, not the CPU
])
def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch, amx, avx512_bf16, cuda_bf16, device,
                                                               expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    assert resolve_precision("auto", device) == expected
    assert resolve_precision("fp32", device) == "fp32"
    if device == "cuda" and not cuda_bf16:  # asked for explicitly where the GPU cannot: one line
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
        with pytest.raises(ParamsError, match=r"^model.precision=bf16: Tesla T4 does not support bfloat16; "
                                              r"allowed here: auto or fp32$"):
            resolve_precision("bf16", device)
    elif device == "cpu" and not (amx or avx512_bf16):  # runs, but says it will be slow
        with pytest.warns(RuntimeWarning, match="emulated, slower than fp32"):
            assert resolve_precision("bf16", device) == "bf16"
    else:
        assert resolve_precision("bf16", device) == "bf16"


def test_bf16_trains_channels_last_with_fp32_weights_and_logits():
    train, valid = tiny_sets()
    seed_everything(7)
    net = make_net(valid, epochs=4, precision="bf16")
    net.fit(train, y=None)
    conv = net.module_.c2.conv.weight
    assert conv.dtype == torch.float32 and conv.is_contiguous(memory_format=torch.channels_last)
    assert net.infer(valid.images[:4].unsqueeze(1).float() / 255).dtype == torch.float32
    losses = net.history[:, "train_loss"]
    assert losses[-1] < losses[0] and net.history[-1, "valid_acc"] > 0.3  # chance is 0.1


def test_bf16_predictions_match_fp32():
    train, valid = tiny_sets()
    seed_everything(7)
    net = make_net(valid, epochs=4)
    net.fit(train, y=None)
    module = net.module_.eval()
    images = valid.images.numpy()
    fp32 = predict_proba(module, images, 67, Compute("cpu", "fp32"))
    bf16 = predict_proba(module, images, 67, Compute("cpu", "bf16"))
    assert fp32.dtype == bf16.dtype == np.float32
    assert np.allclose(bf16.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(bf16 - fp32).max() < 0.05  # bf16 keeps 8 bits of mantissa
    assert (bf16.argmax(axis=1) == fp32.argmax(axis=1)).mean() >= 0.95
    assert module.c2.conv.weight.is_contiguous()  # bf16 ran a channels-last copy; the caller's module is as it was


def test_fp32_predicts_on_fmnist_convs_implementations_where_planned_else_frozen_torchscript(monkeypatch):
    """AlexNetSmall at 67 px predicts eagerly on its planned Winograd and Fourier implementations
    (faster than frozen TorchScript there), the same probabilities as ``model.conv: pytorch`` to
    float rounding; a model whose plan takes none of fmnist.conv's convolutions is frozen."""
    torch.manual_seed(0)
    fp32 = Compute("cpu", "fp32")
    fast, plain = AlexNetSmall().eval(), AlexNetSmall().eval()
    plain.load_state_dict(fast.state_dict())
    plan_model(plain, fp32, 67, "pytorch")
    assert inference_module(fast, fp32, 67) is fast
    assert isinstance(inference_module(plain, fp32, 67), torch.jit.ScriptModule)
    images = np.random.default_rng(0).integers(0, 256, (300, 67, 67), dtype=np.uint8)
    got, want = predict_proba(fast, images, 67, fp32, 128), predict_proba(plain, images, 67, fp32, 128)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    seen = []
    real = CONV_IMPLEMENTATIONS["winograd"]
    monkeypatch.setitem(CONV_IMPLEMENTATIONS, "winograd", lambda layer, x: seen.append(layer) or real(layer, x))
    predict_proba(fast, images[:4], 67, fp32)
    assert seen == [fast.c3.conv, fast.c4.conv, fast.c5.conv]


def test_training_steps_hand_on_their_predictions_without_the_graph():
    """EpochScoring caches every step's predictions for the epoch: with their graph attached, each
    step's autograd nodes stayed alive until then, fragmenting the heap (about 23 MB of peak a step
    on the fp32 transformed paths)."""
    from fmnist.model import AlexNetSmall
    from fmnist.training import Classifier

    net = Classifier(AlexNetSmall, max_epochs=1, batch_size=4, train_split=None, optimizer=torch.optim.Adam,
                     verbose=0).initialize()
    net.module_.train()
    step = net.train_step_single((torch.rand(4, 1, 67, 67), torch.randint(0, 10, (4,))))
    assert step["y_pred"].grad_fn is None and step["loss"].grad_fn is not None
