"""AlexNet and AlexNetSmall: shapes, head width from the input size, init, the notebook's head."""

from __future__ import annotations

import pytest
import torch

from fmnist.model import AlexNet, AlexNetSmall, ConvReLU, LinearReLU, feature_size


@pytest.mark.parametrize("cls, size, first_linear", [(AlexNetSmall, 67, 256), (AlexNet, 227, 9216),
                                                     (AlexNetSmall, 99, 256 * 2 * 2)])
def test_output_and_head_follow_input_size(cls, size, first_linear):
    torch.manual_seed(0)
    model = cls(input_size=size).eval()
    assert model.l1.linear.in_features == first_linear
    with torch.no_grad():
        out = model(torch.rand(2, 1, size, size))
    assert out.shape == (2, 10)


def test_feature_size_matches_the_seed_summary():
    assert feature_size(67) == 1  # (B, 256, 1, 1), as the notebook's torchinfo summary shows
    assert feature_size(227) == 6  # (B, 256, 6, 6)


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
