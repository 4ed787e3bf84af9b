"""Where the train stage's time goes outside the training step: skorch's loop and each callback.

    python benchmarks/overhead.py [--images 16384] [--precision auto|fp32|bf16]

Two measurements, in one process:
  * variant (b) of ``benchmarks/train.py`` (the stage's code at the default params, one epoch of
    ``--images`` images, validation in the stage's proportion) with skorch's training and
    validation steps, the batch iterator and every callback event timed: the seconds of each
    part, so that the time outside the steps is accounted for, callback by callback;
  * ``net.train_step`` of the stage's own net against a plain step (zero_grad, autocast forward,
    fp32 loss, backward, fused Adam) on a copy of the same module and the same batches, in turns:
    whether skorch's step itself costs anything.
What a callback costs per epoch (the checkpoint, MLflow, the printed table) the stage pays once
per 55,000 images; the report scales it to that.
"""

from __future__ import annotations

import argparse
import collections
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGE_EPOCH = 55_000  # training images per epoch at the default params


def timed_pipeline(images: int, precision: str) -> tuple[dict, dict, dict, list[float]]:
    """Run variant (b) with its parts timed: ``(result, seconds per part, calls per part, seconds
    of each training step)``."""
    import skorch.net

    import fmnist.batches
    import train

    seconds: dict = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    each: dict[str, list[float]] = collections.defaultdict(list)
    net_cls, iterator_cls = skorch.net.NeuralNet, fmnist.batches.BatchIterator
    saved = {name: getattr(net_cls, name) for name in ("train_step", "validation_step", "notify")}
    saved_iter = iterator_cls.__iter__

    def timing(name, method):
        def timed(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                each[name].append(time.perf_counter() - start)
                seconds[name] += each[name][-1]
                calls[name] += 1
        return timed

    def notify(self, method_name, **kwargs):
        for name, callback in [("net", self), *self.callbacks_]:
            start = time.perf_counter()
            getattr(callback, method_name)(self, **kwargs)
            key = f"callback {name}.{method_name}"
            seconds[key] += time.perf_counter() - start
            calls[key] += 1

    def batches(self):
        it = saved_iter(self)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                seconds["batch iterator"] += time.perf_counter() - start
            calls["batch iterator"] += 1
            yield batch

    net_cls.train_step = timing("training steps", saved["train_step"])
    net_cls.validation_step = timing("validation steps", saved["validation_step"])
    net_cls.notify = notify
    iterator_cls.__iter__ = batches
    try:
        result = train.variant_pipeline(images, train.stage_valid_images(images), 1, precision)
    finally:
        for name, method in saved.items():
            setattr(net_cls, name, method)
        iterator_cls.__iter__ = saved_iter
    return result, seconds, calls, each["training steps"]


def step_against_plain(precision: str, rounds: int = 6, n_batches: int = 6) -> dict[str, float]:
    """Median seconds of ``net.train_step`` and of a plain step, same module copy and batches."""
    import torch

    from stage_net import stage_net

    net, batches, _ = stage_net(precision, n_batches)
    model = copy.deepcopy(net.module_)
    opt = torch.optim.Adam(model.parameters(), lr=net.lr, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()

    def plain(batch):
        x, y = batch
        opt.zero_grad()
        with net.compute.autocast():
            out = model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        opt.step()
        return loss.item()

    def skorch_step(batch):
        return net.train_step(batch)["loss"].item()

    steps = {"skorch's train_step": skorch_step, "plain step": plain}
    for step in steps.values():
        for batch in batches[:2]:
            step(batch)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for batch in batches:
                step(batch)
            times[name].append((time.perf_counter() - start) / len(batches))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16_384, help="training images in the one epoch")
    p.add_argument("--precision", default="", help="default: model.precision from params.yaml")
    args = p.parse_args()

    result, seconds, calls, step_times = timed_pipeline(args.images, args.precision)
    total = result["seconds"]
    print(f"variant (b), one epoch of {args.images} images [{result['precision']}]: {total:.2f} s, "
          f"{result['images_per_s']:.0f} images/s")
    callbacks = {k: v for k, v in seconds.items() if k.startswith("callback")}
    parts = {k: v for k, v in seconds.items() if k not in callbacks}
    parts["callbacks, all events"] = sum(callbacks.values())
    parts["the rest (skorch's loop, history)"] = total - sum(parts.values())
    for name, s in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:40s} {s:7.3f} s  {s / total * 100:5.1f}%" + (f"  ({calls[name]} calls)" if calls[name] else ""))
    print("callbacks above 1 ms in all:")
    for name, s in sorted(callbacks.items(), key=lambda kv: -kv[1]):
        if s >= 1e-3:
            per_epoch = name.endswith(("on_epoch_end", "on_epoch_begin", "on_train_begin", "on_train_end"))
            scaled = f", {s * args.images / STAGE_EPOCH / total * 100:4.1f}% at the stage's epoch size" if per_epoch else ""
            print(f"  {name:52s} {s:7.3f} s  {s / total * 100:5.1f}%{scaled}")
    print(f"its training steps: first three {', '.join(f'{t * 1e3:.0f}' for t in step_times[:3])} ms, then median "
          f"{statistics.median(step_times[3:]) * 1e3:.1f} ms; warm-up beyond the median: "
          f"{sum(step_times[:3]) - 3 * statistics.median(step_times[3:]):.2f} s")
    steps = step_against_plain(args.precision)
    plain = steps["plain step"]
    print("one training step, median of 6 rounds x 6 batches, in turns:")
    for name, s in steps.items():
        print(f"  {name:22s} {s * 1e3:7.1f} ms  x{plain / s:.2f} of the plain step")
    print(f"\nseconds={total:.2f} steps_share={seconds['training steps'] / total:.3f} "
          f"callbacks_share={parts['callbacks, all events'] / total:.3f} "
          f"skorch_step_vs_plain={steps[next(iter(steps))] / plain:.3f}")


if __name__ == "__main__":
    main()
