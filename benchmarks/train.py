"""How fast does the train stage train against the seed notebook's way, and what fraction of the matmul peak is that?

    python benchmarks/train.py [--images 55000] [--epochs 1] [--rounds 3] [--device auto] > benchmarks/results/train.txt
    python benchmarks/train.py --images 64 --valid 32 --smoke      # does it run (not a record)

Measures, in this one run (a shared machine drifts; ratios taken in one run hold):
  * the machine's matmul GFLOP/s (2048x2048, best of several), float32 and bfloat16,
  * (a) the seed notebook's way: a Dataset that resizes a PIL image per sample with
    transforms.Resize(67) + ToTensor, skorch with its default DataLoader, batch 2048, every
    convolution and max-pool PyTorch's own (the ``pytorch`` convolution plan), in float32 (its
    default) and (a16) in the pipeline's precision (autocast + channels-last, as the pipeline runs
    it): the data path compared like for like,
  * (b) this pipeline's train stage code with its default params (skorch, all callbacks,
    progress bar and MLflow logging into a throwaway store; model.precision as in params.yaml,
    which is bf16 mixed precision on a CPU with AMX or AVX512-BF16), and again in fp32,
  * (c) a plain PyTorch loop over the same tensors at the same batch size, precision and
    convolution plan as (b); (b) and (c) in turns for ``--rounds`` rounds, each reported by its
    median round and the spread, because the host's speed drifts between processes by 10-20%,
  * evaluate's prediction speed (batched, no grad), in the default precision and in fp32,
  * AlexNet at 227 px: training images/s and fraction of the matmul peak (batch 64, one epoch),
    and peak memory of resize and train on subsets, extrapolated to 70k images.
Each variant trains on ``--images`` images per epoch and validates on as many per training image
as the train stage does (5,000 per 55,000 at the default params), so that the validation passes
weigh what they weigh in the stage. The default, 55,000, is the stage's own epoch, so what each
epoch costs on top (the checkpoint and MLflow's metrics) and the first steps' start-up (oneDNN's
kernels, fresh pages) weigh as they do in the stage. Each timer starts after the net is built: the
first optimizer a process builds imports torch's compiler (2-3 s, once per process), which a real
run of 8 epochs spreads over minutes and a benchmark of one epoch would not.
Each variant runs in its own process, so its peak memory is its own. Each fraction of peak is
against the matmul peak of the precision the variant ran in, measured in the variant's process
right after it, on its threads: the host's speed drifts by up to a third within an hour. Each row
names the layers that trained by an implementation other than PyTorch's convolution, and which
(the plan, :mod:`fmnist.conv`). The last line holds the headline figures as key=value.
``--smoke`` runs every variant once, on tiny 227 px subsets, in this one process: it checks that
everything runs; its figures are not for the record.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, SPLIT, child_main, fast_paths, flops_per_image, matmul_gflops, peak_rss_mb, run_child, sync

# Where the variants run, and on which data: main() sets them for its child processes.
DEVICE = os.environ.get("FMNIST_BENCH_DEVICE", "cpu")
DATA = Path(os.environ.get("FMNIST_BENCH_DATA", str(SPLIT)))
SMOKE = False  # --smoke: the variants run in this process, the matmul peak on a small product


def peak_gflops(precision: str) -> float:
    return matmul_gflops(precision, DEVICE, side=256 if SMOKE else 0)


def tune_malloc_for(image_side: int) -> None:
    """glibc's malloc as the train stage sets it."""
    from fmnist.allocator import tune_malloc_for as tune

    tune(image_side)


def stage_valid_images(n_train: int) -> int:
    """Validation images per epoch for ``n_train`` training images, in the train stage's proportion:
    split.valid_size of the 60,000 against the rest (5,000 per 55,000 at the default params)."""
    from fmnist.params import load_params

    held_out = load_params(ROOT / "params.yaml").split.valid_size
    return round(n_train * held_out / (60_000 - held_out))


def load_data(n_train: int, n_valid: int):
    from fmnist.data import load_split

    images, labels = load_split(DATA, "train")
    valid_images, valid_labels = load_split(DATA, "valid")
    return images[:n_train], labels[:n_train], valid_images[:n_valid], valid_labels[:n_valid]


