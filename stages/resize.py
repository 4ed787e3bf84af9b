"""Stage resize: every image to the model's input size, bilinear with antialiasing, kept uint8.

    python stages/resize.py --src data/split --out data/resized

Reads params ``resize.size`` (67 for AlexNetSmall, 227 for AlexNet) and ``resize.chunk``. Writes
``{train,valid,test}_{images,labels}.npy``: one uint8 array per split, resized in batched tensor
ops (seconds for all 70k images at 67 px), written block by block so that even 227 px
images never need to fit in memory.
"""

import time
from pathlib import Path

from fmnist import stage
from fmnist.data import SPLITS, iter_resized, load_split
from fmnist.files import array_writer, atomic_dir, save_array
from fmnist.params import load_params


def main() -> None:
    args = stage.parser(__doc__, src="data/split", out="data/resized").parse_args()
    params = load_params(args.params).resize
    out = Path(args.out)
    with atomic_dir(out) as tmp:  # a failure leaves the previous arrays as they were
        for name in SPLITS:
            start = time.perf_counter()
            images, labels = load_split(args.src, name, size=28)
            with array_writer(tmp / f"{name}_images.npy", (len(images), params.size, params.size)) as write:
                for block in iter_resized(images, params.size, params.chunk):
                    write(block)
            save_array(tmp / f"{name}_labels.npy", labels)
            print(f"{name}: {len(labels)} images to {params.size} px in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    stage.run(main)
