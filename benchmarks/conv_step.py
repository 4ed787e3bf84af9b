"""One training step, side by side on the same batch: plain convolutions, the transformed and matmul
paths, the dense-matrix idea, and Adam's foreach and fused kernels.

    python benchmarks/conv_step.py [--batch 256] [--rounds 6] [--steps 4] [--threads 0]
    python benchmarks/conv_step.py --model AlexNet --batch 64 --rounds 3 --steps 2

Builds the model once and copies it per variant, same weights: ``conv`` (every layer a plain
``nn.Conv2d``), ``transformed`` (:func:`fmnist.model.transformed_conv2d`: Winograd on AlexNetSmall's
3x3 maps, Fourier on conv2's 7x7), ``matmul``
(:func:`fmnist.model.matmul_conv2d`, im2col GEMMs, on the 3x3 maps and conv1), ``dense`` (the 3x3
maps as one dense matrix product each, :func:`dense_conv2d` below: the issue's first idea, kept
here to measure), ``default`` (the model's own choice: matmul, and the row-GEMM weight gradient on
conv2, in bf16; transformed in fp32; against ``matmul`` it shows what the row-GEMM path gives), and
``default`` with Adam's ``foreach`` and ``fused`` kernels. Each takes the same training step (autocast forward,
fp32 loss, backward, Adam) on the same random batch, in turns, round after round, in bf16 (where
the CPU has it natively) and in fp32. A shared machine slows the variants alike within a round,
so the ratios of the medians are what count, by wall clock and by this process's CPU time (less
sensitive to other processes' load). The matmul peaks (2048x2048) are measured in the same
process for the fraction-of-peak column. glibc's malloc is set as the train stage sets it. About 2 minutes at the defaults on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from fmnist.allocator import tune_malloc_for  # noqa: E402
from fmnist.compute import Compute, resolve_precision, set_threads  # noqa: E402
from fmnist.model import MODELS, ConvReLU, paths_taken, plain_convolutions  # noqa: E402
from train import flops_per_image, matmul_gflops  # noqa: E402  (benchmarks/train.py)


def _tap_index(side: int, kernel: int, padding: int) -> torch.Tensor:
    """For a stride-1 convolution on a ``side`` x ``side`` map: the kernel tap (``ky * kernel + kx``)
    that links input position ``i`` to output position ``o``, or ``kernel**2`` (a zero) where
    none does; flattened over ``(i, o)``, positions row-major."""
    pos = torch.arange(side)
    ky = pos[:, None] - pos[None, :] + padding  # (iy, oy)
    valid = (ky >= 0) & (ky < kernel)
    tap = ky[:, None, :, None] * kernel + ky[None, :, None, :]  # (iy, ix, oy, ox)
    tap = torch.where(valid[:, None, :, None] & valid[None, :, None, :], tap, kernel * kernel)
    return tap.reshape(-1)


_TAPS: dict[tuple[int, int, int, torch.device], torch.Tensor] = {}


def dense_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (stride 1, output as large as the input) as
    one matrix product, ``(B, S*S*C_in) @ (S*S*C_in, S*S*C_out)``: the kernel is scattered into a
    matrix that maps every input pixel and channel to every output pixel and channel.

    On a small map this is the same number of multiply-adds as the convolution (on 3x3 with a 3x3
    kernel both count the zero padding: 81 tap-pairs per channel pair), but as one large GEMM,
    which runs near the matmul peak, where oneDNN's convolution backward does poorly on maps
    this small. The matrix is rebuilt from ``weight`` on every call (``index_select``: autograd
    sums its gradient back into the kernel), so the parameters stay the convolution's own.
    Under autocast the matrix is built in the autocast dtype. Returns ``(B, C_out, S, S)``,
    channels-last in memory.
    """
    n, c_in, side, _ = x.shape
    c_out, _, kernel, _ = weight.shape
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    key = (side, kernel, padding, x.device)
    if key not in _TAPS:
        _TAPS[key] = _tap_index(side, kernel, padding).to(x.device)
    taps = _TAPS[key]
    # (C_in, K*K + 1, C_out): the taps and a zero, so that a gather along dim 1 lays out the matrix
    # with rows (C_in, i) and columns (o, C_out) without a further copy.
    w = weight.to(dtype).permute(1, 2, 3, 0).reshape(c_in, kernel * kernel, c_out)
    w = torch.nn.functional.pad(w, (0, 0, 0, 1))
    matrix = w.index_select(1, taps).reshape(c_in * side * side, side * side * c_out)
    rows = x.to(dtype).reshape(n, c_in * side * side)  # (B, C_in * S * S), rows (C_in, i)
    if bias is None:
        y = rows @ matrix
    else:
        y = torch.addmm(bias.to(dtype).repeat(side * side), rows, matrix)
    return y.view(n, side, side, c_out).permute(0, 3, 1, 2)  # (B, C_out, S, S), channels-last


