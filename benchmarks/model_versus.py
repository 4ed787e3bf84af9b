"""Is this checkout's training step faster or slower than another commit's, timed in turns in one process?

    python benchmarks/model_versus.py --rev <commit> [--rounds 20] [--steps 4] [--precision bf16]
    python benchmarks/model_versus.py --rev HEAD --rounds 1 --steps 1 --batch 8      # does it run

The host's speed drifts between processes by more than a change of a few percent, so this loads
``src/fmnist/model.py`` as it was at ``--rev`` beside this checkout's, builds AlexNetSmall from each
with the same weights, and times the same training step (autocast forward, fp32 cross-entropy,
backward, fused Adam, as the stage's net; batch 256 of random 67 px images) on each, ``--steps``
steps a turn, alternating which side goes first, round after round. A model whose convolutions
are planned (:mod:`fmnist.conv`) is planned as the train stage plans it; a ``model.py`` that
computes its convolutions itself (a commit without fmnist.conv) runs as it is. glibc's malloc and the threads are set as the
train stage sets them. Prints the medians and their ratio; the last line is ``key=value``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT

import fmnist.model
from fmnist.allocator import tune_malloc_for
from fmnist.compute import Compute, resolve_precision, set_threads
from fmnist.conv import Conv2d, plan_model


def short_rev(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def model_at(rev: str, tmp: Path):
    """``src/fmnist/model.py`` at ``rev``, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:src/fmnist/model.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    path = tmp / "model_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("model_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the commit to compare against (the baseline)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=4, help="timed steps per side per round")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precision", default="auto", help="auto, bf16 or fp32")
    args = p.parse_args()

    tune_malloc_for(67)
    threads = set_threads(0)
    compute = Compute("cpu", resolve_precision(args.precision, "cpu"))
    rev = short_rev(args.rev)
    with tempfile.TemporaryDirectory() as tmp:
        modules = {rev: model_at(rev, Path(tmp)), "this checkout": fmnist.model}
    torch.manual_seed(0)
    state = modules[rev].AlexNetSmall(dropout=0.3).state_dict()
    x = torch.rand(args.batch, 1, 67, 67)
    y = torch.randint(0, 10, (args.batch,))
    sides = {}
    for name, module in modules.items():
        model = module.AlexNetSmall(dropout=0.3)
        model.load_state_dict(state)
        model = compute.layout(model).train()
        if any(isinstance(m, Conv2d) for m in model.modules()):
            plan_model(model, compute, 67)
        sides[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True))

    def step(model, opt) -> None:
        opt.zero_grad(set_to_none=True)
        with compute.autocast():
            out = model(x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        opt.step()

    for side in sides.values():  # warm-up
        for _ in range(2):
            step(*side)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            t = time.perf_counter()
            for _ in range(args.steps):
                step(*sides[name])
            times[name].append((time.perf_counter() - t) / args.steps)
    base, now = statistics.median(times[rev]), statistics.median(times["this checkout"])
    print(f"AlexNetSmall at 67 px, batch {args.batch}, {compute.precision}, {threads} threads; {args.rounds} rounds "
          f"of {args.steps} steps a side, in turns")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"  {name:14s} median {median * 1e3:6.1f} ms a step ({args.batch / median:.0f} images/s), "
              f"fastest {min(ts) * 1e3:6.1f} ms")
    print(f"rev={rev} precision={compute.precision} baseline_step_ms={base * 1e3:.1f} step_ms={now * 1e3:.1f} "
          f"speedup={base / now:.3f}")


if __name__ == "__main__":
    main()
