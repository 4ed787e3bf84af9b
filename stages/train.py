"""Stage train: skorch NeuralNetClassifier (Adam, cross-entropy) with the seed's callbacks.

    python stages/train.py --data data/resized --search results/search/best_params.json \
        --model models/model.pt --history results/train/history.json \
        --metrics metrics/train.json --checkpoints checkpoints/train

Reads params ``train.*`` and ``model.*``; lr, batch_size and dropout come from search's best
params when ``train.use_search`` is true. Callbacks: progress bar, cosine LR, early stopping on
valid accuracy, train accuracy, per-epoch checkpoint (a killed run resumes from its last epoch)
and the best checkpoint loaded at the end. Writes the model, its per-epoch history and metrics;
logs params, curves, checkpoint, summary and the registered model to MLflow.
"""

import os
import sys
import time
from pathlib import Path

from fmnist import stage
from fmnist.data import load_split, resize_images
from fmnist.files import read_json, write_json
from fmnist.params import flatten, load_params, to_dict
from fmnist.predict import save_model
from fmnist.pyfunc import log_pyfunc
from fmnist.tracking import EPOCH_KEYS, MlflowEpochLogger, Tracker, file_digest, lineage_tags
from fmnist.training import (EpochCheckpoint, ImageSet, build_net, fingerprint, fit, pick_device, resolve_precision,
                              seed_everything, set_threads)

HISTORY_KEYS = tuple(k for k in EPOCH_KEYS if k != "dur") + ("valid_acc_best",)  # no timings: deterministic


def main() -> None:
    args = stage.parser(__doc__, data="data/resized", search="results/search/best_params.json",
                        model="models/model.pt", history="results/train/history.json",
                        metrics="metrics/train.json", checkpoints="checkpoints/train").parse_args()
    params = load_params(args.params)
    train_p, model_p = params.train, params.model
    if train_p.use_search:
        best = read_json(args.search)
        hp = {"lr": float(best["lr"]), "batch_size": int(best["batch_size"]), "dropout": float(best["dropout"])}
    else:
        hp = {"lr": train_p.lr, "batch_size": train_p.batch_size, "dropout": train_p.dropout}
    if not sys.stderr.isatty():  # a log file, not a terminal: a progress line every 20 s is enough
        os.environ.setdefault("TQDM_MININTERVAL", "20")
    seed_everything(train_p.seed)
    threads = set_threads(train_p.threads)
    data = Path(args.data)
    train = ImageSet(*load_split(data, "train"))
    valid = ImageSet(*load_split(data, "valid", size=train.size))
    if hp["batch_size"] > len(train):
        source = "search's best params" if train_p.use_search else "params.yaml"
        raise stage.StageError(f"{source}: batch_size={hp['batch_size']} is larger than the {len(train)} "
                               f"training images; allowed: 1..{len(train)}")

    tracker = Tracker(params.tracking.experiment)
    inputs = {"train_images": data / "train_images.npy", "valid_images": data / "valid_images.npy",
              "best_params": Path(args.search)}
    tags = lineage_tags("train", inputs)
    search_run = tracker.find_run("fmnist.output.best_params", tags["fmnist.input.best_params"])
    if search_run:
        tags["fmnist.search_run_id"] = search_run
    device = pick_device()
    precision = resolve_precision(model_p.precision, device)
    # What makes a checkpoint resumable: the same params, precision, data and code (this script and
    # the package modules it runs, not the package's other files).
    code = [file_digest(m.__file__) for name, m in sorted(sys.modules.items())
            if name.startswith("fmnist.") and getattr(m, "__file__", None)] + [file_digest(__file__)]
    ckpt = EpochCheckpoint(args.checkpoints, fingerprint(hp, to_dict(train_p), to_dict(model_p), precision, code,
                                                         tags["fmnist.input.train_images"],
                                                         tags["fmnist.input.valid_images"]))
    config = {"model_name": model_p.name, "input_size": train.size, "dropout": hp["dropout"],
              "head": model_p.head, "lrn": model_p.lrn, "precision": model_p.precision}
    with tracker.run("train", tags=tags) as run:
        run.log_params(flatten({"train": to_dict(train_p), "model": to_dict(model_p)})
                       | {f"used.{k}": v for k, v in hp.items()}
                       | {"input_size": train.size, "train_images": len(train), "threads": threads,
                          "precision": precision, "device": device})
        logger = MlflowEpochLogger(run)
        net = build_net(model_name=model_p.name, input_size=train.size, head=model_p.head, lrn=model_p.lrn,
                        lr=hp["lr"], batch_size=hp["batch_size"], dropout=hp["dropout"],
                        max_epochs=train_p.max_epochs, patience=train_p.patience, seed=train_p.seed,
                        valid=valid, augment=train_p.augment, progress_bar=train_p.progress_bar,
                        extra_callbacks=[("checkpoint", ckpt), ("mlflow", logger)], device=device,
                        precision=precision)
        start = time.perf_counter()
        trained = fit(net, train, ckpt, on_resume=logger.log_history, seed=train_p.seed)
        seconds = time.perf_counter() - start

        history = [{k: row[k] for k in HISTORY_KEYS if k in row} | {"epoch": row["epoch"]} for row in net.history]
        best = max(history, key=lambda r: r["valid_acc"])
        save_model(net.module_, config, args.model)
        write_json(args.history, history)
        write_json(args.metrics, {"best_valid_acc": best["valid_acc"], "best_epoch": best["epoch"],
                                  "epochs": len(history), "precision": precision, **hp})
        run.log_metrics({"best_valid_acc": best["valid_acc"], "best_epoch": best["epoch"],
                         "train_seconds": seconds,
                         "images_per_second": trained * len(train) / seconds if trained else 0.0})
        model_md5 = file_digest(args.model)
        run.set_tags({"fmnist.output.model": model_md5, "fmnist.pipeline": run.id})
        for path in (args.model, args.history, args.metrics, args.params):
            run.log_artifact(path)
        run.log_artifact(ckpt.best_path, "checkpoints")
        _log_summary(run, net.module_, train.size)
        example = resize_images(valid.images[:2].numpy(), 28)  # callers send raw 28x28 images
        version = log_pyfunc(run.id, args.model, example, params.tracking.registered_model)
        if version:
            run.set_tags({"fmnist.registered_model": f"{params.tracking.registered_model}/{version}"})
    print(f"best valid_acc={best['valid_acc']:.4f} at epoch {best['epoch']} of {len(history)} "
          f"({trained} trained now, {seconds:.0f} s)")


def _log_summary(run, module, size: int) -> None:
    import tempfile

    from torchinfo import summary

    text = str(summary(module, input_size=(1, 1, size, size), verbose=0, device="cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model_summary.txt"
        path.write_text(text + "\n")
        run.log_artifact(path)


if __name__ == "__main__":
    stage.run(main)