def variant_seed(n_train: int, n_valid: int, epochs: int, precision: str = "fp32") -> dict:
    """The notebook: PIL resize per sample in __getitem__, skorch's DataLoader, batch 2048, plain
    convolutions; in ``precision`` (bf16: autocast and channels-last, as the pipeline runs it)."""
    import torch
    from PIL import Image
    from skorch.helper import predefined_split
    from torchvision import transforms

    from fmnist.compute import Compute
    from fmnist.model import ModelSpec
    from fmnist.training import Classifier

    images, labels, v_images, v_labels = load_data(n_train, n_valid)

    class PackDataset(torch.utils.data.Dataset):
        def __init__(self, images, labels, transform):
            self.images, self.labels, self.transform = images, labels, transform

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])

    trans = transforms.Compose([transforms.Resize(size=67), transforms.ToTensor()])
    train, valid = PackDataset(images, labels, trans), PackDataset(v_images, v_labels, trans)
    torch.manual_seed(0)
    compute = Compute.resolve(precision, DEVICE)
    # fmnist's Classifier is skorch's NeuralNetClassifier plus autocast, the layout and the convolution
    # plan; in fp32 with the pytorch plan, it is skorch's
    spec = ModelSpec("AlexNetSmall", 67, 0.5, conv="pytorch")
    net = Classifier(spec.module_class, criterion=torch.nn.CrossEntropyLoss,
                     optimizer=torch.optim.Adam, lr=0.001, batch_size=2048, max_epochs=epochs,
                     train_split=predefined_split(valid), classes=list(range(10)), compute=compute, verbose=0,
                     plan=spec.conv_plan(compute))
    net.initialize()  # the one-off start-up outside the timer (module docstring)
    start = time.perf_counter()
    net.fit(train, y=None)
    seconds = time.perf_counter() - start
    return {"images_per_s": n_train * epochs / seconds, "seconds": seconds, "precision": compute.precision,
            "fast_paths": fast_paths(net.module_)}


def variant_pipeline(n_train: int, n_valid: int, epochs: int, precision: str = "") -> dict:
    """The train stage's code path with the default params (``precision`` overrides
    model.precision): build_net + fit + MLflow logging."""
    from fmnist.batches import ImageSet
    from fmnist.checkpoint import EpochCheckpoint
    from fmnist.compute import Compute, seed_everything, set_threads
    from fmnist.data import resize_images
    from fmnist.model import ModelSpec
    from fmnist.params import load_params
    from fmnist.tracking import Tracker
    from fmnist.training import FitSettings, MlflowEpochLogger, build_net, fit

    params = load_params(ROOT / "params.yaml")
    tune_malloc_for(params.resize.size)  # as the stage
    images, labels, v_images, v_labels = load_data(n_train, n_valid)
    train = ImageSet(resize_images(images, params.resize.size), labels)
    valid = ImageSet(resize_images(v_images, params.resize.size), v_labels)
    seed_everything(params.train.seed)
    set_threads(params.train.threads)
    t = params.train
    compute = Compute.resolve(precision or params.model.precision, DEVICE)
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker("benchmark", uri=f"sqlite:///{tmp}/mlflow.db")
        with tracker.run("benchmark") as run:
            ckpt = EpochCheckpoint(Path(tmp) / "ckpt", "benchmark")
            net = build_net(ModelSpec.of(params.model, params.resize.size, t.dropout), t.hyper_params(), compute,
                            FitSettings(max_epochs=epochs, patience=t.patience, seed=t.seed, augment=t.augment,
                                        progress_bar=t.progress_bar), valid,
                            extra_callbacks=[("checkpoint", ckpt), ("mlflow", MlflowEpochLogger(run))])
            net.initialize()  # the one-off start-up outside the timer (module docstring); fit initializes anew
            start = time.perf_counter()
            fit(net, train, ckpt, seed=t.seed)
            seconds = time.perf_counter() - start
    return {"images_per_s": n_train * epochs / seconds, "seconds": seconds, "batch_size": t.batch_size,
            "precision": compute.precision, "fast_paths": fast_paths(net.module_)}


