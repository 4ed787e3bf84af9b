"""Experiments shared through git: `dvc exp push` to a bare remote, a teammate's clone pulls,
applies and reproduces nothing."""

from __future__ import annotations

import pytest
import yaml

from helpers import ran_stages, sh
from helpers_workflow import exp_show, metrics_files


pytestmark = pytest.mark.slow  # dvc repro, experiments, servers or a browser


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
