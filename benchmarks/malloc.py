"""The train stage's step under glibc's malloc defaults and as the stage sets it, side by side.

    python benchmarks/malloc.py [--rounds 5] [--steps 24] [--precision auto|fp32|bf16]

Each variant runs ``--steps`` training steps of the train stage's own net (default params, after
two warm-up steps; ``benchmarks/stage_net.py``) in a fresh process, since malloc settings are
per process; the variants take turns, round after round, and the medians are compared:

* ``before``: glibc's defaults, and torch's deterministic mode, which fills every new tensor with
  NaN (a debugging aid): the stage until this benchmark was written,
* ``no-fill``: glibc's defaults, no fill,
* ``heap+fill``: freed blocks kept in the heap (:func:`fmnist.allocator.keep_freed_blocks`), fill on,
* ``stage``: what the stage does now: freed blocks kept, no fill.

Prints images/s, minor page faults per step (fresh pages the kernel had to hand out) and peak
resident memory. About 2 minutes at the defaults on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {"before": (False, True), "no-fill": (False, False), "heap+fill": (True, True), "stage": (True, False)}


def child(variant: str, steps: int, precision: str) -> dict:
    import torch

    from stage_net import stage_net

    heap, fill = VARIANTS[variant]
    net, batches, what = stage_net(precision, steps + 2, tune_malloc=heap)
    if fill:  # seed_everything no longer turns deterministic mode on for a CPU
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = True
    for batch in batches[:2]:
        net.train_step(batch)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for batch in batches[2:]:
        net.train_step(batch)
    seconds = time.perf_counter() - start
    return {"images_per_s": steps * net.batch_size / seconds, "what": what,
            "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--precision", default="", help="default: model.precision from params.yaml")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.precision)))
        return
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                                  "--precision", args.precision], capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{runs['stage'][0]['what']}: {args.steps} steps per run, {args.rounds} runs per variant in turns, medians")
    base = statistics.median(r["images_per_s"] for r in runs["before"])
    for name, rs in runs.items():
        speed = statistics.median(r["images_per_s"] for r in rs)
        print(f"  {name:10s} {speed:6.0f} images/s  {speed / base:5.2f}x   "
              f"{statistics.median(r['faults_per_step'] for r in rs):7.0f} page faults per step   "
              f"peak {max(r['peak_mb'] for r in rs):5.0f} MB   (runs: "
              + ", ".join(f"{r['images_per_s']:.0f}" for r in rs) + ")")


if __name__ == "__main__":
    main()