def variant_plain(n_train: int, n_valid: int, epochs: int, precision: str = "") -> dict:
    """A plain PyTorch loop: same model, tensors, batch size, precision, fused Adam, malloc settings
    and validation pass; no skorch."""
    import torch

    from fmnist.batches import to_float
    from fmnist.compute import Compute, set_threads
    from fmnist.conv import plan_model
    from fmnist.data import resize_images
    from fmnist.model import AlexNetSmall
    from fmnist.params import load_params

    params = load_params(ROOT / "params.yaml")
    tune_malloc_for(params.resize.size)
    compute = Compute.resolve(precision or params.model.precision, DEVICE)
    images, labels, v_images, v_labels = load_data(n_train, n_valid)
    x = torch.from_numpy(resize_images(images, params.resize.size))
    y = torch.from_numpy(labels)
    vx = torch.from_numpy(resize_images(v_images, params.resize.size))
    set_threads(params.train.threads)
    torch.manual_seed(0)
    model = compute.layout(AlexNetSmall(dropout=params.train.dropout).to(DEVICE))
    plan_model(model, compute, params.resize.size, params.model.conv)  # as build_net plans the stage's
    opt = torch.optim.Adam(model.parameters(), lr=params.train.lr, fused=True)  # as build_net
    loss_fn = torch.nn.CrossEntropyLoss()
    bs = params.train.batch_size
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y))
        for s in range(0, len(y), bs):
            idx = order[s:s + bs]
            opt.zero_grad()
            with compute.autocast():
                out = model(to_float(x[idx]).to(DEVICE))
            loss = loss_fn(out.float(), y[idx].to(DEVICE))
            loss.backward()
            opt.step()
            loss.item()  # as skorch does per batch: the loss for the log
        model.eval()
        with torch.no_grad(), compute.autocast():
            for s in range(0, len(vx), bs):
                model(to_float(vx[s:s + bs]).to(DEVICE)).cpu()
    sync(DEVICE)
    seconds = time.perf_counter() - start
    return {"images_per_s": n_train * epochs / seconds, "seconds": seconds, "precision": compute.precision,
            "fast_paths": fast_paths(model)}


def variant_evaluate(n_test: int, precision: str = "") -> dict:
    import torch

    from fmnist.compute import Compute, set_threads
    from fmnist.data import load_split, resize_images
    from fmnist.model import AlexNetSmall
    from fmnist.params import load_params
    from fmnist.predict import predict_proba

    params = load_params(ROOT / "params.yaml")
    compute = Compute.resolve(precision or params.model.precision, DEVICE)
    images, _ = load_split(DATA, "test")
    images = resize_images(images[:n_test], params.resize.size)
    set_threads(0)
    torch.manual_seed(0)
    model = AlexNetSmall().eval()
    batch = params.evaluate.batch_size
    predict_proba(model, images[:batch], params.resize.size, compute, batch)
    start = time.perf_counter()
    predict_proba(model, images, params.resize.size, compute, batch)
    seconds = time.perf_counter() - start
    return {"images_per_s": n_test / seconds, "seconds": seconds, "precision": compute.precision}


def write_resized(path: Path, images, size: int = 227) -> None:
    """``images`` resized to ``size`` into one ``.npy`` file, block by block, as the resize stage does."""
    from fmnist.data import iter_resized
    from fmnist.files import array_writer

    with array_writer(path, (len(images), size, size)) as write:
        for block in iter_resized(images, size):
            write(block)


def variant_resize227(n: int) -> dict:
    from fmnist.data import load_split

    images, _ = load_split(DATA, "train")
    base = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_resized(Path(tmp) / "x.npy", images[:n])
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "base_mb": base}


def variant_prep227(n: int, folder: str) -> dict:
    """What the resize stage leaves for train at 227 px: n training and 64 validation images."""
    from fmnist.data import load_split
    from fmnist.files import save_array

    images, labels = load_split(DATA, "train")
    for name, part in (("train", slice(0, n)), ("valid", slice(n, n + 64))):
        write_resized(Path(folder) / f"{name}_images.npy", images[part])
        save_array(Path(folder) / f"{name}_labels.npy", labels[part])
    return {}


