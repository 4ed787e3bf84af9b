"""What several benchmark scripts share: peak memory, fresh processes, the matmul peak, the FLOPs a
training step counts, the convolution plan a benchmark sets or forces, and the train stage's own net.

The scripts import it as ``from common import ...``: Python puts a script's own folder first on
``sys.path``, so ``python benchmarks/<script>.py`` finds it; the package itself comes from the
project's environment (``make setup`` installs it editable).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "data" / "split"  # the split stage's output, which the train stage reads


# -- memory and processes ------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux keeps it across ``execve``: a child starts with
    its parent's peak, so a parent that measures in children stays small)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, name: str, *args, env: dict[str, str] | None = None) -> dict:
    """Run measurement ``name`` of ``script`` in a fresh process (``script --child name args``,
    answered by :func:`child_main`), so that its peak memory and malloc settings are its own;
    ``env`` replaces the environment. Returns the child's result; a failed child ends the run
    with its error."""
    out = subprocess.run([sys.executable, script, "--child", name, *map(str, args)], capture_output=True,
                         text=True, cwd=ROOT, env=os.environ.copy() if env is None else env)
    if out.returncode != 0:
        sys.exit(f"error: {Path(script).name} --child {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(children: dict[str, Callable[..., dict]], argv: list[str],
               finish: Callable[[dict], None] | None = None) -> None:
    """The child's side of :func:`run_child`: run ``children[argv[0]]`` on the other arguments
    (digits as ints), add its peak memory (and whatever ``finish`` adds) and print it as JSON."""
    name, *rest = argv
    result = children[name](*(int(a) if a.isdigit() else a for a in rest))
    result["peak_mb"] = peak_rss_mb()
    if finish is not None:
        finish(result)
    print(json.dumps(result))


# -- the machine's peak --------------------------------------------------------------------------

def sync(device: str) -> None:
    """Wait for the GPU, so that a timer measures the work and not its queueing."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def matmul_gflops(precision: str = "fp32", device: str = "cpu", side: int = 0, repeats: int = 10) -> float:
    """GFLOP/s of a square matmul in ``precision`` (``fp32`` or ``bf16``) on ``device``, best of
    ``repeats``; ``side`` 0: 2048 on a CPU, 8192 on a GPU (which needs a bigger product to reach
    its peak)."""
    import torch

    n = side or (8192 if device.startswith("cuda") else 2048)
    dtype = {"bf16": torch.bfloat16}.get(precision, torch.float32)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    c = a @ b  # the product goes into c each time: no allocation is timed (a malloc setting can halve it)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_image(model_name: str = "AlexNetSmall", size: int = 67) -> float:
    """Forward + backward FLOPs of the model for one image, counted by torch's flop counter on
    PyTorch's own convolutions (the ``pytorch`` plan): the same count whichever implementation a
    plan picks, so fractions of peak compare like for like. Winograd and Fourier do fewer
    multiply-adds, so a step on them can pass 100% of the peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fmnist.compute import Compute
    from fmnist.conv import plan_model
    from fmnist.model import MODELS

    model = MODELS[model_name](input_size=size)
    plan_model(model, Compute("cpu", "fp32"), size, "pytorch")
    x = torch.rand(8, 1, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 8


# -- convolution plans ---------------------------------------------------------------------------

def parse_forced(pairs: list[str]) -> dict[str, str]:
    """``["c1.conv=im2col-gemm", ...]`` (``--force``) as ``{layer: implementation}``; a bad pair
    ends the run with a one-line error."""
    from fmnist.conv import CONV_IMPLEMENTATIONS

    forced = {}
    for pair in pairs:
        layer, sep, impl = pair.partition("=")
        if not sep or not layer:
            sys.exit(f"error: --force {pair!r}: expected LAYER=IMPLEMENTATION, e.g. c3.conv=im2col-gemm")
        if impl not in CONV_IMPLEMENTATIONS:
            sys.exit(f"error: --force {pair!r}: no implementation {impl!r}; allowed: {', '.join(CONV_IMPLEMENTATIONS)}")
        forced[layer] = impl
    return forced


def set_conv_plan(module, compute, input_size: int, setting: str = "auto",
                  forced: dict[str, str] | None = None):
    """Plan ``module`` under ``compute`` with ``setting`` (``auto``, or ``pytorch``: every layer on
    ``F.conv2d`` and ``nn.MaxPool2d``, the seed notebook's way), each layer in ``forced``
    computed by the implementation named there in training and inference alike; returns the plan.
    A layer that is not a planned convolution ends the run with a one-line error."""
    from fmnist.conv import LayerPlan, make_plan, set_plan

    plan = make_plan(module, compute, input_size, setting)
    for layer, impl in (forced or {}).items():
        if layer not in plan.convolutions("train"):
            sys.exit(f"error: --force {layer}={impl}: no convolution {layer!r}; allowed: "
                     f"{', '.join(plan.convolutions('train'))}")
        plan = plan.with_layer(layer, LayerPlan("conv", impl, impl))
    set_plan(module, plan)
    return plan


def fast_paths(module) -> str:
    """The layers of ``module`` whose training pass is not PyTorch's own convolution, and by what:
    ``c1.conv:im2col-gemm,c2.conv:row-gemm``, or ``none``."""
    from fmnist.conv import plan_of

    plan = plan_of(module)
    taken = {} if plan is None else {k: v for k, v in plan.convolutions("train").items() if v != "pytorch"}
    return ",".join(f"{layer}:{impl}" for layer, impl in taken.items()) or "none"


# -- the train stage's own net -------------------------------------------------------------------

def stage_net(precision: str = "", n_batches: int = 8, tune_malloc: bool = True, batch_size: int = 0) -> tuple:
    """``(net, batches, description)``: the initialized net as the train stage builds it (default
    params, skorch, every callback) in ``precision`` (default: model.precision from params.yaml),
    and ``n_batches`` training batches of random images from its own iterator (a step's cost does
    not depend on the pixels). ``batch_size`` 0: train.batch_size. ``tune_malloc``: glibc's malloc
    set as the stage sets it (:func:`fmnist.allocator.tune_malloc_for`), else left at its defaults."""
    import numpy as np

    from fmnist.allocator import tune_malloc_for
    from fmnist.batches import ImageSet
    from fmnist.compute import Compute, seed_everything, set_threads
    from fmnist.model import ModelSpec
    from fmnist.params import HyperParams, load_params
    from fmnist.training import FitSettings, build_net

    params = load_params(ROOT / "params.yaml")
    t, size = params.train, params.resize.size
    if tune_malloc:
        tune_malloc_for(size)
    seed_everything(t.seed)
    threads = set_threads(t.threads)
    hp = HyperParams(lr=t.lr, batch_size=batch_size or t.batch_size, dropout=t.dropout)
    rng = np.random.default_rng(0)
    n = hp.batch_size * n_batches
    train = ImageSet(rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 10, n))
    compute = Compute.resolve(precision or params.model.precision, "cpu")
    net = build_net(ModelSpec.of(params.model, size, t.dropout), hp, compute,
                    FitSettings(max_epochs=1, patience=1, seed=t.seed), valid=train)
    net.initialize()
    batches = list(net.get_iterator(train, training=True))
    return net, batches, (f"{params.model.name} at {size} px, batch {hp.batch_size}, {compute.precision}, "
                          f"{threads} threads")
