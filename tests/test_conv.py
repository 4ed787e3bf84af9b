"""fmnist.conv: each implementation computes F.conv2d at every layer of both models, the plan is the
rules table read at each layer, and a real fit runs exactly the plan."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from fmnist.batches import ImageSet
from fmnist.compute import Compute
from fmnist.conv import (CONV_IMPLEMENTATIONS, POOL_IMPLEMENTATIONS, RULES, Conv2d, MaxPool2d, Plan, make_plan,
                         map_sides, plan_model, plan_of, set_plan)
from fmnist.conv.__main__ import plan_tables
from fmnist.conv.fourier import fourier_transform
from fmnist.conv.geometry import Geometry
from fmnist.conv.im2col import im2col, kernel_windows
from fmnist.conv.layers import LayerPlan
from fmnist.conv.layout import CHANNELS_LAST_POOL_MAX_MAP, is_batch_last
from fmnist.conv.plan import MODES
from fmnist.conv.winograd import WINOGRAD_POINTS, winograd_points, winograd_transform
from fmnist.model import MODELS, AlexNet, AlexNetSmall, ModelSpec
from fmnist.params import HyperParams
from fmnist.training import FitSettings, build_net, fit
from helpers import ROOT

PRECISIONS = ("fp32", "bf16")
# the autograd node each implementation's output hangs from in a pass with gradients
GRAD_FN = {"im2col-gemm": "_Im2colConv2dBackward", "row-gemm": "_RowGemmConv2dBackward",
           "winograd": "_TransformedConv2dBackward", "fourier": "_TransformedConv2dBackward"}


def conv_layers(cls) -> list[tuple[str, str, Geometry, Conv2d]]:
    """``(model, layer, geometry, layer)`` for every convolution of ``cls`` at its own input size."""
    model = cls()
    return [(cls.__name__, name, Geometry.of(layer, side), layer)
            for name, layer, side in map_sides(model, model.input_size) if isinstance(layer, Conv2d)]


LAYERS = conv_layers(AlexNetSmall) + conv_layers(AlexNet)


def computes(implementation: str, g: Geometry) -> bool:
    """Whether ``implementation`` computes a convolution of geometry ``g`` at all (fast or not)."""
    if implementation in ("pytorch", "im2col-gemm"):
        return True
    if implementation == "onednn-channels-last":
        return g.in_channels == 1
    if implementation == "winograd":
        return g.same and winograd_points(g.side, g.kernel) <= len(WINOGRAD_POINTS)
    return g.same  # row-gemm, fourier


def picked(g: Geometry) -> set[str]:
    """Every implementation the rules table picks for ``g`` in some precision and pass."""
    return {make_choice(g, precision, mode) for precision in PRECISIONS for mode in MODES}


def make_choice(g: Geometry, precision: str, mode: str) -> str:
    """The rules table read by hand: the first rule of this precision and pass that applies."""
    return next((r.implementation for r in RULES if r.precision == precision and mode in r.modes and r.applies(g)),
                "pytorch")


@pytest.mark.parametrize("model, name, geometry, layer", LAYERS, ids=[f"{m}-{n}" for m, n, *_ in LAYERS])
def test_every_implementation_is_conv2d_in_float64_at_every_layer_of_both_models(model, name, geometry, layer):
    """Forward and all three gradients against ``F.conv2d`` in float64, at the layer's own
    channels, kernel, stride, padding and map side, with the output's gradient arriving NCHW and
    channels-last (as the bf16 model's ReLU and pool hand it back)."""
    implementations = [i for i in CONV_IMPLEMENTATIONS if computes(i, geometry)]
    assert picked(geometry) <= set(implementations)  # every implementation the rules can pick here is checked
    torch.manual_seed(0)
    conv = Conv2d(layer.in_channels, min(layer.out_channels, 64), layer.kernel_size, layer.stride,
                  layer.padding).double()
    x = torch.randn(2, layer.in_channels, geometry.side, geometry.side, dtype=torch.float64)
    y = conv._conv_forward(x, conv.weight, conv.bias)
    for grad in (torch.randn_like(y), torch.randn_like(y).contiguous(memory_format=torch.channels_last)):
        want = None
        for implementation in ["pytorch"] + implementations:
            conv.zero_grad()
            leaf = x.clone().requires_grad_()
            out = CONV_IMPLEMENTATIONS[implementation](conv, leaf)
            out.backward(grad)
            got = [out.detach(), leaf.grad, conv.weight.grad.clone(), conv.bias.grad.clone()]
            if want is None:
                want = got
                continue
            for part, g, w in zip(("output", "grad x", "grad w", "grad b"), got, want):
                torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=f"{model} {name} {implementation}: {part}")


