"""The stack's MLflow server: the basic-auth app (accounts in PostgreSQL's ``mlflow_auth``), runs
and the registry in ``mlflow``, artifacts proxied to ``s3://mlflow/artifacts`` on SeaweedFS, so
clients need no S3 keys. ``TEAM_MLFLOW_WORKERS`` (2) sets uvicorn's worker processes."""

from __future__ import annotations

import configparser
import io
import os
import signal
import sys
from pathlib import Path

from fmnist.team.process import (GRACE_S, Service, answers_soon, check_free, end, http_ok, marked, spawn,
                                 wait_for)
from fmnist.team.stack import ADMIN, MLFLOW_BUCKET, PORT_ENV, Stack, write_private

NAME, LABEL = "mlflow", "MLflow"
BIN = Path(sys.executable).parent


def service(stack: Stack) -> Service:
    return Service(LABEL, lambda: marked(stack, NAME), lambda procs: [(p.pid, signal.SIGTERM) for p in procs])


def answers(stack: Stack) -> bool:
    return http_ok(stack.mlflow_url() + "/health")


def up(stack: Stack, s: dict[str, str]) -> str:
    url = stack.mlflow_url()
    procs = marked(stack, NAME)
    if procs and not any(p.suspended for p in procs) and answers_soon(lambda: answers(stack)):
        return f"MLflow already running on {url}"
    if procs:  # suspended, not answering, or what a killed one left (its uvicorn workers hold the port)
        for line in end([service(stack)], GRACE_S)[0]:
            print(line, flush=True)
    check_free(stack.ports["mlflow"], "the MLflow server", PORT_ENV["mlflow"])
    auth = configparser.ConfigParser()
    auth["mlflow"] = {"default_permission": "READ", "database_uri": stack.db_uri("mlflow_auth", s["pg_password"]),
                      "admin_username": ADMIN,
                      "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth"}
    text = io.StringIO()
    auth.write(text)
    write_private(stack.home / "auth.ini", text.getvalue())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "AWS_"))}
    env |= {"MLFLOW_AUTH_CONFIG_PATH": str(stack.home / "auth.ini"), "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
            "MLFLOW_AUTH_ADMIN_PASSWORD": s["admin_password"], "MLFLOW_FLASK_SERVER_SECRET_KEY": s["flask_secret"],
            "MLFLOW_S3_ENDPOINT_URL": stack.s3_url(), "AWS_ACCESS_KEY_ID": s["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": s["s3_secret_key"], "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            # MLflow's job runner (GenAI jobs, trace roll-ups; none used here) would add seven
            # Python processes that import MLflow at start: about a minute of CPU on a small machine
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    workers = os.environ.get("TEAM_MLFLOW_WORKERS", "2")
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
           "--port", str(stack.ports["mlflow"]), "--workers", workers,
           "--backend-store-uri", stack.db_uri("mlflow", s["pg_password"]),
           "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts"]
    proc = spawn(stack, NAME, cmd, env)
    wait_for(lambda: answers(stack), "the MLflow server", 120, proc, stack.logs / f"{NAME}.log")
    return f"MLflow on {url} (basic-auth, user {ADMIN}; runs in PostgreSQL, artifacts in s3://{MLFLOW_BUCKET})"