def variant_train227(n: int, folder: str) -> dict:
    """As the train stage does it: the resized uint8 arrays loaded, one epoch of AlexNet. Its own
    process, after :func:`variant_prep227`'s, so that its peak memory is the training's alone."""
    import torch

    from fmnist.batches import ImageSet
    from fmnist.compute import Compute, set_threads
    from fmnist.data import load_split
    from fmnist.model import ModelSpec
    from fmnist.params import HyperParams, load_params
    from fmnist.training import FitSettings, build_net

    base = peak_rss_mb()
    train = ImageSet(*load_split(folder, "train"))
    valid = ImageSet(*load_split(folder, "valid"))
    set_threads(0)
    torch.manual_seed(0)
    compute = Compute.resolve(load_params(ROOT / "params.yaml").model.precision, DEVICE)
    net = build_net(ModelSpec("AlexNet", 227, 0.5), HyperParams(lr=1e-4, batch_size=64, dropout=0.5), compute,
                    FitSettings(max_epochs=1, patience=2, seed=0), valid)
    net.initialize()
    start = time.perf_counter()
    net.fit(train, y=None)
    seconds = time.perf_counter() - start  # includes validation on 64 images
    return {"seconds": seconds, "base_mb": base, "images_per_s": n / seconds, "precision": compute.precision,
            "fast_paths": fast_paths(net.module_)}


