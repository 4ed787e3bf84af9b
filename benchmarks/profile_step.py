"""Where does a training step of the train stage's own net spend its time, operator by operator?

    python benchmarks/profile_step.py [--precision auto|fp32|bf16] [--batches 6] [--rows 15]
    python benchmarks/profile_step.py --batches 1 --batch-size 16 --rows 3    # does it run

Builds the net as the train stage does (default params, skorch, every callback, the convolution
plan of ``model.conv``) and runs torch.profiler over ``--batches`` training steps of its batch
size after two warm-up steps, on random images (the cost of a step does not depend on the
pixels). Prints the operators by self CPU time, with input shapes, so a convolution's forward and
backward show up per layer.
"""

from __future__ import annotations

import argparse

from common import stage_net


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", default="", help="default: model.precision from params.yaml")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=0, help="default: train.batch_size from params.yaml")
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()

    from torch.profiler import ProfilerActivity, profile

    net, batches, what = stage_net(args.precision, args.batches + 2, batch_size=args.batch_size)
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