def set_path(module: torch.nn.Module, path: str) -> torch.nn.Module:
    """``conv``: plain convolutions; ``default``: the model's own choice per layer and precision;
    ``matmul``: that path in either precision, on the layers where the model takes it in bf16;
    ``transformed``: Winograd, or else Fourier, where the model takes them in fp32
    (:meth:`fmnist.model.ConvReLU.suits`); ``dense``: the 3x3-map layers as :func:`dense_conv2d`."""
    if path == "conv":
        return plain_convolutions(module)
    if path == "default":
        return module
    choices = {"transformed": ("winograd", "fourier"), "dense": ("winograd",)}.get(path, (path,))
    for m in module.modules():
        if isinstance(m, ConvReLU):
            def forced(x, m=m):
                if not (x.device.type == "cpu" and torch.is_grad_enabled()):
                    return "plain"
                suited = [p for p in choices if m.suits(p, max(x.shape[-2:]))]
                if not suited:
                    return "plain"
                if path == "dense":  # on the layers Winograd suits, by dense_conv2d (its _fast below)
                    return "dense"
                return suited[0]
            m.path = forced
            if path == "dense":
                m._fast = lambda x, _path, c=m.conv: dense_conv2d(x, c.weight, c.bias, c.padding[0])
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="AlexNetSmall", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    p.add_argument("--threads", type=int, default=0, help="0: one per core")
    args = p.parse_args()

    size = 227 if args.model == "AlexNet" else 67
    tune_malloc_for(size)  # glibc's malloc as the train stage sets it
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    base = MODELS[args.model](input_size=size)
    flops = flops_per_image(args.model, size)
    peak = {"fp32": matmul_gflops("fp32"), "bf16": matmul_gflops("bf16")}
    print(f"{args.model} at {size} px, batch {args.batch}, {threads} threads, torch {torch.__version__}; "
          f"{flops / 1e9:.3f} GFLOP per image (forward + backward, the plain convolutions' count: the "
          f"transformed paths do fewer, so their fraction of peak can pass 100%)")
    print(f"matmul 2048x2048: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    print(f"the model's own fast paths (training): fp32 {paths_taken(base, size) or 'none'}, bf16 "
          f"{paths_taken(base, size, torch.autocast('cpu', dtype=torch.bfloat16)) or 'none'}\n")
    x = torch.rand(args.batch, 1, size, size)
    y = torch.randint(0, 10, (args.batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    summary = {}
    precisions = ["bf16", "fp32"] if resolve_precision("auto", "cpu") == "bf16" else ["fp32"]
    for precision in precisions:
        compute = Compute("cpu", precision)
        variants = {}
        for name, path, adam in (("conv", "conv", {}), ("dense", "dense", {}), ("transformed", "transformed", {}),
                                 ("matmul", "matmul", {}), ("default", "default", {}),
                                 ("default+foreach", "default", {"foreach": True}),
                                 ("default+fused", "default", {"fused": True})):
            model = compute.layout(set_path(copy.deepcopy(base), path)).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, **adam)
            variants[name] = (model, opt)

        def step(model, opt):
            opt.zero_grad()
            with compute.autocast():
                out = model(x)
            loss = loss_fn(out.float(), y)
            loss.backward()
            opt.step()
            return loss.item()

        for v in variants.values():  # warm-up
            step(*v)
        times = {name: [] for name in variants}
        cpu = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, v in variants.items():
                t, c = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    step(*v)
                times[name].append((time.perf_counter() - t) / args.steps)
                cpu[name].append((time.process_time() - c) / args.steps)
        ref, ref_cpu = statistics.median(times["conv"]), statistics.median(cpu["conv"])
        print(f"[{precision}] training step, median (min) of {args.rounds} rounds x {args.steps} steps, wall "
              f"clock and this process's CPU time")
        for name, ts in times.items():
            med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
            ips = args.batch / med
            print(f"  {name:12s} {med * 1e3:7.1f} ms ({min(ts) * 1e3:7.1f})  {ips:6.0f} images/s  "
                  f"{ips * flops / 1e9 / peak[precision] * 100:5.1f}% of the {precision} peak  "
                  f"x{ref / med:.2f} of conv;  CPU {med_cpu * 1e3:7.1f} ms, x{ref_cpu / med_cpu:.2f}")
            summary[f"{precision}_{name}"] = ref / med
            summary[f"{precision}_{name}_cpu"] = ref_cpu / med_cpu
        print()
    print(" ".join(f"{k}={v:.2f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