def run_train227(n: int, env: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        variant("prep227", n, tmp)
        return variant("train227", n, tmp, env=env)


def variant_flops(model_name: str, size: int) -> dict:
    """In a child: a model at 227 px would raise the parent's resident memory, which every child
    it starts inherits as its starting peak (Linux keeps ``ru_maxrss`` across ``execve``)."""
    return {"flops": flops_per_image(model_name, size)}


VARIANTS = {"flops": variant_flops, "seed": variant_seed, "pipeline": variant_pipeline, "plain": variant_plain,
            "evaluate": variant_evaluate, "resize227": variant_resize227, "prep227": variant_prep227,
            "train227": variant_train227}


def finish(result: dict) -> None:
    """What each variant's result gets in its own process, right after it: the matmul peak of its
    precision on its threads (the host's speed drifts), and the GPU's peak memory."""
    if "precision" in result:
        result["peak_gflops"] = peak_gflops(result["precision"])
    if DEVICE.startswith("cuda"):
        import torch

        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20


def variant(name: str, *args, env: dict | None = None) -> dict:
    """Run one variant in a fresh process (``env`` added to its environment), so that its peak
    memory is its own; under ``--smoke`` in this process, where ``env`` cannot apply."""
    if SMOKE:
        result = VARIANTS[name](*args)
        result["peak_mb"] = peak_rss_mb()
        finish(result)
        return result
    return run_child(__file__, name, *args, env={**os.environ, **(env or {})})


def main() -> None:
    global DEVICE, DATA, SMOKE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=55_000,
                   help="training images per epoch and variant (the train stage's epoch)")
    p.add_argument("--valid", type=int, default=0,
                   help="validation images per epoch; 0: as many per training image as the train stage validates")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="rounds of (b) and (c), in turns; the median is reported")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto: cuda when there is one")
    p.add_argument("--data", type=Path, default=SPLIT,
                   help="folder of the split stage's arrays (train, valid and test images and labels)")
    p.add_argument("--smoke", action="store_true",
                   help="every variant once, in this process, on tiny 227 px subsets: does it run (not a record)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_main(VARIANTS, args.child, finish)
        return

    DATA, SMOKE = args.data.resolve(), args.smoke
    if not (DATA / "train_images.npy").is_file():
        sys.exit(f"error: {args.data}: no train_images.npy; run `dvc repro split` first, or pass --data")
    os.environ["FMNIST_BENCH_DATA"] = str(DATA)

    import torch

    DEVICE = os.environ["FMNIST_BENCH_DEVICE"] = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if SMOKE:
        args.rounds = 1
    torch.set_num_threads(os.cpu_count() or 1)
    peak = peak_gflops("fp32")
    peak_bf16 = peak_gflops("bf16")
    n = 256 if SMOKE else 8192 if DEVICE.startswith("cuda") else 2048
    flops = variant("flops", "AlexNetSmall", 67)["flops"]
    flops227 = variant("flops", "AlexNet", 227)["flops"]
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, device {DEVICE} ({where})")
    print(f"matmul {n}x{n} float32: {peak:.0f} GFLOP/s; bfloat16: {peak_bf16:.0f} GFLOP/s")
    print(f"forward + backward: AlexNetSmall at 67 px {flops / 1e9:.3f} GFLOP per image, "
          f"AlexNet at 227 px {flops227 / 1e9:.3f} (the plain convolutions' count, torch's flop counter: "
          f"the fp32 Winograd and Fourier paths do fewer multiply-adds, so a fraction of peak above 100% "
          f"means that, not a faster CPU)")
    from fmnist.params import load_params

    args.valid = args.valid or stage_valid_images(args.images)
    print(f"training: {args.images} images x {args.epochs} epochs, validation on {args.valid} images per epoch "
          f"(the train stage's proportion); start-up outside the timers\n")
    rows = {}
    sizes = (args.images, args.valid, args.epochs)
    from fmnist.compute import Compute

    default = Compute.resolve(load_params(ROOT / "params.yaml").model.precision, DEVICE).precision
    variants = {
        "seed": (("seed", "fp32"), "(a) seed notebook: PIL resize per sample + skorch, batch 2048, PyTorch's convs"),
        "seed_same": (("seed", default), "(a16) seed notebook's way in the pipeline's default precision"),
        "pipeline": (("pipeline",), "(b) pipeline train stage, default params"),
        "plain": (("plain",), "(c) plain PyTorch loop, same batch size and precision as (b)"),
        "pipeline_fp32": (("pipeline", "fp32"), "(b32) pipeline train stage, default params but fp32"),
        "plain_fp32": (("plain", "fp32"), "(c32) plain PyTorch loop, fp32")}

    def measure(key: str) -> dict:
        (name, *extra), _ = variants[key]
        r = variant(name, *sizes, *extra)
        r["peak_fraction"] = r["images_per_s"] * flops / 1e9 / r["peak_gflops"]
        return r

    def report(key: str, runs: list[dict]) -> None:
        """The run with the median fraction of peak (of one run: that run), and the spread."""
        rows[key] = r = sorted(runs, key=lambda run: run["peak_fraction"])[(len(runs) - 1) // 2]
        frac = r["peak_fraction"]
        spread = (f"   median of {len(runs)} rounds: {min(x['images_per_s'] for x in runs):.0f}-"
                  f"{max(x['images_per_s'] for x in runs):.0f} images/s, "
                  f"{min(x['peak_fraction'] for x in runs) * 100:.1f}-{max(x['peak_fraction'] for x in runs) * 100:.1f}%"
                  if len(runs) > 1 else "")
        print(f"{variants[key][1]} [{r['precision']}; fast paths: {r['fast_paths']}]\n"
              f"    {r['images_per_s']:7.0f} images/s   {frac * 100:5.1f}% of the {r['precision']} matmul peak "
              f"({r['peak_gflops']:.0f} GFLOP/s right after it)   "
              f"peak memory {r['peak_mb']:6.0f} MB"
              + (f" (GPU {r['gpu_peak_mb']:.0f} MB)" if "gpu_peak_mb" in r else "") + f"   ({r['seconds']:.1f} s)"
              + spread)

    report("seed", [measure("seed")])
    if default == "fp32":
        rows["seed_same"] = rows["seed"]
    else:
        report("seed_same", [measure("seed_same")])
    # The headline pair, (b) and (c), in turns for --rounds rounds: the host drifts between processes
    headline: dict[str, list[dict]] = {"pipeline": [], "plain": []}
    for _ in range(args.rounds):
        for key, runs in headline.items():
            runs.append(measure(key))
    for key, runs in headline.items():
        report(key, runs)
    report("pipeline_fp32", [measure("pipeline_fp32")])
    report("plain_fp32", [measure("plain_fp32")])
    ratio = rows["pipeline"]["images_per_s"] / rows["seed"]["images_per_s"]
    same = rows["pipeline"]["images_per_s"] / rows["seed_same"]["images_per_s"]
    print(f"\npipeline / seed, each in its default precision = {ratio:.2f}x; in the same precision "
          f"({default}) = {same:.2f}x; in fp32 = "
          f"{rows['pipeline_fp32']['images_per_s'] / rows['seed']['images_per_s']:.2f}x")
    for pipe, plain, what in (("pipeline", "plain", rows["pipeline"]["precision"]),
                              ("pipeline_fp32", "plain_fp32", "fp32")):
        overhead = 1 - rows[pipe]["images_per_s"] / rows[plain]["images_per_s"]
        print(f"skorch + callbacks + MLflow in {what}: {overhead * 100:+.1f}% of the plain loop's speed "
              f"(negative: the pipeline was faster)")
    n_test = 64 if SMOKE else 10_000
    ev = variant("evaluate", n_test)
    ev32 = variant("evaluate", n_test, "fp32")
    print(f"evaluate: {ev['images_per_s']:.0f} images/s predicting {n_test} test images [{ev['precision']}] "
          f"(fp32: {ev32['images_per_s']:.0f}); batched, no grad")

    print("\nAlexNet at 227 px, memory measured on subsets, extrapolated linearly to 70k images:")
    # Sizes far enough apart that the data (50 KB per image) outweighs the allocator's noise. glibc's
    # malloc raises its mmap threshold as large blocks are freed, after which batch tensors come
    # from a heap that fragments: a peak that grows with the number of batches, not with the data.
    # MALLOC_MMAP_THRESHOLD_ fixed at 1 MiB keeps large blocks in mmap, returned when freed.
    fixed = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    train227 = None
    measured = [("resize227", (2000, 8000), None, ""),
                ("train227", (256, 2048), None, ", glibc malloc defaults"),
                ("train227", (256, 2048), fixed, ", MALLOC_MMAP_THRESHOLD_=1048576")]
    if SMOKE:  # in one process the malloc settings cannot differ
        measured = [(name, (8, 16), env, how) for name, _, env, how in measured if env is None]
    for name, sizes, env, how in measured:
        small, big = (run_train227(n, env) if name == "train227" else variant(name, n) for n in sizes)
        if name == "train227":
            train227 = big
        per_image = (big["peak_mb"] - small["peak_mb"]) / (sizes[1] - sizes[0])
        at_70k = small["peak_mb"] + per_image * (70_000 - sizes[0])
        label = f"{name}{how}" + (f" [{big['precision']}]" if "precision" in big else "")
        print(f"  {label}:\n    peak {small['peak_mb']:.0f} MB at {sizes[0]} images, {big['peak_mb']:.0f} MB at "
              f"{sizes[1]}; {per_image * 1024:.0f} KB per image (uint8 is {227 * 227 / 1024:.0f} KB, "
              f"float32 {227 * 227 * 4 / 1024:.0f} KB) -> about {at_70k / 1024:.1f} GB at 70k images")
    frac227 = train227["images_per_s"] * flops227 / 1e9 / train227["peak_gflops"]
    print(f"  train227 speed [{train227['precision']}; fast paths: {train227['fast_paths']}]: "
          f"{train227['images_per_s']:.0f} images/s at batch 64 ({frac227 * 100:.1f}% of the "
          f"{train227['precision']} matmul peak; AlexNetSmall at 67 px, (b): "
          f"{rows['pipeline']['images_per_s']:.0f} images/s, {rows['pipeline']['peak_fraction'] * 100:.1f}%)")
    bf16 = rows["pipeline"] if rows["pipeline"]["precision"] == "bf16" else None
    print(f"\nbf16_peak_fraction={bf16['peak_fraction'] if bf16 else float('nan'):.3f} "
          f"fp32_peak_fraction={rows['pipeline_fp32']['peak_fraction']:.3f} vs_seed_same_precision={same:.2f} "
          f"vs_seed_defaults={ratio:.2f} eval_images_per_s={ev['images_per_s']:.0f} "
          f"train_images_per_s={rows['pipeline']['images_per_s']:.0f} precision={rows['pipeline']['precision']} "
          f"fast_paths={rows['pipeline']['fast_paths']} alexnet227_images_per_s={train227['images_per_s']:.0f} "
          f"alexnet227_peak_fraction={frac227:.3f}")


if __name__ == "__main__":
    main()
