"""The DVC experiment workflow and team sharing, for real: experiments, the queue, plots in a
browser, remotes (a folder and S3 on a local server), experiments shared through git, and CI.

One temp git repo on the tiny profile serves the whole module; fixtures build on each other
(baseline -> one-epoch experiment committed -> two queued experiments), so each test also runs
alone with ``-k``.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, env_for, make_repo, ran_stages, sh

pytestmark = pytest.mark.slow

QUEUED = {"q-seed1": 1, "q-seed2": 2}  # name -> train.seed; two epochs each, so curves are lines
EPOCH_METRICS = ("train_loss", "valid_loss", "train_acc", "valid_acc", "lr")


# --- helpers ---------------------------------------------------------------------------------

def exp_show(repo: Path) -> dict[str, dict]:
    """``dvc exp show --json -A`` as ``name -> {"params": ..., "metrics": ..., "rev": ...}``,
    for experiments and for baselines named by a branch."""
    rows = {}

    def add(entry):
        data = entry.get("data") or {}
        if entry.get("name") and "params" in data:
            rows[entry["name"]] = {
                "rev": entry["rev"],
                "params": data["params"].get("params.yaml", {}).get("data", {}),
                "metrics": {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()},
            }

    for baseline in json.loads(sh(repo, "dvc", "exp", "show", "--json", "-A").stdout):
        add(baseline)
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                add(rev)
    return rows


def metrics_files(repo: Path) -> dict[str, dict]:
    return {p: json.loads((repo / p).read_text()) for p in ("metrics/train.json", "metrics/evaluate.json")}


def commit_all(repo: Path, message: str) -> str:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", message)
    return sh(repo, "git", "rev-parse", "HEAD").stdout.strip()


def queue_status(repo: Path) -> dict[str, str]:
    """``dvc queue status`` as ``name -> Queued | Running | Success | Failed | ...``."""
    out = sh(repo, "dvc", "queue", "status").stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"^\w+\s+(\S+)\s+.*?\s(\w+)\s*$", out, re.M)
            if m.group(1) in QUEUED}


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium: bash scripts/install-system-deps.sh installs it")


def chromium(page: Path, tmp: Path, *args: str) -> str:
    """Headless Chromium on a local file, offline; JS gets a 20 s virtual time budget."""
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--hide-scrollbars", *args,
           page.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def rendered(page: Path, tmp: Path) -> dict[str, int]:
    """What the browser built from the page: vega draws each chart into a <canvas>."""
    dom = re.sub(r"<script\b.*?</script>", "", chromium(page, tmp, "--dump-dom"), flags=re.S)
    return {tag: len(re.findall(rf"<{tag}\b", dom)) for tag in ("canvas", "img")}


def vega_specs(page: Path) -> dict[str, dict]:
    """The vega-lite spec of each chart on a DVC plots page, by the chart's div id."""
    found = re.finditer(r'<div id = "(\w+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*vegaEmbed',
                        page.read_text(), re.S)
    return {m.group(1): json.loads(m.group(2)) for m in found}


def check_charts(page: Path, revs: set[str], epochs: tuple[int, ...]) -> None:
    """The training curves (x = epoch) and the confusion matrix, for each of ``revs``."""
    specs = vega_specs(page)
    assert set(specs) == {"Training_curves", "Training_loss", "results_evaluate_predictions_csv"}
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

    chromium(page, tmp, f"--screenshot={png}", f"--window-size={size}")
    gray = Image.open(png).convert("L")
    return sum(gray.histogram()[:230]) / (gray.width * gray.height)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the shared repo, built up step by step ---------------------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory, data_source) -> dict:
    """The tiny pipeline reproduced and committed as ``main``; the default remote is its sibling."""
    base = tmp_path_factory.mktemp("workflow")
    repo = make_repo(base / "project")
    sh(repo, "dvc", "repro")
    baseline = commit_all(repo, "baseline: tiny profile reproduced")
    yield {"base": base, "repo": repo, "baseline": baseline}
    sh(repo, "dvc", "queue", "stop", "--kill", check=False)  # no worker outlives the module


@pytest.fixture(scope="module")
def one_epoch(project) -> dict:
    """``dvc exp run -S train.max_epochs=1`` in the workspace, then committed: two commits to diff."""
    repo = project["repo"]
    result = sh(repo, "dvc", "exp", "run", "-S", "train.max_epochs=1", "-n", "one-epoch")
    metrics = metrics_files(repo)
    head = commit_all(repo, "train one epoch")
    return project | {"output": result.stdout + result.stderr, "metrics": metrics, "head": head}


