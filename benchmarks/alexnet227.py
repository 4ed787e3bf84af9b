"""What does AlexNet at 227 px cost on this machine: time per image, a profile's whole run, peak memory?

    python benchmarks/alexnet227.py cost [--images 512] [--profile alexnet227]
    python benchmarks/alexnet227.py memory [--batches 40] [--work DIR]

``cost`` times the train stage's own code (``build_net`` + ``fit``, the profile's batch size,
lr and dropout, ``model.precision`` as configured) on ``--images`` training images at 227 px,
after one warm-up batch, and evaluate's prediction (``predict_proba``, batch
``evaluate.batch_size``) on as many; then multiplies out what the profile's six stages and the
notebook's full settings (``profiles/notebook.yaml``: 45 trials x 20 epochs, then 50 epochs, all
images) cost at 227 px at those rates.

``memory`` writes the train stage's inputs at full size (55,000 training and 5,000 validation
images at 227 px, stratified as the split stage does: 3.1 GB of uint8 under ``--work``), then
trains the first ``--batches`` batches of one epoch on them in a fresh process and writes the
checkpoint an epoch ends with, twice: with glibc's malloc defaults and with the train stage's fix
(:func:`fmnist.allocator.keep_large_blocks_in_mmap`), printing resident memory every 10
batches and the peak. The validation pass is left out (inference on 5,000 images, smaller than a
training batch's working set). The whole arrays are loaded as the train stage loads them; only the number
of batches is cut (a full epoch takes about 10 minutes on 2 cores).

Raw data: the four Fashion-MNIST ``.gz`` files in ``--raw`` (default: the Debian package's
folder).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, child_main, run_child

RAW = "/usr/share/datasets/fashion-mnist"
SIZE = 227
VALID = 5000  # the split stage's default holdout
TEST = 10_000


def raw_arrays(folder: str | Path) -> dict[str, np.ndarray]:
    """The four raw arrays from the ``.gz`` files in ``folder``, checked by the download stage's checksums."""
    from fmnist.data import FILES, verify

    out = {}
    for key, idx in FILES.items():
        path = Path(folder) / f"{idx.name}.gz"
        if not path.is_file():
            sys.exit(f"error: {path}: file not found; pass --raw with the four Fashion-MNIST .gz files")
        content = gzip.decompress(path.read_bytes())
        verify(content, idx, str(path))
        out[key] = np.frombuffer(content, np.uint8, offset=4 + 4 * len(idx.shape)).reshape(idx.shape)
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def settings(profile: str) -> dict:
    """params.yaml with ``profiles/<profile>.yaml`` merged in, as ``dvc exp run`` would see it."""
    import yaml

    from fmnist.profiles import load_profile, merge

    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), load_profile(profile, ROOT))


def net_for(params: dict, valid, max_epochs: int = 1, callbacks: list | None = None):
    from fmnist.compute import Compute
    from fmnist.model import ModelSpec
    from fmnist.params import HyperParams

    t = params["train"]
    hp = HyperParams(lr=t["lr"], batch_size=t["batch_size"], dropout=t["dropout"])
    spec = ModelSpec("AlexNet", SIZE, hp.dropout, params["model"]["head"], params["model"]["lrn"],
                     params["model"]["precision"])
    from fmnist.training import FitSettings, build_net

    compute = Compute.resolve(spec.precision)
    settings = FitSettings(max_epochs=max_epochs, patience=max_epochs, seed=t["seed"])
    return build_net(spec, hp, compute, settings, valid, extra_callbacks=callbacks), compute


