"""Stage search: hyper-parameter search over lr, batch_size and dropout.

    python stages/search.py --data data/resized --out results/search --plot plots/search.png

Reads params ``search.*``, ``model.*`` and ``tracking.experiment``. Each trial trains on
``search.subset`` training images (0 = all) and is scored on the validation split, or by
stratified k-fold on its own images when ``search.cv`` >= 2. ``search.strategy`` is ``grid``
(every combination for ``search.epochs``), ``halving`` (successive halving over
``search.resource``: samples or epochs) or ``optuna`` (the ranges of ``search.optuna``, TPE and
a pruner, until ``search.optuna.budget`` training images are spent, in a study kept in
``$FMNIST_OPTUNA_STORAGE`` or ``.dvc/tmp/optuna/``). Trials run ``search.n_jobs`` at once on this
machine, or on the Dask cluster at ``search.scheduler``. Writes ``trials.json`` (one row per
trial, with the resource it got), ``best_params.json`` and the search plot; when every trial
failed it writes nothing and exits with status 2. MLflow: one parent run, one nested run per trial.
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
from fmnist.search.trial import OPTUNA_TABLE_KEYS, TABLE_KEYS, SearchData, TrackingTarget, TrialSetup
from fmnist.repo import file_digest, project_root
from fmnist.tracking import Tracker, lineage_tags


def optuna_plan(search, model, data: SearchData, n_grid: int):
    """The study this search runs in: its storage, name (from the params and data) and budget."""
    from fmnist.search.optuna_search import StudyPlan
    from fmnist.search.study import storage_target, study_name

    n_train = len(data.train_labels)
    space = {"optuna": to_dict(search.optuna) | {"budget": None}, "epochs": search.epochs, "seed": search.seed,
             "factor": search.factor, "model": to_dict(model)}
    arrays = [data.train_images, data.train_labels, data.valid_images, data.valid_labels]
    return StudyPlan(storage=storage_target(project_root()), study=study_name(space, arrays), space=search.optuna,
                     seed=search.seed, epochs=search.epochs, factor=search.factor, train_images=n_train,
                     budget=search.optuna.budget or n_grid * search.epochs * n_train)


def run_optuna_search(search, model, setup: TrialSetup, data: SearchData, n_grid: int, target, parent, plot: str):
    """The optuna strategy: its trials and best trial; draws the plot, logs Optuna's views."""
    import tempfile

    from fmnist.search.optuna_search import best_of, load_study, run_optuna
    from fmnist.search.optuna_views import search_plot, view_pngs
    from fmnist.search.study import redact

    plan = optuna_plan(search, model, data, n_grid)
    parent.set_tags({"fmnist.optuna_study": plan.study, "fmnist.optuna_storage": redact(plan.storage)})
    parent.log_params({"search.optuna.budget_images": plan.budget})
    results = run_optuna(plan, setup, data, tracking=target, n_jobs=search.n_jobs, scheduler=search.scheduler,
                         say=print)
    best = best_of(results)  # no trial ran to its end: SearchError, nothing written
    rows = [r.table_row(OPTUNA_TABLE_KEYS) for r in results]
    views = view_pngs(load_study(plan), search.seed)
    search_plot(rows, views, plot)
    with tempfile.TemporaryDirectory() as tmp:
        for name, png in views.items():
            (Path(tmp) / f"{name}.png").write_bytes(png)
        parent.log_artifact(tmp, "optuna")
    return results, best, rows, {"trial": best.index}


