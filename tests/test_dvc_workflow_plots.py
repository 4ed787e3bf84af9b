"""DVC plots in a real browser: the offline page (vega from npm, inlined), `plots show` and
`plots diff` of two experiments, drawn by headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import INSTALL_HINT, chromium, sh
from helpers_workflow import QUEUED


pytestmark = pytest.mark.slow  # dvc repro, experiments, servers or a browser


def run_chromium(page: Path, tmp: Path, *args: str) -> str:
    """Headless Chromium on a local file, offline; JS gets a 20 s virtual time budget."""
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--hide-scrollbars", *args,
           page.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def rendered(page: Path, tmp: Path) -> dict[str, int]:
    """What the browser built from the page: vega draws each chart into a <canvas>."""
    dom = re.sub(r"<script\b.*?</script>", "", run_chromium(page, tmp, "--dump-dom"), flags=re.S)
    return {tag: len(re.findall(rf"<{tag}\b", dom)) for tag in ("canvas", "img")}


def vega_specs(page: Path) -> dict[str, dict]:
    """The vega-lite spec of each chart on a DVC plots page, by the chart's div id."""
    found = re.finditer(r'<div id = "(\w+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*vegaEmbed',
                        page.read_text(), re.S)
    return {m.group(1): json.loads(m.group(2)) for m in found}


SEARCH_CHARTS = {"Search_trials_by_lr": "lr", "Search_trials_by_batch_size": "batch_size",
                 "Search_trials_by_dropout": "dropout"}


def check_charts(page: Path, revs: set[str], epochs: tuple[int, ...]) -> None:
    """The training curves (x = epoch), the search trials (x = a hyper-parameter, one point per
    trial) and the confusion matrix, for each of ``revs``."""
    specs = vega_specs(page)
    assert set(specs) == {"Training_curves", "Training_loss", "results_evaluate_predictions_csv", *SEARCH_CHARTS}
    for name, param in SEARCH_CHARTS.items():
        spec = specs[name]
        assert spec["mark"]["type"] == "point" and spec["encoding"]["x"]["field"] == param
        assert spec["encoding"]["y"]["field"] == "valid_acc"
        rows = spec["data"]["values"]
        assert {r["rev"] for r in rows} == revs and all(param in r and "valid_acc" in r for r in rows)
    for name, fields in (("Training_curves", {"train_acc", "valid_acc"}),
                         ("Training_loss", {"train_loss", "valid_loss"})):
        spec = specs[name]
        assert spec["mark"]["type"] == "line" and spec["encoding"]["x"]["field"] == "epoch"
        rows = spec["data"]["values"]
        assert {(r["rev"], r["epoch"], r["field"]) for r in rows} == {
            (rev, epoch, field) for rev in revs for epoch in epochs for field in fields}
    confusion = specs["results_evaluate_predictions_csv"]
    assert confusion["spec"]["encoding"]["x"]["field"] == "predicted"
    assert confusion["spec"]["encoding"]["y"]["field"] == "actual"
    rows = confusion["data"]["values"]
    assert {rev: sum(r["rev"] == rev for r in rows) for rev in revs} == {rev: 10_000 for rev in revs}


def screenshot(page: Path, png: Path, tmp: Path, size: str = "1400,2400") -> float:
    """Screenshot ``page`` to ``png``; return the share of pixels that are not (near) white."""
    from PIL import Image

    run_chromium(page, tmp, f"--screenshot={png}", f"--window-size={size}")
    gray = Image.open(png).convert("L")
    return sum(gray.histogram()[:230]) / (gray.width * gray.height)


@pytest.fixture(scope="session")
def offline_page(project) -> Path:
    """``scripts/install-plots-js.py`` run in the repo: vega from npm, inlined in the DVC template."""
    if shutil.which("npm") is None:
        pytest.skip(f"npm missing: the offline plots page takes vega from the npm registry; {INSTALL_HINT}")
    repo = project["repo"]
    sh(repo, sys.executable, "scripts/install-plots-js.py", timeout=300)
    assert "html_template = ../plot-templates/offline.html" in (repo / ".dvc/config.local").read_text()
    return repo / "plot-templates/offline.html"