def child_cost(raw: str, profile: str, n: int) -> dict:
    """Training and prediction images/s at 227 px, in this process."""
    from fmnist.batches import ImageSet
    from fmnist.compute import seed_everything, set_threads
    from fmnist.data import resize_images
    from fmnist.predict import predict_proba

    params = settings(profile)
    arrays = raw_arrays(raw)
    start = time.perf_counter()
    images = resize_images(arrays["train_images"][:n], SIZE)
    resize_s = time.perf_counter() - start
    labels = arrays["train_labels"][:n].astype(np.int64)
    seed_everything(0)
    threads = set_threads(params["train"]["threads"])
    net, compute = net_for(params, ImageSet(images[:16], labels[:16]))  # validation: 16 images, negligible
    bs = net.batch_size
    net.initialize()
    net.partial_fit(ImageSet(images[:bs], labels[:bs]), y=None, epochs=1)  # warm-up: oneDNN's kernels
    start = time.perf_counter()
    net.partial_fit(ImageSet(images, labels), y=None, epochs=1)
    train_s = time.perf_counter() - start
    module = net.module_.eval()
    batch = params["evaluate"]["batch_size"]
    predict_proba(module, images[:min(batch, 64)], SIZE, compute, batch)  # warm-up
    start = time.perf_counter()
    predict_proba(module, images, SIZE, compute, batch)
    predict_s = time.perf_counter() - start
    return {"train_per_s": n / train_s, "predict_per_s": n / predict_s, "resize_per_s": n / resize_s,
            "precision": compute.precision, "device": compute.device, "threads": threads, "batch_size": bs}


def stage_seconds(params: dict, rate: dict) -> dict[str, float]:
    """Seconds per stage for ``params`` at the measured rates (download and split: measured
    at a few seconds each; search's per-trial overheads are left out)."""
    split, search, train = params["split"], params["search"], params["train"]
    n_train = split["train_size"] or 60_000 - split["valid_size"]
    n_valid = split["valid_size"]
    grid = search["grid"]
    trials = len(grid["lr"]) * len(grid["batch_size"]) * len(grid["dropout"])
    subset = min(search["subset"] or n_train, n_train)
    if search["strategy"] != "grid":
        trials = float("nan")  # halving's cost depends on its rounds: see docs/search.md
    return {
        "download + split": 10.0,
        "resize": (n_train + n_valid + TEST) / rate["resize_per_s"],
        "search": trials * search["epochs"] * (subset / rate["train_per_s"] + n_valid / rate["predict_per_s"]),
        "train": train["max_epochs"] * (n_train / rate["train_per_s"] + n_valid / rate["predict_per_s"]),
        "evaluate": TEST / rate["predict_per_s"],
    }


def cost(args) -> None:
    rate = run_child(__file__, "cost", args.raw, args.profile, args.images)
    load = os.getloadavg()[0]
    print(f"AlexNet at 227 px, {rate['device']} ({rate['threads']} threads), {rate['precision']}, "
          f"batch {rate['batch_size']}; {args.images} images each; load average {load:.1f} at the end")
    print(f"  train (forward + backward + Adam): {rate['train_per_s']:6.1f} images/s  "
          f"{1000 / rate['train_per_s']:5.1f} ms/image")
    print(f"  predict (no grad, batched):        {rate['predict_per_s']:6.1f} images/s  "
          f"{1000 / rate['predict_per_s']:5.1f} ms/image")
    print(f"  resize 28 -> 227 px:               {rate['resize_per_s']:6.0f} images/s")
    for name in (args.profile, "notebook"):
        params = settings(name)
        parts = stage_seconds(params, rate)
        total = sum(parts.values())
        t, s = params["train"], params["search"]
        grid = s["grid"]
        trials = len(grid["lr"]) * len(grid["batch_size"]) * len(grid["dropout"])
        print(f"\nprofiles/{name}.yaml with AlexNet at 227 px, at these rates: {total / 3600:.2f} h in all "
              f"(search: {trials} trials x {s['epochs']} epochs x {s['subset'] or 'all'} images; "
              f"train: {t['max_epochs']} epochs at most, early stopping not counted)")
        for stage, seconds in parts.items():
            print(f"  {stage:16s} " + (f"{seconds / 60:8.1f} min" if seconds < 7200 else f"{seconds / 3600:8.1f} h"))
    print(f"\ntrain_per_s={rate['train_per_s']:.1f} predict_per_s={rate['predict_per_s']:.1f}")


def prepare(raw: str, work: Path) -> None:
    """55k training and 5k validation images at 227 px, as split + resize would write them."""
    from fmnist.data import iter_resized, stratified_split
    from fmnist.files import array_writer, save_array

    if (work / "valid_labels.npy").is_file():
        return
    arrays = raw_arrays(raw)
    train_idx, valid_idx = stratified_split(arrays["train_labels"], VALID, 42)
    for name, idx in (("train", train_idx), ("valid", valid_idx)):
        images = arrays["train_images"][idx]
        with array_writer(work / f"{name}_images.npy", (len(images), SIZE, SIZE)) as write:
            for block in iter_resized(images, SIZE):
                write(block)
        save_array(work / f"{name}_labels.npy", arrays["train_labels"][idx].astype(np.int64))