def main() -> None:
    args = stage.parser(__doc__, data="data/resized", out="results/search",
                        plot="plots/search.png").parse_args()
    params = load_params(args.params)
    search = params.search
    seed_everything(search.seed)
    set_threads(0)
    data = _search_data(args.data, search)
    n_train = len(data.train_labels)
    grid = search.grid.combinations()
    optuna = search.strategy == "optuna"
    rounds = [] if optuna else plan_rounds(search.strategy, len(grid), search.epochs, n_train, search.factor,
                                           search.resource, min_samples=max(search.grid.batch_size))
    setup = TrialSetup(params.model, search.seed, epochs=search.epochs, cv=search.cv, threads=search.threads)

    tracker = Tracker(params.tracking.experiment)
    folder = Path(args.data)
    tags = lineage_tags("search", {"train_images": folder / "train_images.npy",
                                   "valid_images": folder / "valid_images.npy"})
    with tracker.run("search", tags=tags, datasets={"train_images": folder / "train_images.npy",
                                                   "valid_images": folder / "valid_images.npy"},
                     system_metrics=True) as parent:
        parent.log_params(flatten({"search": to_dict(search), "model": to_dict(params.model)})
                          | {"search.combinations": len(grid), "search.train_images": n_train,
                             "search.rounds": len(rounds)})
        target = TrackingTarget(tracker.uri, params.tracking.experiment, parent.id,
                                tags | {"fmnist.stage": "search-trial"})
        if optuna:
            results, best, rows, where = run_optuna_search(search, params.model, setup, data, len(grid), target,
                                                           parent, args.plot)
        else:
            results, best, rows, where = _run_rounds(grid, rounds, setup, data, target, search, args.plot)
        _write_outputs(Path(args.out), rows, best, where)
        images = _log_outcome(parent, results, best, Path(args.out), Path(args.plot))
    print(f"best: {best.hp.as_dict()} valid_acc={best.valid_acc:.4f} after {len(results)} trials, "
          f"{images} training images processed")


def _search_data(folder: str, search) -> SearchData:
    """The stratified subset of the training images the trials train on, and the validation
    split where they are scored on it (``search.cv`` 0)."""
    train_images, train_labels = load_split(folder, "train", mmap=True)
    keep = stratified_subset(train_labels, search.subset, search.seed)
    data = SearchData(train_images[keep], train_labels[keep])
    if search.cv == 0:
        data = SearchData(data.train_images, data.train_labels, *load_split(folder, "valid"))
    return data


def _run_rounds(grid, rounds, setup: TrialSetup, data: SearchData, target, search, plot: str):
    """The grid and halving strategies: their trials, the best, the table rows; draws the plot."""
    results = run_search(grid, rounds, setup, data, tracking=target, n_jobs=search.n_jobs,
                         scheduler=search.scheduler, progress=print)
    best = best_trial(results)  # every trial failed: SearchError, nothing written
    rows = [r.table_row(TABLE_KEYS) for r in results]
    latest = {r.index: row for r, row in zip(results, rows)}  # each combination at its largest resource
    search_results(list(latest.values()), plot)
    return results, best, rows, {"round": best.round}


def _write_outputs(out: Path, rows: list[dict], best, where: dict) -> None:
    write_json(out / "trials.json", rows)
    write_json(out / "best_params.json", best.hp.as_dict() | {
        "valid_acc": best.valid_acc, "valid_acc_std": best.valid_acc_std, "epochs": best.epochs,
        "train_images": best.train_images} | where)


def _log_outcome(parent, results, best, out: Path, plot: Path) -> int:
    """The search run's metrics, best params and files; returns the training images processed."""
    images = sum(r.images_processed for r in results)
    parent.log_metrics({"best_valid_acc": best.valid_acc, "images_processed": images,
                        "trials": len(results), "failed_trials": sum(r.status == "failed" for r in results),
                        "pruned_trials": sum(r.status == "pruned" for r in results)})
    parent.log_params({f"best.{k}": v for k, v in best.hp.as_dict().items()})
    parent.set_tags({"fmnist.output.best_params": file_digest(out / "best_params.json")})
    for path in (out / "trials.json", out / "best_params.json", plot):
        parent.log_artifact(path)
    return images


if __name__ == "__main__":
    stage.run(main)
