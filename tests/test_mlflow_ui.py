"""The MLflow UI in a real browser: ``mlflow server`` on the tiny pipeline's store, headless
Chromium over the DevTools protocol, and the README's screenshot script."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Iterator

import pytest
from PIL import Image

from helpers import ROOT, chromium, ui

pytestmark = pytest.mark.slow  # a server start and a browser: about a minute on 2 cores

EXPERIMENT = "fashion-mnist-alexnet"


@pytest.fixture(scope="module")
def server(pipeline, tmp_path_factory) -> Iterator[str]:
    chromium()  # or a skip that says how to install it
    repo = pipeline["repo"]
    log = tmp_path_factory.mktemp("mlflow-ui") / "server.log"
    with ui.mlflow_server(repo / "mlflow.db", repo / "mlartifacts", log) as url:  # stopped on exit
        yield url


@pytest.fixture(scope="module")
def runs(server) -> dict:
    """The newest search run, its trials, and the newest train and evaluate runs, by the API."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id

    def newest(stage: str):
        return client.search_runs([experiment], f"tags.`fmnist.stage` = '{stage}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)[0]

    search = newest("search")
    trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{search.info.run_id}'")
    assert len(trials) == 2
    return {"experiment": experiment, "search": search, "trials": trials, "train": newest("train"),
            "evaluate": newest("evaluate")}


def shown(value: float) -> str:
    """A metric value as the run page shows it (JavaScript's number to string)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def run_link(run_id: str) -> str:
    return f"a[href$='/runs/{run_id}']"


def test_experiment_page_lists_search_with_its_trials_train_and_evaluate(server, runs):
    async def check() -> dict[str, str]:
        async with ui.Browser() as browser:
            await browser.open(ui.experiment_url(server, runs["experiment"]))
            top = [runs[stage] for stage in ("search", "train", "evaluate")]
            await browser.wait_for(" && ".join(f"!!document.querySelector(\"{run_link(r.info.run_id)}\")"
                                               for r in top), "the search, train and evaluate runs")
            await browser.js(f"document.querySelector(\"{run_link(runs['search'].info.run_id)}\")"
                             f".closest('.ag-row').querySelector('{ui.EXPAND}').click()")  # show its trials
            await browser.wait_for_text([t.info.run_name for t in runs["trials"]])
            return await browser.js("Object.fromEntries([...document.querySelectorAll('a[href*=\"/runs/\"]')]"
                                    ".map(a => [a.getAttribute('href').split('/runs/')[1], a.innerText.trim()]))")

    names = asyncio.run(check())
    for run in (runs["search"], *runs["trials"], runs["train"], runs["evaluate"]):
        assert names.get(run.info.run_id) == run.info.run_name


def test_run_pages_show_the_metrics(server, runs):
    shows = {runs["search"].info.run_id: ["best_valid_acc"],
             runs["train"].info.run_id: ["best_valid_acc", "valid_acc", "test_accuracy"],
             runs["evaluate"].info.run_id: ["test_accuracy", "test_macro_f1"]}
    for trial in runs["trials"]:
        shows[trial.info.run_id] = ["valid_acc", "train_loss"]
    metrics = {r.info.run_id: r.data.metrics for r in (runs["search"], *runs["trials"], runs["train"],
                                                        runs["evaluate"])}

    async def check() -> None:
        async with ui.Browser() as browser:
            for run_id, keys in shows.items():
                await browser.open(f"{server}/#/experiments/{runs['experiment']}/runs/{run_id}")
                # The metrics table: one row per metric, its name then its latest value.
                await browser.wait_for_text([f"{key} {shown(metrics[run_id][key])}" for key in keys])

    asyncio.run(check())
    assert 0.3 < metrics[runs["evaluate"].info.run_id]["test_accuracy"] <= 1  # real values, not placeholders


def test_screenshot_script_draws_the_search_trials(server, runs, tmp_path):
    out = tmp_path / "trials.png"
    result = subprocess.run([sys.executable, str(ROOT / "scripts/screenshot_mlflow.py"), "--server", server,
                             "--out", str(out), "--size", "1200x700"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for trial in runs["trials"]:
        assert trial.info.run_name in result.stdout
    with Image.open(out) as shot:
        assert shot.format == "PNG" and shot.size == (1200, 700)
        assert len(shot.convert("RGB").getcolors(maxcolors=1 << 20)) > 200  # drawn charts, not a blank page


def test_screenshot_script_shows_the_champions_test_metrics(server, runs, tmp_path):
    """``--page champion`` opens the logged model behind ``@champion``; it waits for the test
    metrics evaluate linked to it, so a page without them fails the script."""
    out = tmp_path / "champion.png"
    result = subprocess.run([sys.executable, str(ROOT / "scripts/screenshot_mlflow.py"), "--server", server,
                             "--page", "champion", "--out", str(out), "--size", "1200x700"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "@champion model's page (m-" in result.stdout
    with Image.open(out) as shot:
        assert shot.format == "PNG" and shot.size == (1200, 700)