def test_offline_page_inlines_pinned_vega_and_stays_out_of_git(project, offline_page):
    html = offline_page.read_text()
    for lib in ("vega@5.33.1", "vega-lite@5.23.0", "vega-embed@6.29.0"):
        assert f"/* {lib} from the npm registry */" in html
    assert "{plot_divs}" in html and "{scripts}" not in html and "cdn.jsdelivr" not in html
    status = sh(project["repo"], "git", "status", "--porcelain", "--ignored").stdout.splitlines()
    assert "!! plot-templates/offline.html" in status  # the downloaded code never goes into git
    assert not [line for line in status if line.startswith("?? ")], status


def test_plots_show_renders_every_plot_offline(queued, offline_page, tmp_path):
    repo = queued["repo"]
    sh(repo, "dvc", "plots", "show", "-o", str(tmp_path / "show"))
    page = tmp_path / "show" / "index.html"
    html = page.read_text()
    assert "cdn.jsdelivr" not in html and "vega-embed@6.29.0" in html
    check_charts(page, {"workspace"}, epochs=(1,))  # main trains one epoch
    for png in ("search.png", "evaluate_confusion_matrix.png", "evaluate_curves.png", "evaluate_mistakes.png"):
        assert f'src="static/workspace_plots_{png}"' in html
        assert (tmp_path / "show" / "static" / f"workspace_plots_{png}").read_bytes()[:4] == b"\x89PNG"
    # six vega charts drawn (curves, loss, three search scatters, confusion), the four PNGs shown
    assert rendered(page, tmp_path) == {"canvas": 6, "img": 4}
    assert screenshot(page, tmp_path / "plots-show.png", tmp_path, "1400,4200") > 0.05


def test_vega_charts_are_drawn_not_just_embedded(queued, offline_page, tmp_path):
    """Only the vega charts of two experiments on a page: drawn with the offline template, blank
    without scripts (what DVC's own page shows when its CDN is out of reach)."""
    repo = queued["repo"]
    charts = ["--targets", "Training curves", "Training loss", "results/evaluate/predictions.csv"]
    sh(repo, "dvc", "plots", "diff", *QUEUED, *charts, "-o", str(tmp_path / "vega"))
    drawn = screenshot(tmp_path / "vega" / "index.html", tmp_path / "vega.png", tmp_path, "1200,1000")
    bare = tmp_path / "bare.html"
    bare.write_text("<!DOCTYPE html><html><body>{plot_divs}</body></html>")
    sh(repo, "dvc", "plots", "diff", *QUEUED, *charts, "-o", str(tmp_path / "bare"), "--html-template", str(bare))
    blank = screenshot(tmp_path / "bare" / "index.html", tmp_path / "bare.png", tmp_path, "1200,1000")
    assert rendered(tmp_path / "bare" / "index.html", tmp_path)["canvas"] == 0
    assert blank < 0.001 and drawn > 0.03, (blank, drawn)


def test_plots_diff_puts_two_experiments_on_one_page(queued, offline_page, tmp_path):
    repo = queued["repo"]
    sh(repo, "dvc", "plots", "diff", *QUEUED, "-o", str(tmp_path / "diff"))
    page = tmp_path / "diff" / "index.html"
    html = page.read_text()
    check_charts(page, set(QUEUED), epochs=(1, 2))  # both experiments in each chart, by rev
    for name in QUEUED:
        assert f'src="static/{name}_plots_evaluate_confusion_matrix.png"' in html
    assert rendered(page, tmp_path) == {"canvas": 6, "img": 8}
    assert screenshot(page, tmp_path / "plots-diff.png", tmp_path, "1400,5000") > 0.05
