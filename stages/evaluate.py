"""Stage evaluate: test accuracy, per-class scores, confusion matrix, curves, worst mistakes.

    python stages/evaluate.py --data data/resized --model models/model.pt \
        --history results/train/history.json --metrics metrics/evaluate.json \
        --per-class metrics/per_class.json --predictions results/evaluate/predictions.csv \
        --plots plots/evaluate --report results/report.md

Reads params ``evaluate.*``. Writes the headline metrics JSON (for ``dvc metrics`` and ``dvc exp
show``) and the per-class scores in their own JSON, the predictions as ``actual,predicted`` class
names (for DVC's ``confusion`` template), PNG plots, and a Markdown report that puts the metrics
and plots of the run on one page. MLflow: its own run (with system
metrics while it predicts), the headline test metrics linked to the train run's logged model and
the test dataset, and the test metrics also on the train run of the model it measured.
"""

import time
from pathlib import Path

import numpy as np

from fmnist import plots, stage
from fmnist.data import load_split
from fmnist.files import read_json
from fmnist.metrics import classification_scores, confusion, most_confident_mistakes, write_predictions, write_scores
from fmnist.params import flatten, load_params, to_dict
from fmnist.compute import Compute, seed_everything, set_threads
from fmnist.conv import plan_of
from fmnist.predict import load_model, predict_proba
from fmnist.report import write_report
from fmnist.tracking import Run, Tracker, lineage_tags


def main() -> None:
    args = stage.parser(__doc__, data="data/resized", model="models/model.pt",
                        history="results/train/history.json", metrics="metrics/evaluate.json",
                        per_class="metrics/per_class.json", predictions="results/evaluate/predictions.csv",
                        plots="plots/evaluate", report="results/report.md").parse_args()
    params = load_params(args.params)
    eval_p = params.evaluate
    seed_everything(0)
    set_threads(0)
    module, spec = load_model(args.model)
    images, labels = load_split(args.data, "test", size=spec.input_size)
    history = read_json(args.history)

    tracker = Tracker(params.tracking.experiment)
    tags = lineage_tags("evaluate", {"model": args.model, "test_images": Path(args.data) / "test_images.npy"})
    train_run = tracker.find_run("fmnist.output.model", tags["fmnist.input.model"])
    if train_run:
        tags |= {"fmnist.train_run_id": train_run, "fmnist.pipeline": train_run}
    model_id = tracker.logged_model(train_run) if train_run else None

    # the run spans the predicting, so that its system metrics show the machine at work
    with tracker.run("evaluate", tags=tags, datasets={"test_images": Path(args.data) / "test_images.npy"},
                     system_metrics=True) as run:
        compute = Compute.resolve(spec.precision)  # fp32 or bf16, as on this machine
        start = time.perf_counter()
        prob = predict_proba(module, images, spec.input_size, compute, eval_p.batch_size)
        seconds = time.perf_counter() - start
        plan = plan_of(module)
        print(plan.describe())
        run.log_params(plan.as_params())
        about = (f"{spec.model_name} at {spec.input_size} px, {spec.head} head, dropout "
                 f"{spec.dropout:g}; predicted in {compute.precision} on {compute.device}")
        metrics = _write_outputs(args, about, images, labels, prob, history, eval_p.n_misclassified)
        run.log_params(flatten({"evaluate": to_dict(eval_p)}) | {"model": spec.model_name,
                                                                  "precision": compute.precision,
                                                                  "device": compute.device})
        _log_scores(run, metrics, model_id, images_per_second=len(images) / seconds)
        for path in (args.metrics, args.per_class, args.predictions, args.report, args.plots):
            run.log_artifact(path)
    if train_run:  # the test metrics sit with the model they measure
        _onto_train_run(tracker, train_run, metrics, args.plots)
    mistakes = int((prob.argmax(axis=1) != labels).sum())
    print(f"test accuracy {metrics['test_accuracy']:.4f} ({mistakes} mistakes of {len(labels)}); "
          f"predicted {len(images) / seconds:.0f} images/s")


def _write_outputs(args, about: str, images: np.ndarray, labels: np.ndarray, prob: np.ndarray,
                   history: list[dict], n_mistakes: int) -> dict:
    """The score files, the predictions, the figures and the report; returns the scores."""
    metrics = classification_scores(labels, prob)
    write_scores(metrics, args.metrics, args.per_class)
    write_predictions(args.predictions, labels, prob.argmax(axis=1))
    figures = _figures(Path(args.plots), images, labels, prob, history, n_mistakes)
    write_report(args.report, metrics, history, figures, about)
    return metrics


def _log_scores(run: Run, metrics: dict, model_id: str | None, images_per_second: float) -> None:
    """Every score on the evaluate run; the headline ones also on the logged model's page
    (``model_id``), with the data they come from."""
    flat = flatten(metrics)
    headline = {k: v for k, v in metrics.items() if isinstance(v, float)}
    run.log_metrics(headline, model_id=model_id, dataset="test_images")
    run.log_metrics({k: v for k, v in flat.items() if k not in headline}
                    | {"eval_images_per_second": images_per_second})


def _onto_train_run(tracker: Tracker, train_run: str, metrics: dict, plots_dir: str) -> None:
    """The test scores and figures on the train run of the model they measure; the champion alias
    moves to its model when it scores best."""
    on_train = Run(tracker, train_run)
    on_train.log_metrics(flatten(metrics))
    on_train.log_artifact(plots_dir, "evaluate")
    promoted = tracker.promote(train_run, "test_accuracy", metrics["test_accuracy"])
    if promoted:
        print(promoted)


def _figures(out: Path, images: np.ndarray, labels: np.ndarray, prob: np.ndarray, history: list[dict],
             n_mistakes: int) -> list[Path]:
    """The training curves, the confusion matrix and the most confident mistakes, as PNGs in ``out``."""
    pred = prob.argmax(axis=1)
    plots.confusion_matrix(confusion(labels, pred), out / "confusion_matrix.png")
    plots.training_curves(history, out / "curves.png")
    worst = most_confident_mistakes(labels, prob, n_mistakes)
    plots.mistakes_grid(images[worst], labels[worst], pred[worst], prob[worst, pred[worst]], out / "mistakes.png")
    return [out / "curves.png", out / "confusion_matrix.png", out / "mistakes.png"]


if __name__ == "__main__":
    stage.run(main)
