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

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="", help="default: model.precision from params.yaml")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()

    from torch.profiler import ProfilerActivity, profile

    from stage_net import stage_net

    net, batches, what = stage_net(args.precision, args.batches + 2)
    for batch in batches[:2]:
        net.train_step(batch)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for batch in batches[2:]:
            net.train_step(batch)
    print(f"{what}, {args.batches} training steps")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                             max_name_column_width=40, max_shapes_column_width=60))


if __name__ == "__main__":
    main()
