"""DVC remotes: the default folder beside the repo, and S3 on a local moto server, pushed then
pulled into a fresh clone."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from helpers import BIN, env_for, free_port, ran_stages, sh, stop, wait_http
from helpers_workflow import commit_all


pytestmark = pytest.mark.slow  # dvc repro, experiments, servers or a browser


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
    log = tmp_path / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc, timeout_s=60, log=log)
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
        stop(proc)


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
