"""The train stage's own net (default params, skorch, every callback) and batches of random images,
for the benchmarks that time or profile its training step (the cost of a step does not depend on
the pixels)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def stage_net(precision: str = "", n_batches: int = 8, tune_malloc: bool = True) -> tuple:
    """``(net, batches, description)``: the initialized net as the train stage builds it, in
    ``precision`` (default: model.precision from params.yaml), and ``n_batches`` training batches
    of its batch size from its own iterator. ``tune_malloc``: glibc's malloc set as the stage sets it
    (:func:`fmnist.allocator.tune_malloc_for`), else left at its defaults."""
    import numpy as np

    from fmnist.allocator import tune_malloc_for
    from fmnist.batches import ImageSet
    from fmnist.compute import Compute, seed_everything, set_threads
    from fmnist.model import ModelSpec
    from fmnist.params import load_params
    from fmnist.training import FitSettings, build_net

    params = load_params(ROOT / "params.yaml")
    t, size = params.train, params.resize.size
    if tune_malloc:
        tune_malloc_for(size)
    seed_everything(t.seed)
    threads = set_threads(t.threads)
    rng = np.random.default_rng(0)
    n = t.batch_size * n_batches
    train = ImageSet(rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 10, n))
    compute = Compute.resolve(precision or params.model.precision, "cpu")
    net = build_net(ModelSpec.of(params.model, size, t.dropout), t.hyper_params(), compute,
                    FitSettings(max_epochs=1, patience=1, seed=t.seed), valid=train)
    net.initialize()
    batches = list(net.get_iterator(train, training=True))
    return net, batches, (f"{params.model.name} at {size} px, batch {t.batch_size}, {compute.precision}, "
                          f"{threads} threads")