@pytest.mark.parametrize("stride, padding, side, kernel", [(1, 1, 3, 3), (1, 1, 2, 3), (1, 1, 1, 3), (1, 2, 3, 5),
                                                         (4, 0, 19, 11), (2, 1, 6, 3)])
def test_implementations_pass_gradcheck_on_small_geometries(stride, padding, side, kernel):
    torch.manual_seed(0)
    conv = Conv2d(3, 4, kernel, stride, padding).double()
    g = Geometry.of(conv, side)
    x = torch.randn(2, 3, side, side, dtype=torch.float64, requires_grad=True)
    checked = 0
    for implementation, f in CONV_IMPLEMENTATIONS.items():
        if implementation != "onednn-channels-last" and computes(implementation, g):
            assert torch.autograd.gradcheck(lambda x, w, b: f(conv, x) if (w, b) else None,
                                            (x, conv.weight, conv.bias)), implementation
            checked += 1
    assert checked >= 2


def test_winograd_takes_at_most_its_points_and_says_so():
    assert winograd_transform(3, 3).t_in.shape == (25, 9)  # 5 points per axis: 25 products, not 81
    with pytest.raises(ValueError, match="a 7 px map with a 5 px kernel needs 11 Winograd points; allowed: 5"):
        winograd_transform(7, 5)


def test_fourier_takes_the_shortest_odd_circle_that_holds_the_same_output():
    """9 points per axis for conv2's 7x7 map and 5x5 kernel, not the linear convolution's 11: 41
    complex points, not 61 (exactness at that length: the float64 tests above)."""
    assert fourier_transform(7, 5).points == 9 * 5 - 4
    assert fourier_transform(3, 3).points == 5 * 3 - 2  # 3 + 1 is even: 5, with no Nyquist column


