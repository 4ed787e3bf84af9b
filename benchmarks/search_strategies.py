"""Given the same budget of training images, which search strategy picks better hyper-parameters: grid, halving or Optuna?

    PYTHONPATH=src python benchmarks/search_strategies.py > benchmarks/results/search_strategies.txt

Reads the Fashion-MNIST files from the Debian folder (or ``--raw``) and holds one stratified
subset of each split, resized to 67 px: ``--train-images`` to train every trial on,
``--valid-images`` to score trials on, ``--test-images`` to score the choice on. Every strategy
runs the search's own code (:mod:`fmnist.search`), with MLflow off, on the same data, epochs and
budget, once per seed; the seed seeds the trials' training and Optuna's sampler.

- ``grid``: ``GRID``'s combinations for ``--epochs`` epochs each; what it processes is the budget
  of all three: ``combinations x epochs x train images``.
- ``halving``: successive halving with epochs as the resource, factor 3, on ``HALVING_GRID``, the
  densest grid over the same ranges whose schedule fits that budget.
- ``optuna``: TPE over the ranges (``SPACE``) with the Hyperband pruner (min 1 epoch, factor 3)
  until the budget is spent, in a journal file of its own.

For each run: the best validation accuracy found, the training images it processed, its trials,
its wall time, and the test accuracy of a model trained on its choice (the same images and epochs
as a trial, seeded from the run's seed). The summary gives the mean and standard deviation over
the seeds. Progress goes to stderr, the report to stdout. Images are exact; wall times depend on
what else runs on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fmnist.batches import ImageSet
from fmnist.compute import Compute, resolve_precision, seed_everything
from fmnist.data import DEBIAN_FOLDER, fetch, load_raw, resize_images, stratified_split, stratified_subset
from fmnist.model import ModelSpec
from fmnist.params import GridParams, HyperParams, OptunaParams, load_params
from fmnist.search.optuna_search import StudyPlan, best_of, run_optuna
from fmnist.search.rounds import best_trial, run_search
from fmnist.search.schedule import plan_rounds
from fmnist.search.trial import SearchData, TrialSetup
from fmnist.training import FitSettings, build_net

# Sized for a loaded 2-core machine: 4 grid trials. Halving's 6 combinations run 6 x 1 + 2 x 2
# = 10 trial-epochs of the grid's 12; Optuna spends the 12 as its sampler and pruner decide.
GRID = GridParams(lr=(0.0003, 0.001), batch_size=(32,), dropout=(0.0, 0.4))
HALVING_GRID = GridParams(lr=(0.0002, 0.0005, 0.0015), batch_size=(32,), dropout=(0.0, 0.4))
SPACE = OptunaParams(lr=(0.0001, 0.003), dropout=(0.0, 0.5), batch_size=(32,), sampler="tpe",
                     startup_trials=3, pruner="hyperband", min_epochs=1)
FACTOR = 3


def load_data(raw: str, n_train: int, n_valid: int, n_test: int, size: int) -> tuple[SearchData, ImageSet]:
    with tempfile.TemporaryDirectory() as tmp:
        fetch((raw,), tmp)
        arrays = load_raw(tmp)
    train_idx, valid_idx = stratified_split(arrays["train_labels"], 5000, 0)
    train = train_idx[stratified_subset(arrays["train_labels"][train_idx], n_train, 0)]
    valid = valid_idx[stratified_subset(arrays["train_labels"][valid_idx], n_valid, 0)]
    test = stratified_subset(arrays["test_labels"], n_test, 0)
    data = SearchData(resize_images(arrays["train_images"][train], size), arrays["train_labels"][train],
                      resize_images(arrays["train_images"][valid], size), arrays["train_labels"][valid])
    return data, ImageSet(resize_images(arrays["test_images"][test], size), arrays["test_labels"][test])


def test_accuracy(hp: HyperParams, setup: TrialSetup, data: SearchData, test: ImageSet, compute: Compute) -> float:
    """Train ``hp`` as a trial trains (same images, epochs, seed) and score it on the test images."""
    seed_everything(setup.seed)
    valid = ImageSet(data.valid_images, data.valid_labels)
    settings = FitSettings(max_epochs=setup.epochs, patience=setup.epochs + 1, seed=setup.seed)
    net = build_net(ModelSpec.of(setup.model, data.train_images.shape[-1], hp.dropout), hp, compute, settings, valid)
    net.fit(ImageSet(data.train_images, data.train_labels), y=None)
    return float((net.predict(test) == test.labels.numpy()).mean())


def run(strategy: str, setup: TrialSetup, data: SearchData, budget: int, folder: Path) -> dict:
    n_train = len(data.train_labels)
    start = time.perf_counter()
    if strategy == "optuna":
        plan = StudyPlan(storage=f"journal:{folder}", study=f"bench-{setup.seed}", space=SPACE, seed=setup.seed,
                         epochs=setup.epochs, factor=FACTOR, train_images=n_train, budget=budget)
        results = run_optuna(plan, setup, data, say=lambda line: print(line, file=sys.stderr))
        best = best_of(results)
    else:
        grid = (GRID if strategy == "grid" else HALVING_GRID).combinations()
        rounds = plan_rounds(strategy, len(grid), setup.epochs, n_train, FACTOR, "epochs")
        results = run_search(grid, rounds, setup, data, progress=lambda line: print(line, file=sys.stderr))
        best = best_trial(results)
    return {"best": best, "seconds": time.perf_counter() - start, "trials": len(results),
            "pruned": sum(r.status == "pruned" for r in results),
            "images": sum(r.images_processed for r in results)}


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", default=DEBIAN_FOLDER, help="a folder with the four Fashion-MNIST files")
    p.add_argument("--train-images", type=int, default=300)
    p.add_argument("--valid-images", type=int, default=300)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    data, test = load_data(args.raw, args.train_images, args.valid_images, args.test_images, 67)
    model = load_params().model.model_copy(update={"name": "AlexNetSmall", "head": "linear", "lrn": False,
                                                   "precision": args.precision})
    compute = Compute.resolve(args.precision, "cpu")
    budget = len(GRID.combinations()) * args.epochs * args.train_images
    strategies = ("grid", "halving", "optuna")
    runs: dict[str, list[dict]] = {s: [] for s in strategies}
    chosen_test: dict[tuple, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            setup = TrialSetup(model, seed, epochs=args.epochs, threads=args.threads)
            for strategy in strategies:
                print(f"== seed {seed}: {strategy}", file=sys.stderr)
                found = run(strategy, setup, data, budget, Path(tmp))
                key = (found["best"].hp, seed)
                if key not in chosen_test:
                    chosen_test[key] = test_accuracy(found["best"].hp, setup, data, test, compute)
                found["test_acc"] = chosen_test[key]
                runs[strategy].append(found)

    print(f"# {Path(sys.argv[0]).as_posix()} {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} torch threads, precision {resolve_precision(args.precision, 'cpu')}")
    print(f"# AlexNetSmall at 67 px; {args.train_images} training, {args.valid_images} validation and "
          f"{args.test_images} test images (stratified, the same for every run); {args.epochs} epochs a trial; "
          f"seeds 0..{args.seeds - 1}")
    print(f"# budget: {budget} training images = grid's {len(GRID.combinations())} combinations x {args.epochs} "
          f"epochs x {args.train_images} images")
    print(f"# grid {GRID.model_dump()}; halving (epochs, factor {FACTOR}) {HALVING_GRID.model_dump()}; "
          f"optuna {SPACE.model_dump()}")
    print()
    print("strategy  seed  best valid_acc  test_acc  images  trials  pruned  seconds  choice")
    for strategy in strategies:
        for seed, r in enumerate(runs[strategy]):
            print(f"{strategy:8}  {seed:4}  {r['best'].valid_acc:13.4f}  {r['test_acc']:8.4f}  {r['images']:6}  "
                  f"{r['trials']:6}  {r['pruned']:6}  {r['seconds']:7.1f}  {r['best'].hp.label()}")
    print()
    print("| strategy | best valid_acc (%) | test_acc of its choice (%) | images processed | trials (pruned) "
          "| wall time (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for strategy in strategies:
        rs = runs[strategy]
        print(f"| {strategy} | {mean_sd([r['best'].valid_acc for r in rs], 100)} | "
              f"{mean_sd([r['test_acc'] for r in rs], 100)} | {statistics.mean(r['images'] for r in rs):,.0f} | "
              f"{statistics.mean(r['trials'] for r in rs):.1f} ({statistics.mean(r['pruned'] for r in rs):.1f}) | "
              f"{mean_sd([r['seconds'] for r in rs], 1, 0)} |")


if __name__ == "__main__":
    main()
