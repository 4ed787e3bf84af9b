"""AlexNet and AlexNetSmall: shapes, head width from the input size, init, the notebook's head."""

from __future__ import annotations

import pytest
import torch

from fmnist.model import (CL_POOL_MAX_MAP, ROW_MAJOR_MIN_COLS, SMALL_MAP, TRANSFORMS, WINOGRAD_POINTS, AlexNet,
                          AlexNetSmall, ConvReLU, LinearReLU, MaxPool2d, feature_size, fourier_transform, im2col,
                          is_batch_last, kernel_windows, matmul_conv2d, paths_taken, plain_convolutions,
                          row_gemm_conv2d, transformed_conv2d, winograd_transform)


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


# The fast paths (fmnist.model.matmul_conv2d and row_gemm_conv2d in bf16, transformed_conv2d's Winograd and Fourier
# transforms in fp32): same parameters, outputs and gradients as nn.Conv2d to float rounding, computed another way.

def step_grads(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, dict]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    out.float().square().sum().backward()
    return out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("stride, padding, side, kernel", [(1, 1, 3, 3), (1, 1, 2, 3), (1, 1, 1, 3), (1, 2, 3, 5),
                                                         (4, 0, 19, 11), (2, 1, 6, 3)])
def test_fast_convolutions_match_conv2d_and_their_gradients_are_exact_in_float64(stride, padding, side, kernel):
    torch.manual_seed(0)
    x = torch.randn(2, 3, side, side, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    conv = torch.nn.functional.conv2d(x, w, b, stride, padding)
    fast = {"matmul": lambda *a: matmul_conv2d(*a, stride, padding)}
    if stride == 1 and padding == kernel // 2:  # "same" convolutions: the other paths' geometry
        fast["row-gemm"] = lambda *a: row_gemm_conv2d(*a, padding)
        for kind in TRANSFORMS:
            if kind != "winograd" or side + kernel - 1 <= len(WINOGRAD_POINTS):
                fast[kind] = lambda *a, kind=kind: transformed_conv2d(*a, kind)
    for name, f in fast.items():
        torch.testing.assert_close(f(x, w, b), conv, msg=name)
        assert torch.autograd.gradcheck(f, (x, w, b)), name
    assert fast["matmul"](x, w, b).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels, side, kernel", [(3, 7, 5), (ROW_MAJOR_MIN_COLS // 9 + 1, 3, 3), (100, 7, 5)])
def test_matmul_conv_gradients_equal_conv2ds_on_wide_im2col_and_7px_maps(channels, side, kernel):
    """The branches the small gradchecks above do not reach: the row-major copy of ``grad^T`` (an
    im2col matrix of ``ROW_MAJOR_MIN_COLS`` columns or more), oneDNN's input gradient in
    ``matmul_conv2d`` for a "same" convolution on a map larger than ``SMALL_MAP`` (conv2's 7x7,
    which the model gives to ``row_gemm_conv2d`` in bf16 and the Fourier transform in fp32), and
    those two on conv2's geometry, with a channels-last gradient as the model's ReLU and pooling
    pass back; float64, so equal to rounding."""
    torch.manual_seed(0)
    x = torch.randn(4, channels, side, side, dtype=torch.float64).to(memory_format=torch.channels_last)
    w = torch.randn(8, channels, kernel, kernel, dtype=torch.float64)
    b = torch.randn(8, dtype=torch.float64)
    grad = torch.randn(4, 8, side, side, dtype=torch.float64).to(memory_format=torch.channels_last)
    results = []
    paths = {"matmul": matmul_conv2d}
    if side > SMALL_MAP:
        paths |= {"row-gemm": lambda x, w, b, _, padding: row_gemm_conv2d(x, w, b, padding),
                  "fourier": lambda x, w, b, *_: transformed_conv2d(x, w, b, "fourier")}
    for f in (torch.nn.functional.conv2d, *paths.values()):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        out = f(*leaves, 1, kernel // 2)
        out.backward(grad)
        results.append([out.detach()] + [t.grad for t in leaves])
    assert len(results) == (4 if side > SMALL_MAP else 2)
    for name, want, *got in zip(("output", "grad x", "grad w", "grad b"), *results):
        for path, value in zip(paths, got):
            torch.testing.assert_close(value, want, msg=f"{path}: {name}")


def test_winograd_takes_at_most_its_points_and_says_so():
    assert winograd_transform(3, 3).t_in.shape == (25, 9)  # 5 points per axis: 25 products, not 81
    with pytest.raises(ValueError, match="a 7 px map with a 5 px kernel needs 11 Winograd points; allowed: 5"):
        winograd_transform(7, 5)


def test_fourier_takes_the_shortest_odd_circle_that_holds_the_same_output():
    """9 points per axis for conv2's 7x7 map and 5x5 kernel, not the linear convolution's 11: 41
    complex points, not 61 (exactness at that length: the tests above and below)."""
    assert fourier_transform(7, 5).points == 9 * 5 - 4
    assert fourier_transform(3, 3).points == 5 * 3 - 2  # 3 + 1 is even: 5, with no Nyquist column


@pytest.mark.parametrize("kind", list(TRANSFORMS))
def test_transformed_convolutions_in_fp32_are_as_close_to_float64_as_onednns(kind):
    """On AlexNetSmall's shapes (conv2's 7x7 maps for Fourier, conv4's 3x3 for Winograd), the
    output and both gradients in fp32 stay near oneDNN's own rounding of the float64 result: the
    Fourier transform is as exact as oneDNN (within 4x; measured 0.3-1.3x), Winograd's points
    amplify rounding (within 32x; measured 0.4-13x, the output the most: 1.9e-6 against 1.5e-7)."""
    torch.manual_seed(0)
    channels, side, kernel = (96, 7, 5) if kind == "fourier" else (384, 3, 3)
    x = torch.randn(16, channels, side, side).relu()
    w = torch.randn(64, channels, kernel, kernel) * (2 / (kernel * kernel * channels)) ** 0.5
    b = torch.randn(64) * 0.1
    grad = torch.randn(16, 64, side, side)
    exact = torch.nn.functional.conv2d(*(t.double() for t in (x, w, b)), padding=kernel // 2)
    got = {}
    for name, f in (("onednn", lambda *a: torch.nn.functional.conv2d(*a, padding=kernel // 2)),
                    (kind, lambda *a: transformed_conv2d(*a, kind))):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        out = f(*leaves)
        out.backward(grad)
        got[name] = [out.detach()] + [t.grad for t in leaves]
    leaves = [t.double().requires_grad_() for t in (x, w, b)]
    torch.nn.functional.conv2d(*leaves, padding=kernel // 2).backward(grad.double())
    want = [exact] + [t.grad for t in leaves]
    error = {name: [((v.double() - r).norm() / r.norm()).item() for v, r in zip(values, want)]
             for name, values in got.items()}
    factor = 4 if kind == "fourier" else 32
    for part, ours, onednn in zip(("output", "grad x", "grad w", "grad b"), error[kind], error["onednn"]):
        assert ours <= factor * onednn, f"{kind} {part}: {ours:.2g} against oneDNN's {onednn:.2g}"


def test_padded_windows_reuse_one_zero_bordered_buffer_per_shape():
    """``kernel_windows`` pads into a buffer kept per shape and writes only its inside: a second
    input of the same shape gets the same memory, its border still zero; ``im2col`` always copies
    out of it; an input that autograd records pads as ``F.pad`` does."""
    torch.manual_seed(0)
    first, second = (torch.randn(2, 5, 3, 3, dtype=torch.bfloat16) for _ in range(2))
    windows = kernel_windows(first, 3, 1, 1)
    pointer = windows.data_ptr()
    cols = im2col(second, 3, 1, 1)  # a copy, taken before the buffer is reused again
    assert kernel_windows(second, 3, 1, 1).data_ptr() == pointer
    for x, got in ((second, cols), (first, im2col(first, 3, 1, 1))):
        unfolded = torch.nn.functional.unfold(x.float(), 3, padding=1)  # (B, C*9, 9): columns (c, ky, kx)
        want = unfolded.view(2, 5, 3, 3, 9).permute(0, 4, 2, 3, 1).reshape(18, 45)  # rows (b, y, x), (ky, kx, c)
        assert torch.equal(got.float(), want)
    one_px = [torch.randn(2, 5, 1, 1, dtype=torch.bfloat16) for _ in range(2)]  # windows that reshape could view
    kept = im2col(one_px[0], 3, 1, 1)
    want = kept.clone()
    im2col(one_px[1], 3, 1, 1)
    assert torch.equal(kept, want)  # a copy of its own, not a view of the reused buffer
    leaf = first.float().requires_grad_()
    kernel_windows(leaf, 3, 1, 1).sum().backward()
    windows_per_pixel = torch.tensor([[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]])  # the border: no gradient
    assert torch.equal(leaf.grad, windows_per_pixel.expand(2, 5, 3, 3))


def test_fast_paths_run_where_they_are_faster_and_bf16s_in_training_only():
    model = AlexNetSmall().eval()
    state = torch.random.get_rng_state()
    assert paths_taken(model, 67) == {"c1": "channels-last", "c2": "fourier", "c3": "winograd",
                                      "c4": "winograd", "c5": "winograd"}
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    assert paths_taken(model, 67, bf16) == {"c1": "matmul", "c2": "row-gemm", "c3": "matmul", "c4": "matmul",
                                            "c5": "matmul"}
    assert not model.training and torch.equal(torch.random.get_rng_state(), state)  # left as they were
    x = torch.rand(2, 256, 3, 3)
    assert model.c3.path(x) == "winograd"
    with torch.no_grad():  # prediction: fp32's paths too (fewer multiply-adds forward), not bf16's
        assert model.c3.path(x) == "winograd"
        with bf16:
            assert model.c3.path(x) == "plain"
    assert paths_taken(model, 67, training=False) == paths_taken(model, 67)
    assert paths_taken(model, 67, bf16, training=False) == {}
    conv3 = ConvReLU(384, 384, kernel_size=3, padding=1)  # AlexNet's 13x13 maps at 227 px: oneDNN's own
    for autocast, conv2 in ((torch.autocast("cpu", enabled=False), "fourier"), (bf16, "row-gemm")):
        with autocast:
            assert conv3.path(torch.rand(2, 384, 13, 13)) == "plain"
            assert model.c2.path(torch.rand(2, 96, 7, 7)) == conv2
    assert paths_taken(AlexNet(), 227) == {}
    assert model.c2.path(torch.rand(2, 96, 6, 7)) == "plain"  # a map that is not square: oneDNN's
    plain_convolutions(model)
    assert paths_taken(model, 67) == {} == paths_taken(model, 67, bf16) == paths_taken(model, 67, training=False)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp64", "bf16"])
def test_fast_and_plain_models_load_each_others_state_and_agree(bf16):
    """The fast paths, wired into the model, give the plain model's output and gradients. Without
    bf16 the check runs in float64, where both are exact to 1e-15: in fp32 a ReLU whose input lies
    within rounding of zero can open on one path and stay shut on the other (one such element of
    conv3's 27,648 at batch 8 moved its gradients by 0.5%), and whether one does depends on the
    CPU's kernels. Each path's fp32 rounding is tested on its own above."""
    torch.manual_seed(0)
    x = torch.rand(8, 1, 67, 67)
    plain_model = plain_convolutions(AlexNetSmall(dropout=0.0))
    fast = AlexNetSmall(dropout=0.0)
    assert fast.state_dict().keys() == plain_model.state_dict().keys()
    fast.load_state_dict(plain_model.state_dict())  # a checkpoint of the plain model, and back
    plain_model.load_state_dict(fast.state_dict())
    if bf16:  # as the train stage runs bf16 on a CPU: channels-last under autocast
        fast, plain_model = (m.to(memory_format=torch.channels_last) for m in (fast, plain_model))
    else:
        fast, plain_model, x = fast.double(), plain_model.double(), x.double()
    out_fast, grads_fast = step_grads(fast, x, bf16)
    out_plain, grads_plain = step_grads(plain_model, x, bf16)
    # bf16: the products round their bf16 results in another order. The error is the norm of the
    # difference over the plain result's: one element of a bf16 gradient can differ by 2.8% of the
    # gradient's largest where oneDNN emulates bf16 (a CPU without AMX or AVX512-BF16) while the
    # whole differs by 0.6% at most (each path is 0.4-7% from float64).
    tol = 2e-2 if bf16 else 1e-10
    pairs = {"output": (out_fast, out_plain), **{name: (grads_fast[name], g) for name, g in grads_plain.items()}}
    for name, (got, want) in pairs.items():
        err = ((got - want).norm() / want.norm()).item()
        assert err <= tol, f"{name}: relative error {err:.3g}"


def test_layers_read_their_input_in_the_layout_their_path_runs_fastest_in(monkeypatch):
    """In fp32 training conv1 writes its map channels-last, as pool1 pools it (no copy in); conv2
    (Fourier) reads that, and from there the maps stay batch last: pool2 pools conv2's as it lies,
    conv3-conv5 read theirs as they are, no copy. In the bf16 model everything stays channels-last."""
    import fmnist.model

    seen = []
    real = {"transformed_conv2d": fmnist.model.transformed_conv2d, "row_gemm_conv2d": fmnist.model.row_gemm_conv2d}

    def layout(x: torch.Tensor) -> str:
        if x.is_contiguous(memory_format=torch.channels_last):
            return "channels-last"
        return "NCHW" if x.is_contiguous() else "batch-last" if x.permute(2, 3, 1, 0).is_contiguous() else "other"

    def spy(name):
        def record(x, weight, bias, arg):
            seen.append((arg if name == "transformed_conv2d" else "row-gemm", layout(x)))
            return real[name](x, weight, bias, arg)
        return record

    for name in real:
        monkeypatch.setattr(fmnist.model, name, spy(name))
    torch.manual_seed(0)
    model = AlexNetSmall(dropout=0.0).train()
    conv1_out = []
    model.c1.conv.register_forward_hook(lambda m, args, out: conv1_out.append(
        out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()))
    x = torch.rand(4, 1, 67, 67)
    model(x[1:3])  # a slice: conv1 reads it where it lies
    assert conv1_out == [True]
    assert seen == [("fourier", "channels-last")] + [("winograd", "batch-last")] * 3
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.to(memory_format=torch.channels_last)(x)
    assert seen == [("row-gemm", "channels-last")]
    c1 = ConvReLU(1, 8, kernel_size=11, stride=4)
    want = torch.nn.functional.conv2d(x[1:3], c1.conv.weight, c1.conv.bias, stride=4)
    assert c1.path(x) == "channels-last" and torch.allclose(c1.pre_activation(x[1:3]), want, atol=1e-5)
    assert c1.path(torch.rand(2, 1, 67 + 4, 67 + 4)) == "plain"  # a 16 px map: pooled as it is, NCHW


def test_fast_path_training_steps_are_bit_identical_run_to_run():
    def two_steps() -> dict:
        torch.manual_seed(0)
        model = AlexNetSmall().to(memory_format=torch.channels_last).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = torch.rand(16, 1, 67, 67), torch.randint(0, 10, (16,))
        for _ in range(2):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            torch.nn.functional.cross_entropy(out.float(), y).backward()
            opt.step()
        return model.state_dict()

    first, second = two_steps(), two_steps()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


def test_torchscript_takes_the_plain_convolution():
    torch.manual_seed(0)
    model = AlexNetSmall().eval()
    frozen = torch.jit.optimize_for_inference(torch.jit.script(model))
    x = torch.rand(4, 1, 67, 67)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), rtol=1e-5, atol=1e-5)


def test_batch_last_maps_pool_as_they_lie_with_the_same_bits():
    """A batch-last map (the transformed convolutions' output) pools without a copy into a
    batch-last map, and its gradient comes back batch last: values, the first maximum of a window
    of equal values, and gradients bit for bit as ``nn.MaxPool2d`` on the NCHW map."""
    torch.manual_seed(0)
    x = torch.rand(4, 6, 7, 7)
    x[:, :, :3] = 0.5  # windows of equal values
    batch_last = x.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1).requires_grad_()
    assert is_batch_last(batch_last) and not is_batch_last(x)
    nchw = x.clone().requires_grad_()
    got, want = MaxPool2d(3, 2)(batch_last), torch.nn.MaxPool2d(3, 2)(nchw)
    assert is_batch_last(got) and torch.equal(got, want)
    grad = torch.randn_like(want)
    got.backward(grad)
    want.backward(grad)
    assert is_batch_last(batch_last.grad) and torch.equal(batch_last.grad, nchw.grad)


def test_pooling_before_the_relu_gives_the_same_bits():
    torch.manual_seed(0)
    model = plain_convolutions(AlexNetSmall(dropout=0.0)).to(memory_format=torch.channels_last)
    x = torch.rand(8, 1, 67, 67)

    def relu_then_pool(m, x):  # the layers in the order of the paper
        x = m.p1(m.c1(x))
        x = m.p2(m.c2(x))
        return m.l3(m.l2(m.l1(m.flatten(m.p3(m.c5(m.c4(m.c3(x))))))))

    for bf16 in (False, True):
        outs, grads = [], []
        for forward in (model, lambda x: relu_then_pool(model, x)):
            model.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = forward(x)
            out.float().square().sum().backward()
            outs.append(out)
            grads.append([p.grad.clone() for p in model.parameters()])
        assert torch.equal(outs[0], outs[1])
        assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_small_nchw_maps_pool_in_channels_last_with_the_same_bits(monkeypatch):
    torch.manual_seed(0)
    fast = AlexNetSmall(dropout=0.0)
    slow = AlexNetSmall(dropout=0.0)
    slow.load_state_dict(fast.state_dict())
    for name in ("p1", "p2", "p3"):
        assert isinstance(getattr(fast, name), MaxPool2d)
        setattr(slow, name, torch.nn.MaxPool2d(3, 2))
    x = torch.rand(8, 1, 67, 67)
    x[:, :, :30] = 0  # a blank top half: windows of equal values, where the first maximum must win in both
    pooled = []  # (side, channels-last?) of each map the model's pools hand to max_pool2d
    real = torch.nn.functional.max_pool2d

    def spy(t, *args, **kwargs):
        pooled.append((t.shape[-1], t.is_contiguous(memory_format=torch.channels_last)))
        return real(t, *args, **kwargs)

    outs, grads = [], []
    for model in (fast, slow):
        monkeypatch.setattr(torch.nn.functional, "max_pool2d", spy if model is fast else real)
        out = model(x)
        out.square().sum().backward()
        outs.append(out)
        grads.append([p.grad for p in model.parameters()])
    assert pooled == [(15, True), (7, True), (3, True)]  # the fp32 model is NCHW or batch last; its pools are not
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    big = torch.rand(2, 4, CL_POOL_MAX_MAP + 2, CL_POOL_MAX_MAP + 2)
    pooled.clear()
    monkeypatch.setattr(torch.nn.functional, "max_pool2d", spy)
    assert MaxPool2d(3, 2)(big).is_contiguous() and pooled == [(CL_POOL_MAX_MAP + 2, False)]
