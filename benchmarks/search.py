"""Benchmark: full grid against successive halving, side by side, on one grid and one data subset.

    PYTHONPATH=src python benchmarks/search.py > benchmarks/results/search.txt

Needs data/resized (dvc repro resize). Every strategy runs the same trials code with the same
seed, threads, workers and precision; MLflow is off. It runs the grid, then halving with epochs
as the resource (the headline: a survivor trains on from where it was, so its last round is the
grid's trial of that combination, bit for bit), then halving with samples as the resource (each
round trains afresh on more images), for comparison. Progress goes to stderr, the report to
stdout; its last line is ``compute_ratio=<halving images / grid images> accuracy_gap=<grid best -
halving best, in accuracy points>`` for the epochs resource. Images processed (epochs x training
images, over all trials) are exact; wall times depend on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

from fmnist.data import load_split, stratified_subset
from fmnist.compute import resolve_precision
from fmnist.params import GridParams, load_params
from fmnist.search.rounds import best_trial, run_search
from fmnist.search.schedule import plan_rounds
from fmnist.search.trial import SearchData, TrialSetup

# 18 combinations: with factor 3, halving runs 18, 6 and 2 trials for 1/9, 1/3 and all of the
# budget. With epochs as the resource the survivors go on, so halving trains 18 x 1 + 6 x 2 + 2 x 6
# = 42 epochs against the grid's 18 x 9 = 162 (0.26); with samples, 18 x 1/9 + 6 x 1/3 + 2 x 1 = 6
# full trials against 18 (1/3).
GRID = GridParams(lr=(0.003, 0.001, 0.0003), batch_size=(64, 256), dropout=(0.5, 0.2, 0.0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/resized")
    p.add_argument("--train-images", type=int, default=2400, help="training images per trial (grid)")
    p.add_argument("--valid-images", type=int, default=2000, help="validation images, stratified")
    p.add_argument("--epochs", type=int, default=9, help="epochs per trial (grid; halving's last round)")
    p.add_argument("--factor", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = p.parse_args()

    train_images, train_labels = load_split(args.data, "train", mmap=True)
    valid_images, valid_labels = load_split(args.data, "valid", mmap=True)
    train = stratified_subset(train_labels, args.train_images, args.seed)
    valid = stratified_subset(valid_labels, args.valid_images, args.seed)
    data = SearchData(np.asarray(train_images[train]), train_labels[train],
                      np.asarray(valid_images[valid]), valid_labels[valid])
    configs = GRID.combinations()
    model = load_params().model.model_copy(update={"name": "AlexNetSmall", "head": "linear", "lrn": False,
                                                    "precision": args.precision})
    setup = TrialSetup(model, seed=args.seed, epochs=args.epochs, threads=args.threads)
    print(f"grid: {len(configs)} combinations of lr {list(GRID.lr)}, batch_size {list(GRID.batch_size)}, "
          f"dropout {list(GRID.dropout)}")
    print(f"data: {len(train)} training images per trial, {len(valid)} validation images, {args.epochs} epochs, "
          f"seed {args.seed}, {args.n_jobs} trials at once x {args.threads} torch thread(s), "
          f"precision {resolve_precision(args.precision, 'cpu')}, "
          f"torch {torch.__version__}, {platform.machine()} with {os.cpu_count()} cores")

    results = {}
    for name, strategy, resource in (("grid", "grid", "samples"), ("halving-epochs", "halving", "epochs"),
                                     ("halving-samples", "halving", "samples")):
        rounds = plan_rounds(strategy, len(configs), args.epochs, len(train), args.factor, resource,
                             min_samples=max(GRID.batch_size))
        start = time.perf_counter()
        rows = run_search(configs, rounds, setup, data, n_jobs=args.n_jobs,
                          progress=lambda line: print(line, file=sys.stderr))
        seconds = time.perf_counter() - start
        best = best_trial(rows)
        images = sum(r.images_processed for r in rows)
        results[name] = (best, images)
        print(f"\n{name}: rounds (trials x epochs x training images) "
              + ", ".join(f"{r.candidates} x {r.epochs} x {r.samples}" for r in rounds))
        print(f"{'round':>5} {'lr':>7} {'batch':>5} {'dropout':>7} {'epochs':>6} {'images':>6} {'processed':>9} "
              f"{'valid_acc':>9} {'status':>6}")
        for r in rows:
            print(f"{r.round + 1:>5} {r.hp.lr:>7g} {r.hp.batch_size:>5} {r.hp.dropout:>7g} {r.epochs:>6} "
                  f"{r.train_images:>6} {r.images_processed:>9} {r.valid_acc:>9.4f} {r.status:>6}")
        print(f"{name}: best {best.hp.label()} valid_acc={best.valid_acc:.4f}; {len(rows)} trials, "
              f"{images} training images processed, wall time {seconds:.0f} s")

    grid_best, grid_images = results["grid"]
    print("\ngoal: within 0.5 accuracy points of grid's best with at most a third of its images")
    figures = {}
    for name in ("halving-epochs", "halving-samples"):
        best, images = results[name]
        figures[name] = ratio, gap = images / grid_images, (grid_best.valid_acc - best.valid_acc) * 100
        met = ratio <= 1 / 3 and gap <= 0.5
        print(f"{name}: {ratio:.4f} of grid's images, {gap:.2f} points below grid's best: "
              f"{'met' if met else 'NOT met'}")
    ratio, gap = figures["halving-epochs"]  # the headline
    print(f"compute_ratio={ratio:.4f} accuracy_gap={gap:.2f}")


if __name__ == "__main__":
    main()