def child_memory(folder: str, batches: int, mode: str, profile: str) -> dict:
    """Train ``batches`` batches on the full arrays in ``folder``; resident memory as it goes."""
    from skorch.callbacks import Callback

    from fmnist.allocator import keep_large_blocks_in_mmap
    from fmnist.batches import ImageSet
    from fmnist.checkpoint import net_state
    from fmnist.compute import seed_everything, set_threads
    from fmnist.data import load_split
    from fmnist.files import save_torch

    fixed = keep_large_blocks_in_mmap() if mode == "fixed" else False
    base = rss_mb()
    train = ImageSet(*load_split(folder, "train"))
    valid = ImageSet(*load_split(folder, "valid"))
    loaded = rss_mb()
    trace: list[tuple[int | str, float]] = []

    class StopAfter(Callback):
        def __init__(self):
            self.seen = 0

        def on_batch_end(self, net, batch=None, training=False, **kwargs):
            if training:
                self.seen += 1
                if self.seen % 10 == 0 or self.seen == batches:
                    trace.append((self.seen, rss_mb()))
                if self.seen >= batches:
                    raise KeyboardInterrupt  # skorch ends the fit cleanly on it

    params = settings(profile)
    seed_everything(0)
    set_threads(params["train"]["threads"])
    net, compute = net_for(params, valid, callbacks=[("stop", StopAfter())])
    start = time.perf_counter()
    net.fit(train, y=None)
    seconds = time.perf_counter() - start
    # What the checkpoint callback writes at the epoch's end: weights and Adam's state, serialised
    # into one buffer before the atomic write (about 700 MB at 227 px).
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        save_torch(Path(tmp) / "last.pt", {**net_state(net), "fingerprint": "benchmark"})
        trace.append(("then the checkpoint written", rss_mb()))
    return {"mode": mode, "fixed": fixed, "base_mb": base, "loaded_mb": loaded, "trace": trace,
            "images": len(train) + len(valid), "batch_size": net.batch_size, "precision": compute.precision,
            "train_per_s": batches * net.batch_size / seconds}


def memory(args) -> None:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="alexnet227-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    prepare(args.raw, work)
    print(f"inputs at 227 px in {work} ({time.perf_counter() - start:.0f} s): "
          + ", ".join(f"{p.name} {p.stat().st_size / 2**30:.2f} GiB" for p in sorted(work.glob("*_images.npy"))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # malloc's defaults
    for mode in ("defaults", "fixed"):
        r = run_child(__file__, "memory", str(work), args.batches, mode, args.profile, env=env)
        label = "glibc malloc defaults" if mode == "defaults" else (
            "the train stage's fix, mmap threshold 1 MiB" + ("" if r["fixed"] else " (NOT SET: not glibc?)"))
        print(f"\n{label} [{r['precision']}, batch {r['batch_size']}, {r['train_per_s']:.0f} images/s]:")
        print(f"  {r['base_mb']:.0f} MB before loading, {r['loaded_mb']:.0f} MB with the {r['images']} images loaded")
        print("  after batch " + ", ".join(f"{b}: {mb:.0f} MB" for b, mb in r["trace"]))
        print(f"  peak resident {r['peak_mb']:.0f} MB ({r['peak_mb'] / 1024:.2f} GiB)")
    if not args.work:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()


CHILDREN = {"cost": child_cost, "memory": child_memory}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", choices=("cost", "memory"))
    p.add_argument("--images", type=int, default=512, help="cost: training and predicted images")
    p.add_argument("--profile", default="alexnet227", help="profile whose train settings are used")
    p.add_argument("--batches", type=int, default=40, help="memory: training batches per run")
    p.add_argument("--work", help="memory: folder for the 227 px arrays (kept); default a temp folder")
    p.add_argument("--raw", default=RAW, help="folder with the four Fashion-MNIST .gz files")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_main(CHILDREN, args.child)
        return
    if args.what is None:
        p.error("say what to measure: cost or memory")
    (cost if args.what == "cost" else memory)(args)


if __name__ == "__main__":
    main()
