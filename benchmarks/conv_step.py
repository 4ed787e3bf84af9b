"""How fast does each convolution implementation compute each layer, against PyTorch's own convolution there?

    python benchmarks/conv_step.py [--model AlexNetSmall] [--batch 256] [--rounds 6] [--steps 4]
    python benchmarks/conv_step.py --force c2.conv=im2col-gemm [--force c3.conv=fourier ...]
    python benchmarks/conv_step.py --smoke      # a tiny batch, one round: does it run (not a record)

By default, a table per precision (bf16 where the CPU has it natively, and fp32): for each
convolution of the model and each implementation in ``fmnist.conv.CONV_IMPLEMENTATIONS`` that
computes it (checked in float64 against ``F.conv2d`` on a small batch first), the layer's forward
and backward pass (autocast as the train stage runs it, the input gradient where the layer has
one, the weight and bias gradients), timed on the input PyTorch's own plan (the ``pytorch``
setting) hands that layer, and its speed against PyTorch's convolution on the same layer (above 1
is faster), the output's error against float64, and what the rules table plans there. The
implementations take turns, round after round, on the same input, so that a shared machine's
drift slows them alike; the ratio of the medians is what counts.

With ``--force LAYER=IMPLEMENTATION`` (repeatable): a whole training step (autocast forward, fp32
loss, backward, fused Adam) with the model planned as the rules plan it and those layers forced,
against the same step under the ``auto`` and ``pytorch`` plans, in turns, with each step's
fraction of the matmul peak. glibc's malloc and the threads are set as the train stage sets them.
The last line holds the ratios as ``key=value``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import flops_per_image, matmul_gflops, parse_forced, set_conv_plan

from fmnist.allocator import tune_malloc_for
from fmnist.compute import Compute, resolve_precision, set_threads
from fmnist.conv import CONV_IMPLEMENTATIONS, Conv2d, make_plan
from fmnist.conv.geometry import Geometry
from fmnist.model import MODELS


def layer_inputs(model: torch.nn.Module, compute: Compute, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each convolution of ``model`` (planned) receives in a forward pass of ``x``,
    with its strides (the memory layout the layer before hands on)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, args[0].detach().clone()))
             for name, m in model.named_modules() if isinstance(m, Conv2d)]
    with torch.no_grad(), compute.autocast():
        model.train()(x)  # dropout and the planned training implementations: the train pass's layouts
    for hook in hooks:
        hook.remove()
    return seen


TRANSFORMS = ("winograd", "fourier")  # "same" convolutions only: they take no stride or padding


def computes(model: torch.nn.Module, layer: str, impl: str, x: torch.Tensor) -> bool:
    """Whether ``impl`` computes ``layer``'s convolution (forward and input gradient) on inputs
    like ``x``: float64, two images, against ``F.conv2d``."""
    if impl in TRANSFORMS and not Geometry.of(model.get_submodule(layer), x.shape[-1]).same:
        return False  # and their transforms of a large map would take minutes to build
    probe = copy.deepcopy(model).double()
    set_conv_plan(probe, Compute("cpu", "fp32"), probe.input_size, "pytorch", {layer: impl})
    conv = probe.get_submodule(layer)
    xs = x[:2].double().contiguous().requires_grad_()
    try:
        y = conv(xs)
        ref = torch.nn.functional.conv2d(xs, conv.weight, conv.bias, conv.stride, conv.padding)
        if y.shape != ref.shape or not torch.allclose(y, ref, rtol=1e-7, atol=1e-9):
            return False
        g = torch.randn_like(ref)
        (gx,) = torch.autograd.grad(y, xs, g)
        (rx,) = torch.autograd.grad(ref, xs, g)
        return torch.allclose(gx, rx, rtol=1e-7, atol=1e-9)
    except (RuntimeError, ValueError):  # an implementation that does not take this geometry says so
        return False


def layer_table(base: torch.nn.Module, size: int, batch: int, precision: str, rounds: int, steps: int,
                summary: dict[str, float]) -> None:
    compute = Compute("cpu", precision)
    torch.manual_seed(0)
    pytorch = compute.layout(copy.deepcopy(base))
    set_conv_plan(pytorch, compute, size, "pytorch")
    inputs = layer_inputs(pytorch, compute, torch.rand(batch, 1, size, size))
    planned = make_plan(base, compute, size).convolutions("train")
    print(f"[{precision}] each convolution's forward + backward, median of {rounds} rounds x {steps} passes, "
          f"in turns; against PyTorch's convolution on the same layer and input\n")
    print("| layer | input | implementation | ms | vs pytorch | output error | planned |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for layer, x in inputs.items():
        models = {}
        for impl in CONV_IMPLEMENTATIONS:
            if impl == "pytorch" or computes(base, layer, impl, x):
                model = compute.layout(copy.deepcopy(base))
                set_conv_plan(model, compute, size, "pytorch", {layer: impl})
                models[impl] = model.get_submodule(layer)
        first = layer == next(iter(inputs))  # the images: no input gradient
        grad = torch.randn_like(models["pytorch"](x.float()), dtype=torch.float32)
        exact = torch.nn.functional.conv2d(x.double(), models["pytorch"].weight.double(),
                                           models["pytorch"].bias.double(), models["pytorch"].stride,
                                           models["pytorch"].padding)

        def step(conv: torch.nn.Module) -> torch.Tensor:
            conv.zero_grad(set_to_none=True)
            xs = x if first else x.requires_grad_()
            with compute.autocast():
                y = conv(xs)
            y.float().backward(grad)
            return y

        errors = {}
        for impl, conv in models.items():  # warm-up, and the output's error against float64
            y = step(conv)
            errors[impl] = float((y.double() - exact).norm() / exact.norm())
        times: dict[str, list[float]] = {impl: [] for impl in models}
        for _ in range(rounds):
            for impl, conv in models.items():
                t = time.perf_counter()
                for _ in range(steps):
                    step(conv)
                times[impl].append((time.perf_counter() - t) / steps)
        ref = statistics.median(times["pytorch"])
        shape = "x".join(map(str, x.shape[1:]))
        for impl, ts in times.items():
            median = statistics.median(ts)
            mark = "yes" if planned[layer] == impl else ""
            print(f"| {layer} | {shape} | {impl} | {median * 1e3:.2f} | {ref / median:.2f}x | "
                  f"{errors[impl]:.1e} | {mark} |")
            summary[f"{precision}.{layer}.{impl}"] = ref / median
    print()


def step_table(base: torch.nn.Module, model_name: str, size: int, batch: int, precision: str, forced: dict,
               rounds: int, steps: int, peak_side: int, summary: dict[str, float]) -> None:
    compute = Compute("cpu", precision)
    sides = {}
    for name, setting, force in (("pytorch", "pytorch", None), ("auto", "auto", None), ("forced", "auto", forced)):
        model = compute.layout(copy.deepcopy(base)).train()
        plan = set_conv_plan(model, compute, size, setting, force)
        sides[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True), plan)
    x = torch.rand(batch, 1, size, size)
    y = torch.randint(0, 10, (batch,))

    def step(model, opt) -> None:
        opt.zero_grad(set_to_none=True)
        with compute.autocast():
            out = model(x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        opt.step()

    for model, opt, _ in sides.values():  # warm-up
        step(model, opt)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, (model, opt, _) in sides.items():
            t = time.perf_counter()
            for _ in range(steps):
                step(model, opt)
            times[name].append((time.perf_counter() - t) / steps)
    flops, peak = flops_per_image(model_name, size), matmul_gflops(precision, side=peak_side)
    ref = statistics.median(times["pytorch"])
    print(f"[{precision}] training step, median of {rounds} rounds x {steps} steps, in turns "
          f"(matmul peak {peak:.0f} GFLOP/s)")
    for name, ts in times.items():
        median = statistics.median(ts)
        layers = ", ".join(f"{k}:{v}" for k, v in sides[name][2].convolutions("train").items())
        print(f"  {name:8s} {median * 1e3:7.1f} ms  {batch / median:6.0f} images/s  "
              f"{batch / median * flops / 1e9 / peak * 100:5.1f}% of the peak  x{ref / median:.2f} of pytorch  "
              f"[{layers}]")
        summary[f"{precision}.{name}"] = ref / median
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="AlexNetSmall", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=4, help="timed passes per implementation per round")
    p.add_argument("--threads", type=int, default=0, help="0: one per core")
    p.add_argument("--precision", default="both", choices=("both", "bf16", "fp32"),
                   help="both: bf16 (where the CPU has it natively) and fp32")
    p.add_argument("--force", action="append", default=[], metavar="LAYER=IMPLEMENTATION",
                   help="time a training step with this layer forced to this implementation (repeatable)")
    p.add_argument("--smoke", action="store_true", help="batch 4, one round of one pass: does it run")
    args = p.parse_args()
    if args.smoke:
        args.batch, args.rounds, args.steps = 4, 1, 1
    forced = parse_forced(args.force)

    torch.manual_seed(0)
    base = MODELS[args.model]()
    size = base.input_size
    tune_malloc_for(size)  # glibc's malloc as the train stage sets it
    threads = set_threads(args.threads)
    if forced:  # a bad layer name fails here, before any timing
        set_conv_plan(copy.deepcopy(base), Compute("cpu", "fp32"), size, "auto", forced)
    native_bf16 = resolve_precision("auto", "cpu") == "bf16"
    precisions = {"both": ["bf16", "fp32"] if native_bf16 else ["fp32"]}.get(args.precision, [args.precision])
    print(f"{args.model} at {size} px, batch {args.batch}, {threads} threads, torch {torch.__version__}\n")
    summary: dict[str, float] = {}
    for precision in precisions:
        if forced:
            step_table(base, args.model, size, args.batch, precision, forced, args.rounds, args.steps,
                       256 if args.smoke else 0, summary)
        else:
            layer_table(base, size, args.batch, precision, args.rounds, args.steps, summary)
    print(" ".join(f"{k}={v:.2f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
