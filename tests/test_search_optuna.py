"""search.strategy optuna for real: `dvc repro` on the tiny profile with trials pruned, a forced
rerun bit for bit, a SIGKILLed search that goes on with its study, and two stages sharing one
study in the team stack's PostgreSQL.

The stage runs as users run it (``dvc repro``, or ``python stages/search.py``); trials train the
real AlexNetSmall; the study lives in the default journal file or in a real PostgreSQL started by
``make team-up``. Bad ``search.optuna`` values are in tests/test_bad_params.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import ROOT, env_for, free_ports, make_repo, ran_stages, sh
from test_search import synthetic

pytestmark = pytest.mark.slow  # every test trains several trials, through dvc or the stage script

EPOCHS = 3
TRAIN, VALID = 120, 60
STAGE_TIMEOUT = 1200


def stage_project(folder: Path, **optuna) -> Path:
    """A folder the search stage runs in: synthetic resized arrays and a params file for optuna."""
    (folder / "data" / "resized").mkdir(parents=True)
    for split, (n, seed) in {"train": (TRAIN, 0), "valid": (VALID, 1)}.items():
        images, labels = synthetic(n, seed)
        np.save(folder / "data" / "resized" / f"{split}_images.npy", images)
        np.save(folder / "data" / "resized" / f"{split}_labels.npy", labels)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split"].update(valid_size=VALID, train_size=TRAIN)
    params["train"]["batch_size"] = 32
    params["model"]["precision"] = "fp32"
    params["search"].update(strategy="optuna", epochs=EPOCHS, subset=0, factor=3, threads=1,
                            grid={"lr": [0.001], "batch_size": [32], "dropout": [0.2]},
                            optuna={"batch_size": [16, 32], "startup_trials": 3} | optuna)
    params["tracking"]["experiment"] = "optuna-test"
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def stage_cmd() -> list[str]:
    return [sys.executable, str(ROOT / "stages" / "search.py"), "--data", "data/resized", "--out", "results/search",
            "--plot", "plots/search.png"]


def stage_env(folder: Path, **extra: str) -> dict[str, str]:
    env = env_for(folder) | {"PYTHONPATH": str(ROOT / "src")} | extra
    if "FMNIST_OPTUNA_STORAGE" not in extra:
        env.pop("FMNIST_OPTUNA_STORAGE", None)
    return env


def run_stage(folder: Path, **extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(stage_cmd(), cwd=folder, env=stage_env(folder, **extra), capture_output=True, text=True,
                            timeout=STAGE_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def trials(folder: Path) -> list[dict]:
    return json.loads((folder / "results" / "search" / "trials.json").read_text())


def done_lines(output: str) -> dict[int, str]:
    """``{trial number: hyper-parameters}`` of the trials a run reported done."""
    return {int(m.group(1)): m.group(2) for m in
            re.finditer(r"\[optuna\] trial (\d+) done: (lr=\S+ batch_size=\S+ dropout=\S+)", output)}


def label(row: dict) -> str:
    return f"lr={row['lr']:g} batch_size={row['batch_size']} dropout={row['dropout']:g}"


# --- dvc repro on the tiny profile ---------------------------------------------------------------

def test_dvc_repro_prunes_records_and_reruns_bit_for_bit(tmp_path, data_source):
    repo = make_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    subset = 150  # of the tiny profile's 1000 training images: a loaded 2-core machine trains it in minutes
    # Successive halving prunes from the first epoch on: with 3 epochs and factor 3, a trial goes
    # on past epoch 1 only when it is in the best third of those that reached it.
    params["search"].update(strategy="optuna", epochs=EPOCHS, factor=3, subset=subset,
                            optuna={"batch_size": [32], "pruner": "halving", "startup_trials": 3,
                                    "budget": 6 * EPOCHS * subset})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "commit", "-qam", "search with optuna")

    first = sh(repo, "dvc", "repro", "search", timeout=STAGE_TIMEOUT * 2)
    assert ran_stages(first.stdout) == {"download", "split", "resize", "search"}
    assert "new Optuna study fmnist-search-" in first.stdout
    rows = trials(repo)
    assert [r["trial"] for r in rows] == list(range(len(rows)))
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert pruned, f"no trial was pruned: {[(r['trial'], r['status'], r['valid_acc']) for r in rows]}"
    for r in pruned:  # stopped after an epoch before the last, and charged only what it trained
        assert 1 <= r["pruned_epoch"] < EPOCHS and r["images_processed"] == r["pruned_epoch"] * subset
    assert all(r["status"] == "ok" and r["pruned_epoch"] == 0 and r["images_processed"] == EPOCHS * subset
               for r in rows if r not in pruned)
    spent = sum(r["images_processed"] for r in rows)
    assert spent <= 6 * EPOCHS * subset < spent + EPOCHS * subset  # it stopped when no whole trial fitted
    best = json.loads((repo / "results/search/best_params.json").read_text())
    top = max((r for r in rows if r["status"] == "ok"), key=lambda r: (r["valid_acc"], -r["trial"]))
    assert (best["trial"], best["lr"], best["valid_acc"]) == (top["trial"], top["lr"], top["valid_acc"])
    assert len({r["lr"] for r in rows}) == len(rows)  # drawn from the range, not a grid

    # MLflow: one nested run per trial, pruned ones tagged with their epoch; Optuna's views on the parent.
    con = sqlite3.connect(repo / "mlflow.db")
    tags = {}
    for run_id, key, value in con.execute("select run_uuid, key, value from tags where key like 'fmnist.%' "
                                          "or key = 'mlflow.parentRunId'"):
        tags.setdefault(run_id, {})[key] = value
    children = {k: t for k, t in tags.items() if t.get("fmnist.stage") == "search-trial"}
    assert len(children) == len(rows)
    assert sorted(int(t["fmnist.pruned_epoch"]) for t in children.values() if "fmnist.pruned_epoch" in t) == \
        sorted(r["pruned_epoch"] for r in pruned)
    assert {t["fmnist.trial_status"] for t in children.values()} == {r["status"] for r in rows}
    pruned_run = next(k for k, t in children.items() if t["fmnist.trial_status"] == "pruned")
    steps = [s for (s,) in con.execute("select step from metrics where run_uuid = ? and key = 'valid_acc' "
                                       "order by step", (pruned_run,))]
    assert steps == list(range(1, int(children[pruned_run]["fmnist.pruned_epoch"]) + 1))
    parent = next(iter({t["mlflow.parentRunId"] for t in children.values()}))
    uri = con.execute("select artifact_uri from runs where run_uuid = ?", (parent,)).fetchone()[0]
    con.close()
    artifacts = Path(uri.removeprefix("file://"))
    assert sorted(p.name for p in (artifacts / "optuna").iterdir()) == \
        ["optimization_history.png", "parallel_coordinate.png", "param_importances.png"]
    plot = (repo / "plots/search.png").read_bytes()
    assert plot[:4] == b"\x89PNG"

    # A forced rerun: the study had spent its budget, so it starts afresh and gives the same bytes.
    outs = {p: (repo / p).read_bytes() for p in ("results/search/trials.json", "results/search/best_params.json",
                                                  "plots/search.png")}
    again = sh(repo, "dvc", "repro", "-f", "-s", "search", timeout=STAGE_TIMEOUT * 2)
    assert ran_stages(again.stdout) == {"search"}
    assert "had spent its budget" in again.stdout and "starting it afresh" in again.stdout
    for path, before in outs.items():
        assert (repo / path).read_bytes() == before, f"{path} differs on a forced rerun"


# --- SIGKILL mid-search, then the study goes on ----------------------------------------------------

def test_a_killed_search_goes_on_with_its_study(tmp_path):
    folder = stage_project(tmp_path / "killed", budget=10 * EPOCHS * TRAIN)  # hyperband, the default
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(stage_cmd(), cwd=folder, env=stage_env(folder), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STAGE_TIMEOUT
    while not re.search(r"trial 3 starts", log.read_text()):  # three done, the fourth under way
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the search never reached its fourth trial"
        time.sleep(0.2)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    before = done_lines(log.read_text())
    assert sorted(before) == [0, 1, 2], log.read_text()[-3000:]
    assert not (folder / "results").exists()  # nothing written by the killed run

    again = run_stage(folder)
    assert "going on with Optuna study fmnist-search-" in again.stdout
    assert "4 trials finished, 0 running" in again.stdout  # the killed trial: failed, not running
    assert "trial 3 had been interrupted" in again.stdout
    assert "trial 0 starts" not in again.stdout and "trial 3 starts" not in again.stdout
    rows = trials(folder)
    by_number = {r["trial"]: r for r in rows}
    assert {n: label(by_number[n]) for n in before} == before  # the first run's trials, as they were
    assert by_number[3]["status"] == "failed" and by_number[3]["error"].startswith("interrupted")
    assert len(rows) > 4 and sorted(by_number) == list(range(len(rows)))  # the study grew
    ran = [r for r in rows if r["trial"] != 3]
    assert len({label(r) for r in ran}) == len(ran)  # no trial repeated
    assert sum(r["images_processed"] for r in rows) <= 10 * EPOCHS * TRAIN


# --- two stages on one study in the team stack's PostgreSQL -------------------------------------



@pytest.fixture
def team_postgres():
    """``make team-up`` on ports 17000-17999 in a home of its own; yields the client environment
    (``python -m fmnist.team env``), with ``FMNIST_OPTUNA_STORAGE``; ``make team-down`` after."""
    from fmnist.team import postgres
    from fmnist.team.stack import TeamError

    try:
        postgres.find_pg_bin("initdb")
    except TeamError as err:
        pytest.skip(str(err))
    home = Path(tempfile.mkdtemp(prefix="fmnist-optuna-team-"))
    os.chmod(home, 0o755)  # PostgreSQL runs as the postgres user and must reach its folder
    taken: set[int] = set()

    def port(count: int = 1) -> str:
        while True:
            p = free_ports(count, 17000, 18000)
            if not taken & set(range(p, p + count)):
                taken.update(range(p, p + count))
                return str(p)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAM_", "MLFLOW_", "AWS_", "FMNIST_"))}
    env |= {"TEAM_HOME": str(home / "team"), "TEAM_MLFLOW_PORT": port(), "TEAM_S3_PORT": port(),
            "TEAM_PG_PORT": port(), "TEAM_WEED_PORTS": port(10), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    try:
        up = subprocess.run(["make", "-C", str(ROOT), "team-up"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        out = subprocess.run([sys.executable, "-m", "fmnist.team", "env"], env=env, capture_output=True, text=True,
                             timeout=60, check=True, cwd=ROOT).stdout
        client = dict(re.findall(r"^export (\w+)=(\S+)$", out, re.M))
        client = {k: v.strip("'") for k, v in client.items()}
        assert client.get("FMNIST_OPTUNA_STORAGE", "").startswith("postgresql+psycopg://"), sorted(client)
        yield client
    finally:
        subprocess.run(["make", "-C", str(ROOT), "team-down"], env=env, capture_output=True, text=True, timeout=300)
        shutil.rmtree(home, ignore_errors=True)


def test_two_stages_share_one_postgres_study(tmp_path, team_postgres):
    import optuna

    from fmnist.search.study import SKIPPED_ATTR, WORKER_ATTR

    url = team_postgres["FMNIST_OPTUNA_STORAGE"]
    budget = 8 * EPOCHS * TRAIN
    folders = [stage_project(tmp_path / name, budget=budget) for name in ("alice", "bob")]
    logs = [tmp_path / f"{f.name}.log" for f in folders]
    procs = []
    for folder, log in zip(folders, logs):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(stage_cmd(), cwd=folder, env=stage_env(folder, FMNIST_OPTUNA_STORAGE=url),
                                          stdout=out, stderr=subprocess.STDOUT))
    for proc, log in zip(procs, logs):
        assert proc.wait(timeout=STAGE_TIMEOUT) == 0, log.read_text()[-3000:]
    outputs = [log.read_text() for log in logs]
    assert all(url.split("@")[0].split(":")[-1] not in out for out in outputs)  # no password printed

    names = {re.search(r"Optuna study (fmnist-search-\w+)", out).group(1) for out in outputs}
    assert len(names) == 1  # the same params and data: the same study
    study = optuna.load_study(study_name=names.pop(), storage=url)
    real = [t for t in study.trials if not t.user_attrs.get(SKIPPED_ATTR)]
    assert all(t.state.is_finished() for t in study.trials)
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    params = [tuple(sorted(t.params.items())) for t in real]
    assert len(set(params)) == len(params), "a trial ran twice"
    workers = {t.user_attrs[WORKER_ATTR].split(":")[1] for t in real}
    assert workers == {str(p.pid) for p in procs}, "both stages ran trials of the study"
    # Each stage ran what it reported, and no trial was run by both.
    ran = [set(done_lines(out)) for out in outputs]
    assert not ran[0] & ran[1] and ran[0] | ran[1] == {t.number for t in real}
    assert sum(int(t.user_attrs.get("images_processed", 0)) for t in real) <= budget
    # The stage that finished last wrote every trial of the study.
    last = max(folders, key=lambda f: (f / "results/search/trials.json").stat().st_mtime)
    assert [r["trial"] for r in trials(last)] == [t.number for t in real]
