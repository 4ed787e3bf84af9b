"""The seed notebook's output layer (ReLU + dropout on the logits) against a plain linear one.

    python benchmarks/head.py [--images 55000] [--epochs 3] > benchmarks/results/head.txt

Trains AlexNetSmall twice with the train stage's code and default params, identical but for
``model.head``, on the same images and seed, and prints validation and test accuracy per epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    import numpy as np

    from fmnist.batches import ImageSet
    from fmnist.compute import Compute, seed_everything, set_threads
    from fmnist.data import load_split
    from fmnist.model import ModelSpec
    from fmnist.params import load_params
    from fmnist.predict import predict_proba
    from fmnist.training import FitSettings, build_net

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=55_000)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    params = load_params(ROOT / "params.yaml")
    data = ROOT / "data" / "resized"
    if not (data / "train_images.npy").is_file():
        sys.exit("error: data/resized is missing; run `dvc repro resize` first")
    images, labels = load_split(data, "train")
    train = ImageSet(images[:args.images], labels[:args.images])
    valid = ImageSet(*load_split(data, "valid"))
    test_images, test_labels = load_split(data, "test")
    t = params.train
    print(f"AlexNetSmall, {len(train)} training images, {args.epochs} epochs, lr={t.lr} batch_size={t.batch_size} "
          f"dropout={t.dropout}, cosine schedule, seed {t.seed}, {Compute.resolve(params.model.precision, 'cpu').precision}")
    compute = Compute.resolve(params.model.precision, "cpu")
    for head in ("notebook", "linear"):
        seed_everything(t.seed)
        set_threads(t.threads)
        spec = ModelSpec("AlexNetSmall", train.size, t.dropout, head, lrn=False, precision=params.model.precision)
        net = build_net(spec, t.hyper_params(), compute,
                        FitSettings(max_epochs=args.epochs, patience=args.epochs + 1, seed=t.seed), valid)
        start = time.perf_counter()
        net.fit(train, y=None)
        pred = predict_proba(net.module_.eval(), test_images, train.size, compute).argmax(axis=1)
        valid_accs = " ".join(f"{a * 100:.1f}" for a in net.history[:, "valid_acc"])
        print(f"head={head:8s}  valid accuracy per epoch (%): {valid_accs}   "
              f"test accuracy: {np.mean(pred == test_labels) * 100:.2f}%   ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
