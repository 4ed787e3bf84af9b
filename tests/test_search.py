"""The search: halving schedules, grid and halving side by side, parallel and Dask trials, failures.

Trials train the real AlexNetSmall on tiny synthetic images (a bar whose row depends on the
class); MLflow writes to a SQLite store in tmp_path; the Dask test starts a real scheduler and two
workers on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import BIN, ROOT, env_for, free_port, wait_for_port
from fmnist.errors import ParamsError
from fmnist.params import HyperParams, parse_params
from fmnist.search.rounds import best_trial, run_search
from fmnist.search.schedule import halving_schedule, plan_rounds
from fmnist.search.trial import TABLE_KEYS, SearchData, TrackingTarget, TrialResult, TrialSetup
from fmnist.tracking import Tracker

CONFIGS = [HyperParams(lr=lr, batch_size=32, dropout=d) for d in (0.2, 0.5) for lr in (0.001, 0.003)]
# The model section of the default params, computed in fp32 (any machine gives the same numbers).
MODEL = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text())).model.model_copy(update={"precision": "fp32"})
EPOCHS = 2
# Torch threads of every reference run: what a trial gets when two run at once on this machine.
# oneDNN's kernels sum in an order that depends on the thread count, so runs compared bit for bit
# must use the same count.
THREADS = max(1, (os.cpu_count() or 1) // 2)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 67, 67) images of noise with a bar whose row says the class, and the labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 90, (n, 67, 67), dtype=np.uint8)
    for k in range(10):
        images[labels == k, 6 * k:6 * k + 5, 10:57] = 160 + rng.integers(0, 90, (int((labels == k).sum()), 1, 1))
    return images, labels


@pytest.fixture(scope="module")
def data() -> SearchData:
    return SearchData(*synthetic(120, 0), *synthetic(60, 1))


def setup_for(threads: int = THREADS, cv: int = 0, epochs: int = EPOCHS) -> TrialSetup:
    return TrialSetup(MODEL, seed=7, epochs=epochs, cv=cv, threads=threads)


def rounds_for(strategy: str, resource: str = "samples", n: int = 120) -> list:
    return plan_rounds(strategy, len(CONFIGS), EPOCHS, n, factor=2, resource=resource, min_samples=32)


def as_rows(found: list[TrialResult]) -> list[dict]:
    """Each result as a flat dict: its fields, the hyper-parameters spelled out."""
    return [{k: v for k, v in vars(r).items() if k != "hp"} | r.hp.as_dict() for r in found]


def results(found: list[TrialResult]) -> list[dict]:
    """Results without their timings: what must not depend on where or how trials ran."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in as_rows(found)]


@pytest.fixture(scope="module")
def reference(data) -> dict[str, list[TrialResult]]:
    """Grid and both halvings, in this process, one trial at a time."""
    return {name: (run_search(CONFIGS, rounds_for(*plan), setup_for(), data))
            for name, plan in {"grid": ("grid",), "halving-epochs": ("halving", "epochs"),
                               "halving-samples": ("halving", "samples")}.items()}


