"""Benchmark: full grid against successive halving, side by side, on one grid and one data subset.

    PYTHONPATH=src python benchmarks/search.py > benchmarks/results/search.txt

Needs data/resized (dvc repro resize). Both strategies run the same trials code with the same
seed, threads and workers; MLflow is off. Progress goes to stderr, the report to stdout; its last
line is ``compute_ratio=<halving images / grid images> accuracy_gap=<grid best - halving best, in
accuracy points>``. Images processed (epochs x training images, over all trials) are exact; wall
times depend on what else runs on the machine.
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
from fmnist.params import GridParams
from fmnist.search import SearchData, TrialSetup, best_trial, plan_rounds, run_search

# 18 combinations: with factor 3, halving runs 18, 6 and 2 trials on 1/9, 1/3 and all of the
# training images, one third of the grid's images.
GRID = GridParams(lr=(0.003, 0.001, 0.0003), batch_size=(32, 128), dropout=(0.5, 0.2, 0.0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/resized")
    p.add_argument("--train-images", type=int, default=1800, help="training images per trial (grid)")
    p.add_argument("--valid-images", type=int, default=1000, help="validation images, stratified")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--factor", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    args = p.parse_args()

    train_images, train_labels = load_split(args.data, "train", mmap=True)
    valid_images, valid_labels = load_split(args.data, "valid", mmap=True)
    train = stratified_subset(train_labels, args.train_images, args.seed)
    valid = stratified_subset(valid_labels, args.valid_images, args.seed)
    data = SearchData(np.asarray(train_images[train]), train_labels[train],
                      np.asarray(valid_images[valid]), valid_labels[valid])
    configs = GRID.combinations()
    setup = TrialSetup("AlexNetSmall", "linear", False, seed=args.seed, epochs=args.epochs, threads=args.threads)
    print(f"grid: {len(configs)} combinations of lr {list(GRID.lr)}, batch_size {list(GRID.batch_size)}, "
          f"dropout {list(GRID.dropout)}")
    print(f"data: {len(train)} training images per trial, {len(valid)} validation images, {args.epochs} epochs, "
          f"seed {args.seed}, {args.n_jobs} trials at once x {args.threads} torch thread(s), "
          f"torch {torch.__version__}, {platform.machine()} with {os.cpu_count()} cores")

    results = {}
    for strategy in ("grid", "halving"):
        rounds = plan_rounds(strategy, len(configs), args.epochs, len(train), args.factor, "samples",
                             min_samples=max(GRID.batch_size))
        start = time.perf_counter()
        rows = run_search(configs, rounds, setup, data, n_jobs=args.n_jobs,
                          progress=lambda line: print(line, file=sys.stderr))
        seconds = time.perf_counter() - start
        best = best_trial(rows)
        images = sum(r["images_processed"] for r in rows)
        results[strategy] = (best, images)
        print(f"\n{strategy}: rounds (trials x training images) "
              + ", ".join(f"{r.candidates} x {r.samples}" for r in rounds))
        print(f"{'round':>5} {'lr':>7} {'batch':>5} {'dropout':>7} {'images':>6} {'valid_acc':>9} {'status':>6}")
        for r in rows:
            print(f"{r['round'] + 1:>5} {r['lr']:>7g} {r['batch_size']:>5} {r['dropout']:>7g} "
                  f"{r['train_images']:>6} {r['valid_acc']:>9.4f} {r['status']:>6}")
        print(f"{strategy}: best lr={best['lr']:g} batch_size={best['batch_size']} dropout={best['dropout']:g} "
              f"valid_acc={best['valid_acc']:.4f}; {len(rows)} trials, {images} training images processed, "
              f"wall time {seconds:.0f} s")

    (grid_best, grid_images), (halving_best, halving_images) = results["grid"], results["halving"]
    ratio = halving_images / grid_images
    gap = (grid_best["valid_acc"] - halving_best["valid_acc"]) * 100
    met = ratio <= 1 / 3 and gap <= 0.5
    print(f"\ngoal (within 0.5 accuracy points of grid's best with at most a third of its images): "
          f"{'met' if met else 'NOT met'}")
    print(f"compute_ratio={ratio:.4f} accuracy_gap={gap:.2f}")


if __name__ == "__main__":
    main()
