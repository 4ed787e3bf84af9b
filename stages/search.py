"""Stage search: hyper-parameter search over lr, batch_size and dropout.

    python stages/search.py --data data/resized --out results/search --plot plots/search.png

Reads params ``search.*``, ``model.*`` and ``tracking.experiment``. Each trial trains on
``search.subset`` training images (0 = all) and is scored on the validation split, or by
stratified k-fold on its own images when ``search.cv`` >= 2. ``search.strategy`` is ``grid``
(every combination for ``search.epochs``) or ``halving`` (successive halving over
``search.resource``: samples or epochs). Trials run ``search.n_jobs`` at once on this machine,
or on the Dask cluster at ``search.scheduler``. Writes ``trials.json`` (one row per trial, with
the resource it got), ``best_params.json`` and the search plot; when every trial failed it
writes nothing and exits with status 2. MLflow: one parent run, one nested run per trial.
"""

from pathlib import Path

from fmnist import stage
from fmnist.data import load_split, stratified_subset
from fmnist.files import write_json
from fmnist.params import flatten, load_params, to_dict
from fmnist.plots import search_results
from fmnist.search import (HP_KEYS, TABLE_KEYS, SearchData, TrackingTarget, TrialSetup, best_trial,
                           plan_rounds, run_search)
from fmnist.tracking import Tracker, file_digest, lineage_tags
from fmnist.training import seed_everything, set_threads


def main() -> None:
    args = stage.parser(__doc__, data="data/resized", out="results/search",
                        plot="plots/search.png").parse_args()
    params = load_params(args.params)
    search = params.search
    seed_everything(search.seed)
    set_threads(0)
    train_images, train_labels = load_split(args.data, "train", mmap=True)
    keep = stratified_subset(train_labels, search.subset, search.seed)
    data = SearchData(train_images[keep], train_labels[keep])
    if search.cv == 0:
        valid_images, valid_labels = load_split(args.data, "valid")
        data = SearchData(data.train_images, data.train_labels, valid_images, valid_labels)
    n_train = len(data.train_labels)
    too_big = [b for b in search.grid.batch_size if b > n_train]
    if too_big:
        raise stage.StageError(f"params.yaml: search.grid.batch_size {too_big} larger than the {n_train} "
                               f"training images of a trial; allowed: 1..{n_train}")
    configs = search.grid.combinations()
    rounds = plan_rounds(search.strategy, len(configs), search.epochs, n_train, search.factor,
                         search.resource, min_samples=max(search.grid.batch_size))
    setup = TrialSetup(params.model.name, params.model.head, params.model.lrn, search.seed,
                       epochs=search.epochs, cv=search.cv, threads=search.threads,
                       precision=params.model.precision)

    tracker = Tracker(params.tracking.experiment)
    folder = Path(args.data)
    tags = lineage_tags("search", {"train_images": folder / "train_images.npy",
                                   "valid_images": folder / "valid_images.npy"})
    with tracker.run("search", tags=tags) as parent:
        parent.log_params(flatten({"search": to_dict(search), "model": to_dict(params.model)})
                          | {"search.combinations": len(configs), "search.train_images": n_train,
                             "search.rounds": len(rounds)})
        target = TrackingTarget(tracker.uri, params.tracking.experiment, parent.id,
                                tags | {"fmnist.stage": "search-trial"})
        rows = run_search(configs, rounds, setup, data, tracking=target, n_jobs=search.n_jobs,
                          scheduler=search.scheduler, progress=print)
        best = best_trial(rows)  # every trial failed: SearchError, nothing written
        # A failed trial has no accuracy: null, not NaN (which is not JSON).
        table = [{k: None if k == "valid_acc" and r["status"] != "ok" else r[k] for k in TABLE_KEYS}
                 for r in rows]
        best_params = {k: best[k] for k in HP_KEYS}
        out = Path(args.out)
        write_json(out / "trials.json", table)
        write_json(out / "best_params.json", best_params | {k: best[k] for k in (
            "valid_acc", "valid_acc_std", "epochs", "train_images", "round")})
        # Each combination at the largest resource it got.
        latest = {r["index"]: r for r in rows}
        search_results(list(latest.values()), args.plot)
        parent.log_metrics({"best_valid_acc": best["valid_acc"],
                            "images_processed": sum(r["images_processed"] for r in rows),
                            "trials": len(rows), "failed_trials": sum(r["status"] != "ok" for r in rows)})
        parent.log_params({f"best.{k}": v for k, v in best_params.items()})
        parent.set_tags({"fmnist.output.best_params": file_digest(out / "best_params.json")})
        for path in (out / "trials.json", out / "best_params.json", Path(args.plot)):
            parent.log_artifact(path)
    print(f"best: {best_params} valid_acc={best['valid_acc']:.4f} after {len(rows)} trials, "
          f"{sum(r['images_processed'] for r in rows)} training images processed")


if __name__ == "__main__":
    stage.run(main)