@pytest.fixture(scope="module")
def queued(one_epoch) -> dict:
    """Two queued experiments run by two workers at once; returns their final queue status."""
    repo = one_epoch["repo"]
    for name, seed in QUEUED.items():
        out = sh(repo, "dvc", "exp", "run", "--queue", "-S", "train.max_epochs=2", "-S", f"train.seed={seed}",
                 "-n", name).stdout
        assert f"Queued experiment '{name}'" in out
    assert set(queue_status(repo).values()) == {"Queued"}
    sh(repo, "dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 1800
    while True:
        status = queue_status(repo)
        if len(status) == len(QUEUED) and all(s in ("Success", "Failed") for s in status.values()):
            break
        assert time.monotonic() < deadline, f"queue still busy: {status}"
        time.sleep(5)
    logs = {name: sh(repo, "dvc", "queue", "logs", name, check=False).stdout for name in QUEUED}
    return one_epoch | {"status": status, "logs": logs}


# --- 1. experiments ---------------------------------------------------------------------------

def test_exp_run_with_a_set_param_reruns_only_train_and_evaluate(one_epoch):
    assert ran_stages(one_epoch["output"]) == {"train", "evaluate"}
    assert "Ran experiment(s): one-epoch" in one_epoch["output"]
    assert one_epoch["metrics"]["metrics/train.json"]["epochs"] == 1
    history = json.loads((one_epoch["repo"] / "results/train/history.json").read_text())
    assert [row["epoch"] for row in history] == [1]


def test_exp_show_lists_params_and_metrics(one_epoch):
    rows = exp_show(one_epoch["repo"])
    exp = rows["one-epoch"]
    assert exp["params"]["train"]["max_epochs"] == 1
    assert {"lr", "batch_size", "dropout", "max_epochs", "seed"} <= set(exp["params"]["train"])
    assert exp["metrics"]["metrics/evaluate.json"]["test_accuracy"] == \
        one_epoch["metrics"]["metrics/evaluate.json"]["test_accuracy"]
    assert 0 < exp["metrics"]["metrics/train.json"]["best_valid_acc"] <= 1
    # The table a person reads: the columns that tell experiments apart, by name.
    table = sh(one_epoch["repo"], "dvc", "exp", "show", "--csv", "-A", "--only-changed").stdout
    header = table.splitlines()[0].split(",")
    assert {"test_accuracy", "best_valid_acc", "train.max_epochs"} <= set(header)
    assert "one-epoch" in table


def test_params_and_metrics_diff_compare_two_commits(one_epoch):
    repo, old, new = one_epoch["repo"], one_epoch["baseline"], one_epoch["head"]
    params = json.loads(sh(repo, "dvc", "params", "diff", old, new, "--json").stdout)
    assert params == {"params.yaml": {"train.max_epochs": {"old": 2, "new": 1, "diff": -1}}}
    metrics = json.loads(sh(repo, "dvc", "metrics", "diff", old, new, "--json").stdout)
    assert metrics["metrics/train.json"]["epochs"] == {"old": 2, "new": 1, "diff": -1}
    accuracy = metrics["metrics/evaluate.json"]["test_accuracy"]
    assert accuracy["new"] == one_epoch["metrics"]["metrics/evaluate.json"]["test_accuracy"]
    assert accuracy["diff"] == pytest.approx(accuracy["new"] - accuracy["old"])
    md = sh(repo, "dvc", "metrics", "diff", old, new, "--md").stdout
    assert md.startswith("| Path") and "test_accuracy" in md


# --- 2. the queue -----------------------------------------------------------------------------

def test_queued_experiments_all_succeed_and_show_up(queued):
    assert queued["status"] == {name: "Success" for name in QUEUED}, queued["logs"]
    rows = exp_show(queued["repo"])
    for name, seed in QUEUED.items():
        assert rows[name]["params"]["train"]["seed"] == seed
        assert rows[name]["params"]["train"]["max_epochs"] == 2
        assert rows[name]["metrics"]["metrics/train.json"]["epochs"] == 2
        assert 0 < rows[name]["metrics"]["metrics/evaluate.json"]["test_accuracy"] <= 1
    assert rows["q-seed1"]["metrics"] != rows["q-seed2"]["metrics"]  # another seed, another model


def test_queued_experiments_log_complete_runs_to_the_root_store(queued):
    repo = queued["repo"]
    assert sorted(repo.rglob("mlflow.db")) == [repo / "mlflow.db"]  # none in DVC's temp copies
    con = sqlite3.connect(repo / "mlflow.db")
    rows = exp_show(repo)
    spans = []
    for name in QUEUED:
        assert "database is locked" not in queued["logs"][name]
        runs = con.execute("""select r.run_uuid, r.status, r.start_time, r.end_time, r.artifact_uri, s.value
                              from runs r join tags t on t.run_uuid = r.run_uuid
                              join tags s on s.run_uuid = r.run_uuid and s.key = 'fmnist.stage'
                              where t.key = 'fmnist.dvc_exp_name' and t.value = ?""", (name,)).fetchall()
        by_stage = {stage: (run, status, start, end, uri) for run, status, start, end, uri, stage in runs}
        assert sorted(by_stage) == ["evaluate", "train"] and len(runs) == 2, runs
        assert {status for _, status, *_ in by_stage.values()} == {"FINISHED"}
        train, _, start, end, uri = by_stage["train"]
        spans.append((start, end))
        for key in EPOCH_METRICS:
            steps = [s for (s,) in con.execute("select step from metrics where run_uuid = ? and key = ? "
                                               "order by step", (train, key))]
            assert steps == [1, 2], (name, key, steps)
        params = dict(con.execute("select key, value from params where run_uuid = ?", (train,)).fetchall())
        assert params["train.seed"] == str(QUEUED[name]) and params["train.max_epochs"] == "2"
        # evaluate put the test accuracy on the train run of the very model it measured
        (accuracy,) = con.execute("select value from metrics where run_uuid = ? and key = 'test_accuracy'",
                                  (train,)).fetchone()
        assert accuracy == pytest.approx(rows[name]["metrics"]["metrics/evaluate.json"]["test_accuracy"], abs=1e-6)
        assert uri.startswith((repo / "mlartifacts").as_uri()), uri
        assert (Path(uri.removeprefix("file://")) / "model.pt").is_file()
    (s1, e1), (s2, e2) = spans
    assert s1 < e2 and s2 < e1, "the two workers did not train at the same time"


# --- 3. plots ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def offline_page(project) -> Path:
    """``scripts/install-plots-js.py`` run in the repo: vega from npm, inlined in the DVC template."""
    if shutil.which("npm") is None:
        pytest.skip("npm missing: the offline plots page takes vega from the npm registry")
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
    # three vega charts drawn, and the four PNGs (search + evaluate) shown
    assert rendered(page, tmp_path) == {"canvas": 3, "img": 4}
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
    assert rendered(page, tmp_path) == {"canvas": 3, "img": 8}
    assert screenshot(page, tmp_path / "plots-diff.png", tmp_path, "1400,5000") > 0.05


# --- 4. remotes -------------------------------------------------------------------------------

def test_default_remote_is_a_folder_beside_the_repo(one_epoch):
    repo, storage = one_epoch["repo"], one_epoch["base"] / "fmnist-dvc-storage"
    assert sh(repo, "dvc", "remote", "default").stdout.strip() == "storage"
    sh(repo, "dvc", "push")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    model = next(o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.pt")
    assert (storage / "files" / "md5" / model["md5"][:2] / model["md5"][2:]).is_file()
    assert "in sync" in sh(repo, "dvc", "status", "--cloud").stdout


@pytest.fixture
def s3_server(tmp_path):
    """moto's S3 server on 127.0.0.1, with a bucket; yields the env for dvc and boto3."""
    port = free_port()
    log = open(tmp_path / "moto.log", "w")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "moto.log").read_text()
                time.sleep(0.3)
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials")}
        import boto3

        client = boto3.client("s3", endpoint_url=url, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket="fmnist-dvc")
        yield {"url": url, "env": env, "client": client}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_s3_remote_push_then_pull_into_a_fresh_clone(one_epoch, s3_server, tmp_path):
    repo = one_epoch["repo"]
    env = env_for(repo) | s3_server["env"]
    sh(repo, "git", "checkout", "-q", "-b", "s3-remote")  # main stays where the other tests expect it
    try:
        sh(repo, "dvc", "remote", "add", "s3", "s3://fmnist-dvc/store", env=env)
        sh(repo, "dvc", "remote", "modify", "s3", "endpointurl", s3_server["url"], env=env)
        commit_all(repo, "an S3 remote")
        pushed = sh(repo, "dvc", "push", "-r", "s3", env=env)
        assert re.search(r"\d+ files pushed", pushed.stdout), pushed.stdout
        keys = s3_server["client"].list_objects_v2(Bucket="fmnist-dvc", Prefix="store/")["KeyCount"]
        assert keys > 10

        clone = tmp_path / "clone"
        sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
        assert not (clone / "models/model.pt").exists()
        sh(clone, "dvc", "pull", "-r", "s3", env=env)
        assert (clone / "models/model.pt").read_bytes() == (repo / "models/model.pt").read_bytes()
        out = sh(clone, "dvc", "repro", env=env)
        assert ran_stages(out.stdout) == set(), out.stdout
        assert "Data and pipelines are up to date" in out.stdout
        shown = [json.loads(sh(r, "dvc", "metrics", "show", "--json", env=env).stdout) for r in (repo, clone)]
        assert shown[0] == shown[1] and "test_accuracy" in json.dumps(shown[1])
    finally:
        sh(repo, "git", "checkout", "-q", "main")


# --- 5. experiments shared through git --------------------------------------------------------

def test_exp_push_pull_apply_reproduces_params_and_metrics(queued):
    base, repo = queued["base"], queued["repo"]
    bare = base / "team.git"
    sh(base, "git", "init", "-q", "--bare", "-b", "main", str(bare))
    sh(repo, "git", "remote", "add", "origin", str(bare))
    sh(repo, "git", "push", "-q", "origin", "main")
    pushed = sh(repo, "dvc", "exp", "push", "origin", "q-seed1")  # its outputs go to the default remote
    assert "Pushed experiment q-seed1" in pushed.stdout

    mate = base / "teammate"  # a sibling clone: the same default remote, ../fmnist-dvc-storage
    sh(base, "git", "clone", "-q", str(bare), str(mate))
    assert sh(mate, "dvc", "exp", "list", "origin", "--name-only").stdout.split() == ["q-seed1"]
    sh(mate, "dvc", "exp", "pull", "origin", "q-seed1")
    assert "q-seed1" in sh(mate, "dvc", "exp", "list", "--name-only").stdout
    sh(mate, "dvc", "exp", "apply", "q-seed1")

    exp = exp_show(repo)["q-seed1"]
    assert yaml.safe_load((mate / "params.yaml").read_text()) == exp["params"]
    assert metrics_files(mate) == exp["metrics"]
    out = sh(mate, "dvc", "repro")  # the outputs came with it: nothing to rerun
    assert ran_stages(out.stdout) == set(), out.stdout


# --- 6. CI ------------------------------------------------------------------------------------

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def run_steps() -> dict[str, str]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    return {step.get("name", step.get("uses")): step["run"] for step in job["steps"] if "run" in step}


def test_workflow_passes_the_github_workflow_schema_and_shellcheck(tmp_path):
    lint = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]
    result = subprocess.run([*lint, str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"  # the linter does catch a mistake
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs_on:"))
    assert subprocess.run([*lint, str(broken)], capture_output=True).returncode != 0
    for name, script in run_steps().items():
        result = subprocess.run([str(BIN / "shellcheck"), "-s", "bash", "-"], input=script,
                                capture_output=True, text=True)
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


def test_workflow_runs_what_ci_run_runs_then_the_tiny_pipeline():
    ci_run = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    scripts = list(run_steps().values())
    positions = [next(i for i, s in enumerate(scripts) if command in s.splitlines()) for command in ci_run]
    assert positions == sorted(positions), ci_run
    tiny = next(s for s in scripts if "fmnist.profiles tiny" in s)
    lines = tiny.splitlines()
    assert lines.index("python -m fmnist.profiles tiny --write params.yaml") < lines.index("dvc repro")
    assert scripts.index(tiny) > positions[-1]


def test_workflow_report_step_writes_markdown_diffs(one_epoch, tmp_path):
    """The summary step's own script, run in the repo: base = the baseline commit."""
    (script,) = [s for s in run_steps().values() if "GITHUB_STEP_SUMMARY" in s]
    summary = tmp_path / "summary.md"
    env = env_for(one_epoch["repo"]) | {"BASE_SHA": one_epoch["baseline"], "GITHUB_STEP_SUMMARY": str(summary)}
    sh(one_epoch["repo"], "bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script, env=env)
    text = summary.read_text()
    params = text.split("## Params", 1)[1].split("## Metrics", 1)[0]
    assert re.search(r"^\| params\.yaml\s+\| train\.max_epochs\s+\| 2\s+\| 1\s+\|$", params, re.M), text
    metrics = text.split("## Metrics: base", 1)[1]
    assert re.search(r"^\| metrics/evaluate\.json\s+\| test_accuracy\s+\|", metrics, re.M), text
    assert "## Metrics of the tiny-profile run" in text