@pytest.mark.parametrize("implementation", ["winograd", "fourier"])
def test_transformed_convolutions_in_fp32_are_as_close_to_float64_as_onednns(implementation):
    """On AlexNetSmall's shapes (conv2's 7x7 maps for Fourier, conv4's 3x3 for Winograd), the
    output and both gradients in fp32 stay near oneDNN's own rounding of the float64 result: the
    Fourier transform within 4x of oneDNN's error, Winograd's points amplify rounding (within 32x)."""
    torch.manual_seed(0)
    channels, side, kernel = (96, 7, 5) if implementation == "fourier" else (384, 3, 3)
    conv = Conv2d(channels, 64, kernel, padding=kernel // 2)
    with torch.no_grad():
        conv.weight.normal_(0, (2 / (kernel * kernel * channels)) ** 0.5)
        conv.bias.normal_(0, 0.1)
    x = torch.randn(16, channels, side, side).relu()
    grad = torch.randn(16, 64, side, side)
    results = {}
    for name, dtype in (("float64", torch.float64), ("pytorch", torch.float32), (implementation, torch.float32)):
        layer = Conv2d(channels, 64, kernel, padding=kernel // 2).to(dtype)
        layer.load_state_dict(conv.state_dict())
        leaf = x.to(dtype).clone().requires_grad_()
        out = CONV_IMPLEMENTATIONS["pytorch" if name == "float64" else name](layer, leaf)
        out.backward(grad.to(dtype))
        results[name] = [t.double() for t in (out.detach(), leaf.grad, layer.weight.grad, layer.bias.grad)]
    factor = 4 if implementation == "fourier" else 32
    for i, part in enumerate(("output", "grad x", "grad w", "grad b")):
        exact = results["float64"][i]
        ours, onednn = ((results[n][i] - exact).norm() / exact.norm() for n in (implementation, "pytorch"))
        assert ours <= factor * onednn, f"{implementation} {part}: {ours:.2g} against oneDNN's {onednn:.2g}"


def test_padded_windows_reuse_one_zero_bordered_buffer_per_shape():
    """``kernel_windows`` pads into a buffer kept per shape and writes only its inside: a second
    input of the same shape gets the same memory, its border still zero; ``im2col`` always copies
    out of it; an input that autograd records pads as ``F.pad`` does."""
    torch.manual_seed(0)
    first, second = (torch.randn(2, 5, 3, 3, dtype=torch.bfloat16) for _ in range(2))
    pointer = kernel_windows(first, 3, 1, 1).data_ptr()
    cols = im2col(second, 3, 1, 1)  # a copy, taken before the buffer is reused again
    assert kernel_windows(second, 3, 1, 1).data_ptr() == pointer
    for x, got in ((second, cols), (first, im2col(first, 3, 1, 1))):
        unfolded = torch.nn.functional.unfold(x.float(), 3, padding=1)  # (B, C*9, 9): columns (c, ky, kx)
        want = unfolded.view(2, 5, 3, 3, 9).permute(0, 4, 2, 3, 1).reshape(18, 45)  # rows (b, y, x), (ky, kx, c)
        assert torch.equal(got.float(), want)
    leaf = first.float().requires_grad_()
    kernel_windows(leaf, 3, 1, 1).sum().backward()
    windows_per_pixel = torch.tensor([[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]])  # the border: no gradient
    assert torch.equal(leaf.grad, windows_per_pixel.expand(2, 5, 3, 3))


@pytest.mark.parametrize("layout", ["batch-last", "nchw", "channels-last", "large nchw"])
def test_the_layout_aware_pool_gives_nn_maxpools_bits_and_keeps_batch_last_maps_batch_last(layout):
    torch.manual_seed(0)
    side = CHANNELS_LAST_POOL_MAX_MAP + 2 if layout == "large nchw" else 7
    x = torch.rand(4, 6, side, side)
    x[:, :, :3] = 0.5  # windows of equal values: both kernels must take the first maximum
    if layout == "batch-last":
        x = x.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
        assert is_batch_last(x)
    elif layout == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    ours, theirs = x.clone().requires_grad_(), x.contiguous().requires_grad_()
    pool = MaxPool2d(3, 2)
    got, want = POOL_IMPLEMENTATIONS["layout-aware"](pool, ours), torch.nn.MaxPool2d(3, 2)(theirs)
    assert torch.equal(got, want)
    assert is_batch_last(got) == (layout == "batch-last")
    grad = torch.randn_like(want)
    got.backward(grad)
    want.backward(grad)
    assert torch.equal(ours.grad, theirs.grad)


@pytest.mark.parametrize("cls", list(MODELS.values()))
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_plan_is_the_rules_table_read_at_each_layers_geometry(cls, precision):
    """What the plan holds follows from ``RULES`` and the geometry the layers declare: the first
    rule of the precision and pass that applies, else PyTorch's; max-pools layout-aware."""
    model = cls()
    compute = Compute("cpu", precision)
    plan = make_plan(model, compute, model.input_size)
    expected = {}
    for name, layer, side in map_sides(model, model.input_size):
        if isinstance(layer, Conv2d):
            g = Geometry.of(layer, side)
            expected[name] = LayerPlan("conv", *(make_choice(g, precision, mode) for mode in MODES))
        elif isinstance(layer, MaxPool2d):
            expected[name] = LayerPlan("pool", "layout-aware", "layout-aware")
    assert plan.layers == expected and len(expected) == 8
    pytorch = make_plan(model, compute, model.input_size, "pytorch")
    assert {(p.train, p.infer) for p in pytorch.layers.values()} == {("pytorch", "pytorch")}
    on_gpu = make_plan(model, Compute("cuda", precision), model.input_size)
    assert {(p.train, p.infer) for p in on_gpu.layers.values()} == {("pytorch", "pytorch")}


def test_the_rules_take_alexnetsmalls_layers_and_alexnets_bf16_conv1():
    """Every rule takes some layer of the two models (none is dead), and AlexNet at 227 px in bf16
    trains its one-channel conv1 as im2col GEMMs, its other layers on PyTorch's convolution."""
    used = {(r.implementation, r.precision) for r in RULES
            for _, _, g, _ in LAYERS if any(make_choice(g, r.precision, m) == r.implementation for m in r.modes)}
    assert used == {(r.implementation, r.precision) for r in RULES}
    plan = make_plan(AlexNet(), Compute("cpu", "bf16"), 227)
    assert plan.convolutions("train") == {"c1.conv": "im2col-gemm"} | {f"c{i}.conv": "pytorch" for i in range(2, 6)}
    assert set(plan.convolutions("infer").values()) == {"pytorch"}


def test_the_architecture_page_shows_the_plans_the_rules_make():
    """docs/architecture.md holds ``python -m fmnist.conv``'s tables as they are now."""
    assert plan_tables() in (ROOT / "docs" / "architecture.md").read_text()


def test_a_plan_is_checked_saved_and_logged_per_layer():
    model = AlexNetSmall()
    with pytest.raises(ValueError, match=r"^model.conv='fast' is not allowed; allowed: one of 'auto', 'pytorch'$"):
        make_plan(model, Compute("cpu", "fp32"), 67, "fast")
    plan = plan_model(model, Compute("cpu", "fp32"), 67)
    assert plan_of(model) is plan and model.c3.conv.plan == plan.layers["c3.conv"]
    assert Plan.from_dict(plan.to_dict()) == plan
    assert plan.as_params()["conv_plan.c2.conv"] == "train=fourier infer=fourier" and len(plan.as_params()) == 8
    with pytest.raises(ValueError, match="no implementation 'fft'"):
        set_plan(model, plan.with_layer("c2.conv", LayerPlan("conv", "fft", "fft")))
    with pytest.raises(ValueError, match="the plan names layers"):
        set_plan(AlexNetSmall(lrn=True).c1, plan)


def tiny_sets(n_train=64, n_valid=32):
    rng = np.random.default_rng(0)
    labels = np.arange(n_train + n_valid) % 10
    images = rng.integers(0, 255, (n_train + n_valid, 67, 67), dtype=np.uint8)
    return ImageSet(images[:n_train], labels[:n_train]), ImageSet(images[n_train:], labels[n_train:])


@pytest.mark.parametrize("setting", ["auto", "pytorch"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_real_fit_runs_exactly_the_plan(monkeypatch, precision, setting):
    """``build_net`` + ``fit`` for one epoch of two batches and a validation pass: every call into
    an implementation is counted per layer and pass, and the training outputs hang from the
    autograd node of the implementation planned; ``pytorch`` runs none of fmnist.conv's own."""
    calls: Counter = Counter()  # (layer module, pass, implementation)

    def counting(table: dict, implementation: str):
        real = table[implementation]

        def call(layer, x):
            mode = "train" if torch.is_grad_enabled() else "infer"
            calls[(layer, mode, implementation)] += 1
            out = real(layer, x)
            if mode == "train" and isinstance(layer, Conv2d):
                node = type(out.grad_fn).__name__
                assert (node == GRAD_FN[implementation]) if implementation in GRAD_FN else (
                    node not in GRAD_FN.values()), (implementation, node)
            return out
        return call

    for table in (CONV_IMPLEMENTATIONS, POOL_IMPLEMENTATIONS):
        for implementation in list(table):
            monkeypatch.setitem(table, implementation, counting(table, implementation))
    train, valid = tiny_sets()
    spec = ModelSpec("AlexNetSmall", 67, 0.5, precision="auto", conv=setting)
    net = build_net(spec, HyperParams(lr=1e-3, batch_size=32, dropout=0.5), Compute("cpu", precision),
                    FitSettings(max_epochs=1, patience=5, seed=0), valid)
    fit(net, train)
    names = {m: n for n, m in net.module_.named_modules()}
    calls = Counter({(names[layer], mode, impl): n for (layer, mode, impl), n in calls.items()})
    plan = plan_of(net.module_)
    assert plan == net.plan == spec.conv_plan(Compute("cpu", precision))
    expected = Counter()
    for name, layer_plan in plan.layers.items():
        expected[(name, "train", layer_plan.train)] = 2  # two training batches
        expected[(name, "infer", layer_plan.infer)] = 1  # one validation batch
    assert calls == expected
    ours = {impl for _, _, impl in calls} - {"pytorch"}
    if setting == "pytorch":
        assert not ours
    else:
        assert ours >= ({"im2col-gemm", "row-gemm"} if precision == "bf16" else {"winograd", "fourier"})


@pytest.mark.parametrize("precision", ["fp64", "bf16"])
def test_the_two_settings_load_each_others_state_and_agree(precision):
    """``auto`` and ``pytorch`` give the same outputs and gradients. fp64 (the fp32 plan run in
    float64) agrees to 1e-10: in fp32 a ReLU whose input lies within rounding of zero can open on
    one side and stay shut on the other. bf16 rounds its products in another order: the whole
    differs by well under 2% (each implementation is a few % from float64)."""
    torch.manual_seed(0)
    x = torch.rand(8, 1, 67, 67)
    auto, plain = AlexNetSmall(dropout=0.0), AlexNetSmall(dropout=0.0)
    plain.load_state_dict(auto.state_dict())
    auto.load_state_dict(plain.state_dict())
    compute = Compute("cpu", "bf16" if precision == "bf16" else "fp32")
    results = []
    for model, setting in ((auto, "auto"), (plain, "pytorch")):
        if precision == "fp64":
            model.double()
        compute.layout(model)
        plan_model(model, compute, 67, setting)
        with compute.autocast():
            out = model(x.double() if precision == "fp64" else x)
        out.float().square().sum().backward()
        results.append({"output": out.detach().float()} | {n: p.grad for n, p in model.named_parameters()})
    assert set(plan_of(auto).convolutions("train").values()) != {"pytorch"}
    tol = 2e-2 if precision == "bf16" else 1e-10
    for name, want in results[1].items():
        err = ((results[0][name].double() - want.double()).norm() / want.double().norm()).item()
        assert err <= tol, f"{name}: relative error {err:.3g}"
