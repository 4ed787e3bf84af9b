"""Stage search: hyper-parameter search over lr, batch_size and dropout, scored on validation.

    python stages/search.py --data data/resized --out results/search --plot plots/search.png

Reads params ``search.*`` and ``model.*``. Each trial trains on ``search.subset`` training images
(0 = all) and is scored on the validation split. ``search.strategy`` is ``grid`` (every
combination for ``search.epochs``) or ``halving`` (successive halving with epochs as the
resource). Writes ``best_params.json`` and ``trials.json``, and the search plot. MLflow: one parent
run, one nested run per trial with its per-epoch curves.
"""

from pathlib import Path

from fmnist import stage
from fmnist.data import load_split, stratified_subset
from fmnist.files import write_json
from fmnist.params import flatten, load_params, to_dict
from fmnist.plots import search_results
from fmnist.search import TrialSetup, best_trial, run_rounds, run_trial, schedule_for
from fmnist.tracking import MlflowEpochLogger, Tracker, file_digest, lineage_tags
from fmnist.training import ImageSet, seed_everything, set_threads

TABLE_KEYS = ("round", "lr", "batch_size", "dropout", "epochs", "images_processed", "valid_acc",
              "best_epoch", "status", "error")


def main() -> None:
    args = stage.parser(__doc__, data="data/resized", out="results/search",
                        plot="plots/search.png").parse_args()
    params = load_params(args.params)
    search = params.search
    seed_everything(search.seed)
    set_threads(0)
    train_images, train_labels = load_split(args.data, "train", mmap=True)
    keep = stratified_subset(train_labels, search.subset, search.seed)
    train = ImageSet(train_images[keep], train_labels[keep])
    valid = ImageSet(*load_split(args.data, "valid"))
    too_big = [b for b in search.grid.batch_size if b > len(train)]
    if too_big:
        raise stage.StageError(f"params.yaml: search.grid.batch_size {too_big} larger than the {len(train)} "
                               f"training images of a trial; allowed: 1..{len(train)}")
    configs = search.grid.combinations()
    schedule = schedule_for(search.strategy, len(configs), search.epochs, search.factor)
    setup = TrialSetup(params.model.name, params.model.head, params.model.lrn, search.seed,
                       patience=search.epochs + 1)

    tracker = Tracker(params.tracking.experiment)
    data = Path(args.data)
    tags = lineage_tags("search", {"train_images": data / "train_images.npy",
                                   "valid_images": data / "valid_images.npy"})
    with tracker.run("search", tags=tags) as parent:
        parent.log_params(flatten({"search": to_dict(search), "model": to_dict(params.model)})
                          | {"search.trials": len(configs), "search.train_images": len(train)})

        def trial(config: dict, epochs: int) -> dict:
            name = f"lr={config['lr']:g} bs={config['batch_size']} dropout={config['dropout']:g}"
            with tracker.run(name, tags=tags | {"fmnist.stage": "search-trial"}, parent=parent.id) as child:
                child.log_params(config | {"epochs": epochs, "train_images": len(train)})
                row = run_trial(config, epochs, setup, train, valid,
                                callbacks=[("mlflow", MlflowEpochLogger(child))])
                child.log_metrics({"valid_acc_best": row["valid_acc"], "seconds": row["seconds"],
                                   "images_processed": row["images_processed"]})
                child.set_tags({"fmnist.trial_status": row["status"], "fmnist.trial_error": row["error"]})
                child.failed = row["status"] != "ok"
            return row

        rows = run_rounds(configs, schedule, trial, progress=print)
        best = best_trial(rows)
        table = [{k: r.get(k, 0) for k in TABLE_KEYS} for r in rows]
        best_params = {k: best[k] for k in ("lr", "batch_size", "dropout")}
        out = Path(args.out)
        write_json(out / "trials.json", table)
        write_json(out / "best_params.json", best_params | {"valid_acc": best["valid_acc"],
                                                            "epochs": best["epochs"]})
        search_results(rows, args.plot)
        parent.log_metrics({"best_valid_acc": best["valid_acc"],
                            "images_processed": sum(r["images_processed"] for r in rows),
                            "failed_trials": sum(r["status"] != "ok" for r in rows)})
        parent.log_params({f"best.{k}": v for k, v in best_params.items()})
        parent.set_tags({"fmnist.output.best_params": file_digest(out / "best_params.json")})
        for path in (out / "trials.json", out / "best_params.json", Path(args.plot)):
            parent.log_artifact(path)
    print(f"best: {best_params} valid_acc={best['valid_acc']:.4f}")


if __name__ == "__main__":
    stage.run(main)
