"""Where a training step's time goes: torch.profiler over the train stage's own net, by operator.

    PYTHONPATH=src python benchmarks/profile_step.py [--precision auto|fp32|bf16] [--batches 6]

Builds the net as the train stage does (default params, skorch, every callback) and profiles
``--batches`` training steps of its batch size after two warm-up steps, on random images (the
cost of a step does not depend on the pixels). Prints the operators by self CPU time, with
input shapes, so a convolution's forward and backward show up per layer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="", help="default: model.precision from params.yaml")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()

    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fmnist.batches import ImageSet
    from fmnist.compute import Compute, seed_everything, set_threads
    from fmnist.model import ModelSpec
    from fmnist.params import load_params
    from fmnist.training import build_net

    params = load_params(ROOT / "params.yaml")
    t, size = params.train, params.resize.size
    seed_everything(t.seed)
    threads = set_threads(t.threads)
    rng = np.random.default_rng(0)
    n = t.batch_size * (args.batches + 2)
    train = ImageSet(rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 10, n))
    compute = Compute.resolve(args.precision or params.model.precision, "cpu")
    net = build_net(ModelSpec.of(params.model, size, t.dropout), t.hyper_params(), compute, max_epochs=1,
                    patience=1, seed=t.seed, valid=train)
    net.initialize()
    batches = iter(net.get_iterator(train, training=True))
    for _ in range(2):
        net.train_step(next(batches))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.batches):
            net.train_step(next(batches))
    print(f"{params.model.name} at {size} px, batch {t.batch_size}, {compute.precision}, {threads} threads, "
          f"{args.batches} training steps")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                             max_name_column_width=40, max_shapes_column_width=60))


if __name__ == "__main__":
    main()