def tracked(tmp_path: Path, monkeypatch) -> Tracker:
    monkeypatch.chdir(tmp_path)
    return Tracker("search-test", uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def child_runs(tracker: Tracker, parent_id: str) -> list:
    return tracker.client.search_runs([tracker.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_halving_schedule_matches_scikit_learn():
    from sklearn.dummy import DummyClassifier
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    # (candidates, max resource, factor); 27 and 3: math.log(27, 3) is 3.0000000000000004.
    for n, max_resource, factor in ((12, 900, 3), (27, 2700, 3), (45, 1350, 3), (4, 80, 2), (9, 90, 3)):
        x = np.zeros((max_resource, 1))
        y = np.arange(max_resource) % 2
        sk = HalvingGridSearchCV(DummyClassifier(), {"random_state": list(range(n))}, factor=factor, cv=2,
                                 min_resources="exhaust", max_resources=max_resource).fit(x, y)
        ours = halving_schedule(n, max_resource, factor, min_resource=sk.min_resources_)
        assert [c for c, _ in ours] == sk.n_candidates_
        assert [r for _, r in ours] == sk.n_resources_
    # The resource caps the rounds; the last round gets all of it even when it is no power of factor.
    assert halving_schedule(45, 2, 3) == [(45, 2)]
    assert halving_schedule(4, 8000, 3, min_resource=256) == [(4, 2666), (2, 8000)]


def test_plan_rounds_give_the_resource_and_where_each_round_goes_on_from():
    assert plan_rounds("grid", 12, 9, 3000) == plan_rounds("grid", 12, 9, 3000, resource="epochs")
    epochs = plan_rounds("halving", 12, 9, 3000, factor=3, resource="epochs")
    assert [(r.candidates, r.start_epoch, r.epochs, r.samples) for r in epochs] == [
        (12, 0, 1, 3000), (4, 1, 3, 3000), (2, 3, 9, 3000)]
    samples = plan_rounds("halving", 18, 2, 2700, factor=3, resource="samples", min_samples=128)
    assert [(r.candidates, r.epochs, r.samples, r.start_epoch) for r in samples] == [
        (18, 2, 300, 0), (6, 2, 900, 0), (2, 2, 2700, 0)]
    grid_images = 18 * 2 * 2700
    assert sum(r.candidates * r.epochs * r.samples for r in samples) / grid_images <= 1 / 3


def test_grid_and_halving_give_tables_of_one_form_and_halving_ends_with_grid_trials(reference):
    grid, by_epochs, by_samples = (as_rows(reference[k]) for k in ("grid", "halving-epochs", "halving-samples"))
    assert all(r.ok for found in reference.values() for r in found)
    assert {frozenset(r.table_row()) for found in reference.values() for r in found} == {frozenset(TABLE_KEYS)}

    assert [(r["round"], r["epochs"], r["train_images"]) for r in grid] == [(0, 2, 120)] * 4
    assert [(r["round"], r["epochs"], r["images_processed"]) for r in by_epochs] == (
        [(0, 1, 120)] * 4 + [(1, 2, 120)] * 2)  # round 2 trains on from epoch 1: one more epoch
    assert [(r["round"], r["train_images"], r["images_processed"]) for r in by_samples] == (
        [(0, 60, 120)] * 4 + [(1, 120, 240)] * 2)
    assert sum(r["images_processed"] for r in by_epochs) == 720 < sum(r["images_processed"] for r in grid) == 960

    # A last-round trial is the grid's trial of that combination, computation for computation:
    # trained on from round 1's weights (epochs) or afresh on all images (samples).
    for name, halving in (("halving-epochs", by_epochs), ("halving-samples", by_samples)):
        last = [r for r in halving if r["round"] == 1]
        assert len(last) == 2
        for row in last:
            twin = grid[row["index"]]
            assert (row["valid_acc"], row["best_epoch"]) == (twin["valid_acc"], twin["best_epoch"])
        # The two that went on are the best two of round 1 (the grid's order breaks ties); the
        # table lists each round in the grid's order.
        first = sorted((r for r in halving if r["round"] == 0), key=lambda r: (-r["valid_acc"], r["index"]))
        assert sorted(r["index"] for r in first[:2]) == [r["index"] for r in last]
        assert best_trial(reference[name]).round == 1
    assert best_trial(reference["grid"]).valid_acc >= 0.3  # 10 classes: well above chance after two epochs


def test_parallel_trials_give_the_same_results_and_split_the_cores(reference, data, tmp_path, monkeypatch):
    tracker = tracked(tmp_path, monkeypatch)
    lines: list[str] = []
    with tracker.run("search") as parent:
        target = TrackingTarget(tracker.uri, "search-test", parent.id, {"fmnist.stage": "search-trial"})
        rows = run_search(CONFIGS, rounds_for("grid"), setup_for(threads=0), data, tracking=target, n_jobs=2,
                          progress=lines.append)
    assert results(rows) == results(reference["grid"])
    runs = child_runs(tracker, parent.id)
    assert len(runs) == 4
    assert {r.data.params["torch_threads"] for r in runs} == {str(THREADS)}  # cores // n_jobs
    assert len({r.data.tags["fmnist.trial_pid"] for r in runs} - {str(os.getpid())}) >= 1
    assert lines[0] == "search: 4 combinations in 1 round(s), 2 trial(s) at once"
    assert sum("starts:" in line for line in lines) == sum(" done:" in line for line in lines) == 4
    assert any("trial 4/4" in line for line in lines) and lines[-1].count("best so far: 0.") == 1


def test_failed_trials_are_recorded_and_the_search_goes_on(data, tmp_path, monkeypatch):
    import fmnist.search.trial

    real = fmnist.search.trial.build_net

    def build_net(spec, hp, *args, **kwargs):  # a trial that raises: dropout 0.3 "breaks" the model code
        if hp.dropout == 0.3:
            raise RuntimeError("no kernel for dropout 0.3\nsecond line")
        return real(spec, hp, *args, **kwargs)

    monkeypatch.setattr(fmnist.search.trial, "build_net", build_net)
    configs = [HyperParams(lr=lr, batch_size=32, dropout=d) for d in (0.3, 0.5) for lr in (0.001, 1.0)]
    tracker = tracked(tmp_path, monkeypatch)
    with tracker.run("search") as parent:
        target = TrackingTarget(tracker.uri, "search-test", parent.id, {"fmnist.stage": "search-trial"})
        rounds = plan_rounds("halving", 4, 2, 120, factor=2, resource="epochs")
        found = run_search(configs, rounds, setup_for(), data, tracking=target)
    rows = as_rows(found)
    status = [(r["round"], r["lr"], r["dropout"], r["status"]) for r in rows]
    assert status == [(0, 0.001, 0.3, "failed"), (0, 1.0, 0.3, "failed"), (0, 0.001, 0.5, "ok"),
                      (0, 1.0, 0.5, "failed"), (1, 0.001, 0.5, "ok")]  # only the one that worked goes on
    errors = {(r["lr"], r["dropout"]): r["error"] for r in rows if r["status"] == "failed"}
    assert errors[(0.001, 0.3)] == errors[(1.0, 0.3)] == "RuntimeError: no kernel for dropout 0.3"
    assert errors[(1.0, 0.5)].startswith("FloatingPointError: diverged: train_loss is ")
    assert np.isnan([r["valid_acc"] for r in rows if r["status"] == "failed"]).all()
    assert best_trial(found).hp.lr == 0.001 and best_trial(found).round == 1

    runs = child_runs(tracker, parent.id)
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 3 + ["FINISHED"] * 2
    for run in runs:
        assert run.data.tags["fmnist.trial_status"] == ("ok" if run.info.status == "FINISHED" else "failed")
        key = (float(run.data.params["lr"]), float(run.data.params["dropout"]))
        if run.info.status == "FAILED":
            assert run.data.tags["fmnist.trial_error"] == errors[key]
            assert "valid_acc_best" not in run.data.metrics
    diverged = next(r for r in runs if r.info.status == "FAILED" and r.data.params["dropout"] == "0.5")
    assert 0 < diverged.data.metrics["images_processed"] <= 120  # stopped in or after its first epoch


def test_k_fold_scores_on_the_trials_own_images(tmp_path, monkeypatch):
    only_train = SearchData(*synthetic(120, 0))  # no validation split: k-fold must not need one
    tracker = tracked(tmp_path, monkeypatch)
    with tracker.run("search") as parent:
        target = TrackingTarget(tracker.uri, "search-test", parent.id, {})
        rows = as_rows(run_search(CONFIGS[:2], plan_rounds("grid", 2, 1, 120), setup_for(cv=3, epochs=1),
                                  only_train, tracking=target))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["images_processed"] for r in rows] == [3 * 80, 3 * 80]  # 3 folds, each trained on 2/3
    assert all(0.0 <= r["valid_acc"] <= 1.0 and r["valid_acc_std"] >= 0.0 for r in rows)
    metrics = child_runs(tracker, parent.id)[0].data.metrics
    assert {"fold1_valid_acc", "fold2_valid_acc", "fold3_valid_acc", "valid_acc_std"} <= set(metrics)

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["search"]["cv"] = 1
    with pytest.raises(ParamsError, match=r"search.cv=1 is not allowed; allowed: 0 \(the validation split\)"):
        parse_params(raw)


@pytest.fixture
def dask_cluster(tmp_path):
    """A Dask scheduler and two one-thread workers on 127.0.0.1; yields (address, worker pids)."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = env_for(tmp_path) | {"PYTHONPATH": str(ROOT / "src")}
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen([str(BIN / "dask"), *args], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        return proc

    try:
        scheduler = start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        wait_for_port(port, scheduler, timeout_s=60)
        for i in (1, 2):
            start(f"worker{i}", "worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                  "--no-dashboard", "--name", f"worker{i}", "--local-directory", str(tmp_path / f"worker{i}"))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address, {p.pid for p in procs[1:]}
    finally:
        for proc in reversed(procs):  # workers first, then the scheduler
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.mark.slow  # a Dask scheduler and two workers
def test_trials_run_on_a_dask_cluster_each_its_own_nested_run(reference, data, dask_cluster, tmp_path,
                                                              monkeypatch):
    address, worker_pids = dask_cluster
    tracker = tracked(tmp_path, monkeypatch)
    lines: list[str] = []
    with tracker.run("search") as parent:
        target = TrackingTarget(tracker.uri, "search-test", parent.id, {"fmnist.stage": "search-trial"})
        # threads=0: each worker works its share out (its host's cores over the two workers there)
        rows = run_search(CONFIGS, rounds_for("halving", "epochs"), setup_for(threads=0), data,
                          tracking=target, scheduler=address, progress=lines.append)
    # The same results as in this process: seeds, states carried between rounds, thread counts.
    assert results(rows) == results(reference["halving-epochs"])
    assert lines[0] == f"search: 4 combinations in 2 round(s), 2 trial(s) at once on {address}"

    runs = child_runs(tracker, parent.id)
    assert len(runs) == len(rows) == 6
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["fmnist.trial_pid"] for r in runs} <= {str(pid) for pid in worker_pids}
    assert {r.data.params["torch_threads"] for r in runs} == {str(THREADS)}
    for run in runs:
        assert {"valid_acc", "train_loss", "valid_acc_best", "images_processed"} <= set(run.data.metrics)
    by_round = sorted((int(r.data.params["round"]), float(r.data.metrics["valid_acc_best"])) for r in runs)
    assert by_round == sorted((r.round, r.valid_acc) for r in rows)
    last = [r for r in runs if r.data.params["round"] == "1"]
    steps = [m.step for m in tracker.client.get_metric_history(last[0].info.run_id, "valid_acc")]
    assert steps == [2]  # round 2 logs the epoch it trained on from round 1


def stage_project(tmp_path: Path, **search) -> Path:
    """A folder the search stage can run in: resized arrays and a params file."""
    (tmp_path / "data" / "resized").mkdir(parents=True)
    for split, (n, seed) in {"train": (120, 0), "valid": (60, 1)}.items():
        images, labels = synthetic(n, seed)
        np.save(tmp_path / "data" / "resized" / f"{split}_images.npy", images)
        np.save(tmp_path / "data" / "resized" / f"{split}_labels.npy", labels)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split"].update(valid_size=60, train_size=120)
    params["train"]["batch_size"] = 32
    params["search"].update(grid={"lr": [0.001, 0.003], "batch_size": [32], "dropout": [0.2, 0.5]},
                            epochs=2, subset=0, factor=2, threads=1, **search)
    params["tracking"]["experiment"] = "stage-test"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def run_stage(repo: Path, out: str = "results/search", plot: str = "plots/search.png"):
    env = env_for(repo) | {"PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "stages" / "search.py"), "--data", "data/resized",
                           "--out", out, "--plot", plot], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)


def test_stage_writes_the_table_and_fails_in_one_line_when_every_trial_fails(tmp_path):
    repo = stage_project(tmp_path, strategy="halving", resource="samples")
    done = run_stage(repo)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = json.loads((repo / "results/search/trials.json").read_text())
    assert [(t["round"], t["train_images"], t["status"]) for t in trials] == [(0, 60, "ok")] * 4 + [(1, 120, "ok")] * 2
    assert all(set(t) == set(TABLE_KEYS) for t in trials)
    best = json.loads((repo / "results/search/best_params.json").read_text())
    assert set(best) == {"lr", "batch_size", "dropout", "valid_acc", "valid_acc_std", "epochs", "train_images",
                         "round"}
    assert best["round"] == 1 and best["train_images"] == 120
    # The best trial of trials.json's last round (first in grid order on a tie), not an echo of the grid:
    # two combinations reached that round, and the trials did not all score the same.
    last = [t for t in trials if t["round"] == 1]
    top = max(last, key=lambda t: t["valid_acc"])
    assert len({(t["lr"], t["dropout"]) for t in last}) == 2 and len({t["valid_acc"] for t in trials}) > 1
    assert {k: best[k] for k in ("lr", "batch_size", "dropout", "valid_acc", "epochs")} == \
        {k: top[k] for k in ("lr", "batch_size", "dropout", "valid_acc", "epochs")}
    assert (repo / "plots/search.png").read_bytes()[:4] == b"\x89PNG"
    assert "[round 1/2] trial 1/4 starts: " in done.stdout and "[round 2/2] trial 2/2 done: " in done.stdout
    assert "best so far: 0." in done.stdout

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["search"].update(strategy="grid", grid={"lr": [1.0], "batch_size": [32], "dropout": [0.2, 0.5]})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run_stage(repo, out="results/failed", plot="plots/failed.png")
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: all 2 search trials failed: FloatingPointError: diverged: train_loss is ")
    assert "Traceback" not in failed.stderr
    assert not (repo / "results/failed").exists() and not (repo / "plots/failed.png").exists()
