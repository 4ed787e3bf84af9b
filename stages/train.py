"""Stage train: skorch NeuralNetClassifier (Adam, cross-entropy) with the seed's callbacks.

    python stages/train.py --data data/resized --search results/search/best_params.json \
        --model models/model.pt --history results/train/history.json \
        --metrics metrics/train.json --checkpoints checkpoints/train

Reads params ``train.*`` and ``model.*``; lr, batch_size and dropout come from search's best
params when ``train.use_search`` is true. Callbacks: progress bar, cosine LR, early stopping on
valid accuracy, train accuracy, per-epoch checkpoint (a killed run resumes from its last epoch,
and goes on logging into the MLflow run the checkpoint names) and the best checkpoint loaded at
the end. Writes the model, its per-epoch history and metrics; logs params, curves, checkpoint,
summary and the registered model to MLflow.
"""

import time
from pathlib import Path

from fmnist import stage
from fmnist.allocator import tune_malloc_for
from fmnist.batches import ImageSet
from fmnist.checkpoint import EpochCheckpoint, code_digests, fingerprint
from fmnist.compute import Compute, seed_everything, set_threads
from fmnist.data import load_split
from fmnist.files import read_json, write_json
from fmnist.model import ModelSpec
from fmnist.params import HyperParams, flatten, load_params, to_dict
from fmnist.predict import save_model
from fmnist.pyfunc import log_trained_model
from fmnist.tracking import Tracker, lineage_tags, write_run_id
from fmnist.training import FitSettings, MlflowEpochLogger, build_net, epoch_history, fit


def main() -> None:
    args = stage.parser(__doc__, data="data/resized", search="results/search/best_params.json",
                        model="models/model.pt", history="results/train/history.json",
                        metrics="metrics/train.json", checkpoints="checkpoints/train",
                        run_id="metrics/mlflow.json").parse_args()
    params = load_params(args.params)
    train_p = params.train
    hp = HyperParams.from_dict(read_json(args.search), args.search) if train_p.use_search else train_p.hyper_params()
    stage.quiet_progress_bar_in_logs()
    seed_everything(train_p.seed)
    threads = set_threads(train_p.threads)
    data = Path(args.data)
    train = ImageSet(*load_split(data, "train"))
    valid = ImageSet(*load_split(data, "valid", size=train.size))
    tune_malloc_for(train.size)  # 67 px: no page faults per step; 227 px: no heap fragmentation
    compute = Compute.resolve(params.model.precision)
    spec = ModelSpec.of(params.model, train.size, hp.dropout)

    tracker = Tracker(params.tracking.experiment)
    tags = lineage_tags("train", {"train_images": data / "train_images.npy",
                                  "valid_images": data / "valid_images.npy", "best_params": Path(args.search)})
    tags |= tracker.link("fmnist.search_run_id", "fmnist.output.best_params", tags["fmnist.input.best_params"])
    ckpt = _checkpoint(args.checkpoints, hp, params, compute, tags)
    datasets = {"train_images": data / "train_images.npy", "valid_images": data / "valid_images.npy"}
    with tracker.run("train", tags=tags, datasets=datasets, system_metrics=True,
                     resume=ckpt.run_to_resume(train_p.max_epochs)) as run:
        ckpt.run_id = run.id
        run.log_params(flatten({"train": to_dict(train_p), "model": to_dict(params.model)})
                       | {f"used.{k}": v for k, v in hp.as_dict().items()}
                       | {"input_size": train.size, "train_images": len(train), "threads": threads,
                          "precision": compute.precision, "device": compute.device})
        logger = MlflowEpochLogger(run)
        net = build_net(spec, hp, compute, FitSettings.of(train_p), valid,
                        extra_callbacks=[("checkpoint", ckpt), ("mlflow", logger)])
        print(net.plan.describe())
        run.log_params(net.plan.as_params())
        start = time.perf_counter()
        trained = fit(net, train, ckpt, on_resume=logger.log_history, seed=train_p.seed)
        seconds = time.perf_counter() - start
        history, best = _write_outputs(args, net, spec, compute, hp)
        run.log_metrics({"best_epoch": best["epoch"], "train_seconds": seconds,
                         "images_per_second": trained * len(train) / seconds if trained else 0.0})
        _log_model(run, net, spec, args, ckpt, params.tracking.registered_model, hp, valid, best)
        write_run_id(args.run_id, run.id)
    ckpt.finish(len(history))  # logged above; a finished run is never resumed, so DVC need not cache it
    print(f"best valid_acc={best['valid_acc']:.4f} at epoch {best['epoch']} of {len(history)} "
          f"({trained} trained now, {seconds:.0f} s)")


def _checkpoint(folder: str, hp: HyperParams, params, compute: Compute, tags: dict) -> EpochCheckpoint:
    """The per-epoch checkpoint; what makes it resumable: the same params, precision, data and code."""
    return EpochCheckpoint(folder, fingerprint(
        hp.as_dict(), to_dict(params.train), to_dict(params.model), compute.precision, code_digests(__file__),
        tags["fmnist.input.train_images"], tags["fmnist.input.valid_images"]))


def _write_outputs(args, net, spec: ModelSpec, compute: Compute, hp: HyperParams) -> tuple[list[dict], dict]:
    """The model, its per-epoch history and the metrics file; returns the history and its best epoch."""
    history = epoch_history(net)
    best = max(history, key=lambda r: r["valid_acc"])
    save_model(net.module_, spec, args.model)
    write_json(args.history, history)
    write_json(args.metrics, {"best_valid_acc": best["valid_acc"], "best_epoch": best["epoch"],
                              "epochs": len(history), "precision": compute.precision, **hp.as_dict()})
    return history, best


def _log_model(run, net, spec: ModelSpec, args, ckpt: EpochCheckpoint, registered_name: str, hp: HyperParams,
               valid: ImageSet, best: dict) -> None:
    """The trained model as an MLflow logged model (registered), with its best validation accuracy
    on its page too, beside the data it was measured on."""
    model = log_trained_model(run, net.module_, spec, args.model, ckpt.best_path,
                              files=(args.history, args.metrics, args.params), example=valid.images[:2].numpy(),
                              registered_name=registered_name, hyper_params=hp.as_dict())
    run.log_metrics({"best_valid_acc": best["valid_acc"]}, model_id=model.model_id, dataset="valid_images")


if __name__ == "__main__":
    stage.run(main)
