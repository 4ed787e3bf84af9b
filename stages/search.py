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
from fmnist.compute import seed_everything, set_threads
from fmnist.data import load_split, stratified_subset
from fmnist.files import write_json
from fmnist.params import flatten, load_params, to_dict
from fmnist.plots import search_results
from fmnist.search.rounds import best_trial, run_search
from fmnist.search.schedule import plan_rounds
from fmnist.search.trial import SearchData, TrackingTarget, TrialSetup
from fmnist.repo import file_digest
from fmnist.tracking import Tracker, lineage_tags


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
        data = SearchData(data.train_images, data.train_labels, *load_split(args.data, "valid"))
    n_train = len(data.train_labels)
    grid = search.grid.combinations()
    rounds = plan_rounds(search.strategy, len(grid), search.epochs, n_train, search.factor,
                         search.resource, min_samples=max(search.grid.batch_size))
    setup = TrialSetup(params.model, search.seed, epochs=search.epochs, cv=search.cv, threads=search.threads)

    tracker = Tracker(params.tracking.experiment)
    folder = Path(args.data)
    tags = lineage_tags("search", {"train_images": folder / "train_images.npy",
                                   "valid_images": folder / "valid_images.npy"})
    with tracker.run("search", tags=tags, datasets={"train_images": folder / "train_images.npy",
                                                   "valid_images": folder / "valid_images.npy"}) as parent:
        parent.log_params(flatten({"search": to_dict(search), "model": to_dict(params.model)})
                          | {"search.combinations": len(grid), "search.train_images": n_train,
                             "search.rounds": len(rounds)})
        target = TrackingTarget(tracker.uri, params.tracking.experiment, parent.id,
                                tags | {"fmnist.stage": "search-trial"})
        results = run_search(grid, rounds, setup, data, tracking=target, n_jobs=search.n_jobs,
                             scheduler=search.scheduler, progress=print)
        best = best_trial(results)  # every trial failed: SearchError, nothing written
        out = Path(args.out)
        write_json(out / "trials.json", [r.table_row() for r in results])
        write_json(out / "best_params.json", best.hp.as_dict() | {
            "valid_acc": best.valid_acc, "valid_acc_std": best.valid_acc_std, "epochs": best.epochs,
            "train_images": best.train_images, "round": best.round})
        latest = {r.index: r.table_row() for r in results}  # each combination at the largest resource it got
        search_results(list(latest.values()), args.plot)
        images = sum(r.images_processed for r in results)
        parent.log_metrics({"best_valid_acc": best.valid_acc, "images_processed": images,
                            "trials": len(results), "failed_trials": sum(not r.ok for r in results)})
        parent.log_params({f"best.{k}": v for k, v in best.hp.as_dict().items()})
        parent.set_tags({"fmnist.output.best_params": file_digest(out / "best_params.json")})
        for path in (out / "trials.json", out / "best_params.json", Path(args.plot)):
            parent.log_artifact(path)
    print(f"best: {best.hp.as_dict()} valid_acc={best.valid_acc:.4f} after {len(results)} trials, "
          f"{images} training images processed")


if __name__ == "__main__":
    stage.run(main)
