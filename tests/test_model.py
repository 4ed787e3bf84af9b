"""AlexNet and AlexNetSmall: shapes, head width from the input size, init, the notebook's head, and
state dicts that load across convolution settings and from files written before fmnist.conv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fmnist.compute import Compute
from fmnist.conv import plan_model
from fmnist.model import AlexNet, AlexNetSmall, ConvReLU, LinearReLU, ModelSpec, feature_size, min_input_size
from fmnist.predict import load_model, predict_proba

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("cls, size, first_linear", [(AlexNetSmall, 67, 256), (AlexNet, 227, 9216),
                                                     (AlexNetSmall, 99, 256 * 2 * 2)])
def test_output_and_head_follow_input_size(cls, size, first_linear):
    torch.manual_seed(0)
    model = cls(input_size=size).eval()
    assert model.l1.linear.in_features == first_linear
    with torch.no_grad():
        out = model(torch.rand(2, 1, size, size))
    assert out.shape == (2, 10)


def test_feature_size_comes_from_the_layers_and_matches_the_seed_summary():
    assert feature_size(67) == 1  # (B, 256, 1, 1), as the notebook's torchinfo summary shows
    assert feature_size(227) == 6  # (B, 256, 6, 6)
    assert min_input_size() == 67
    model = AlexNetSmall()
    model.p2.stride = 1  # the layers are the only description of the geometry: pool2 then leaves 5x5
    assert model.feature_side(67) == 2


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="too small; allowed: 67 or more"):
        AlexNetSmall(input_size=60)


def test_init_he_for_convs_xavier_for_linears_zero_bias():
    torch.manual_seed(0)
    model = AlexNetSmall()
    convs = [m for m in model.modules() if isinstance(m, ConvReLU)]
    linears = [m for m in model.modules() if isinstance(m, LinearReLU)]
    assert len(convs) == 5 and len(linears) == 2
    for block in convs:
        assert torch.count_nonzero(block.conv.bias) == 0
        fan_in = block.conv.weight[0].numel()
        assert block.conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15)
    lin = model.l2.linear
    assert torch.count_nonzero(lin.bias) == 0
    assert lin.weight.std().item() == pytest.approx((2 / (lin.in_features + lin.out_features)) ** 0.5, rel=0.15)


def test_building_on_the_meta_device_draws_no_random_numbers():
    """``ModelSpec.conv_plan`` builds the module on the meta device: that must not move the seeded
    generator, or planning would change the weights the stage then initialises."""
    state = torch.random.get_rng_state()
    ModelSpec("AlexNetSmall", 67, 0.5).conv_plan(Compute("cpu", "fp32"))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_linear_head_gives_signed_logits_notebook_head_does_not():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 67, 67)
    with torch.no_grad():
        linear = AlexNetSmall(head="linear").eval()(x)
        notebook = AlexNetSmall(head="notebook").eval()(x)
    assert (linear < 0).any()
    assert (notebook >= 0).all()  # ReLU on the logits: what the notebook got wrong


def test_lrn_is_optional():
    assert isinstance(AlexNetSmall(lrn=True).n1, torch.nn.LocalResponseNorm)
    assert isinstance(AlexNetSmall().n1, torch.nn.Identity)


class PlainAlexNetSmall(nn.Module):
    """AlexNetSmall written with torch.nn's own layers only, in the paper's order (ReLU before the
    pool), with the attribute names whose state-dict keys every saved model.pt uses."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Module(), nn.Module()
        self.c1.conv, self.c2.conv = nn.Conv2d(1, 96, 11, stride=4), nn.Conv2d(96, 256, 5, padding=2)
        self.c3, self.c4, self.c5 = nn.Module(), nn.Module(), nn.Module()
        self.c3.conv, self.c4.conv = nn.Conv2d(256, 384, 3, padding=1), nn.Conv2d(384, 384, 3, padding=1)
        self.c5.conv = nn.Conv2d(384, 256, 3, padding=1)
        self.l1, self.l2 = nn.Module(), nn.Module()
        self.l1.linear, self.l2.linear = nn.Linear(256, 128), nn.Linear(128, 128)
        self.l3 = nn.Linear(128, 10)

    def forward(self, x):
        relu, pool = nn.functional.relu, nn.MaxPool2d(3, 2)
        x = pool(relu(self.c1.conv(x)))
        x = pool(relu(self.c2.conv(x)))
        x = pool(relu(self.c5.conv(relu(self.c4.conv(relu(self.c3.conv(x)))))))
        x = relu(self.l2.linear(relu(self.l1.linear(x.flatten(1)))))
        return self.l3(x)


@pytest.mark.parametrize("setting", ["auto", "pytorch"])
def test_a_state_dict_of_torch_nn_layers_loads_and_gives_the_same_outputs(setting):
    torch.manual_seed(0)
    plain = PlainAlexNetSmall().eval()
    model = AlexNetSmall().eval()
    assert model.state_dict().keys() == plain.state_dict().keys()
    model.load_state_dict(plain.state_dict())
    plan = plan_model(model, Compute("cpu", "fp32"), 67, setting)
    assert (set(plan.convolutions("infer").values()) == {"pytorch"}) == (setting == "pytorch")
    x = torch.rand(8, 1, 67, 67)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-5)
    plain.load_state_dict(model.state_dict())  # and back


def test_a_model_file_written_before_fmnist_conv_loads_and_predicts_the_same():
    """``fixtures/model-v1.pt`` was written by ``save_model`` before the convolutions moved to
    fmnist.conv (no ``conv`` in its spec, no plan in the file), with the probabilities that code
    predicted for the fixture's images in fp32."""
    module, spec = load_model(FIXTURES / "model-v1.pt")
    assert spec.conv == "auto" and spec.model_name == "AlexNetSmall"
    expected = np.load(FIXTURES / "model-v1-expected.npz")
    prob = predict_proba(module, expected["images"], spec.input_size, Compute("cpu", "fp32"))
    np.testing.assert_allclose(prob, expected["prob"], rtol=1e-5, atol=1e-6)
