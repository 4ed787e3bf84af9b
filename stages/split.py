"""Stage split: stratified, seeded train/validation split of the 60k training images.

    python stages/split.py --raw data/raw --out data/split

Reads params ``split.valid_size``, ``split.train_size`` (0 = all the rest) and ``split.seed``. Writes ``{train,valid,test}_{images,labels}.npy``
(uint8 28x28 images, int64 labels); the 10k test images pass through untouched.
"""

from pathlib import Path

import numpy as np

from fmnist import stage
from fmnist.data import load_raw, stratified_split, stratified_subset
from fmnist.files import atomic_dir, save_array
from fmnist.params import load_params


def main() -> None:
    args = stage.parser(__doc__, raw="data/raw", out="data/split").parse_args()
    params = load_params(args.params).split
    raw = load_raw(args.raw)
    train_idx, valid_idx = stratified_split(raw["train_labels"], params.valid_size, params.seed)
    if params.train_size:  # a smaller training split, for quick runs
        train_idx = train_idx[stratified_subset(raw["train_labels"][train_idx], params.train_size, params.seed)]
    out = Path(args.out)
    parts = {
        "train": (raw["train_images"][train_idx], raw["train_labels"][train_idx]),
        "valid": (raw["train_images"][valid_idx], raw["train_labels"][valid_idx]),
        "test": (raw["test_images"], raw["test_labels"]),
    }
    with atomic_dir(out) as tmp:  # a failure leaves the previous split as it was
        for name, (images, labels) in parts.items():
            save_array(tmp / f"{name}_images.npy", images)
            save_array(tmp / f"{name}_labels.npy", labels.astype(np.int64))
            print(f"{name}: {len(labels)} images, per class {np.bincount(labels, minlength=10).tolist()}")


if __name__ == "__main__":
    stage.run(main)
