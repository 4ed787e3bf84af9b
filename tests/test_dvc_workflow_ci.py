"""The project's GitHub workflow: valid by the workflow schema and shellcheck, runs what .ci/run
runs, and its report step writes Markdown diffs."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from helpers import BIN, ROOT, env_for, sh


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
    # GitHub's runners set CI=true themselves, which .ci/run exports for whoever runs it by hand
    ci_run = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith(("#", "set ", "cd ", "export CI=true"))]
    assert "make test" in ci_run
    scripts = list(run_steps().values())
    positions = [next(i for i, s in enumerate(scripts) if command in s.splitlines()) for command in ci_run]
    assert positions == sorted(positions), ci_run
    tiny = next(s for s in scripts if "fmnist.profiles tiny" in s)
    lines = tiny.splitlines()
    assert lines.index("python -m fmnist.profiles tiny --write params.yaml") < lines.index("dvc repro")
    assert scripts.index(tiny) > positions[-1]


@pytest.mark.slow  # the shared workflow repo: dvc repro and an experiment
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


def test_ci_stops_in_one_line_when_the_temp_folder_is_too_small(tmp_path):
    """scripts/check-disk.sh, the first step of .ci/run and the workflow: room or one clear line."""
    check = ["bash", str(ROOT / "scripts" / "check-disk.sh")]
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)}
    assert subprocess.run([*check, "0"], capture_output=True, text=True, env=env).returncode == 0
    short = subprocess.run([*check, "100000"], capture_output=True, text=True, env=env)
    assert short.returncode == 1
    assert re.fullmatch(rf"{re.escape(str(tmp_path))} has \d+ GB free; the test suite needs 100000 GB \(.*\)\n",
                        short.stderr), short.stderr
