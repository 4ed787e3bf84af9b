"""``python -m fmnist.team`` / ``fmnist-team``: the commands of the team stack (see ``fmnist.team``)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from fmnist.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from fmnist.team import accounts, mlflow_server, postgres, seaweedfs
from fmnist.team.process import GRACE_S, end, port_open
from fmnist.team.stack import Stack, TeamError, TeamInputError


def up(stack: Stack) -> None:
    start = time.monotonic()
    stack.home.mkdir(parents=True, exist_ok=True)
    os.chmod(stack.home, 0o755)  # the postgres user must reach pg/ under it
    stack.save_ports()
    s = stack.ensure_secrets()
    for service in (postgres, seaweedfs, mlflow_server):
        print(service.up(stack, s), flush=True)
    print(f"up in {time.monotonic() - start:.0f} s; point a shell at it: eval \"$(python -m fmnist.team env)\"")


def down(stack: Stack, grace_s: float) -> int:
    """End all three at once: MLflow and SeaweedFS on SIGTERM, PostgreSQL on SIGINT (its fast
    shutdown); whatever still runs after ``grace_s`` is SIGKILLed. One line per service."""
    lines, all_gone = end([mlflow_server.service(stack), seaweedfs.service(stack), postgres.service(stack)],
                          grace_s)
    for line in lines or ["nothing was running"]:
        print(line)
    for path in stack.run_dir.glob("*.pid"):
        path.unlink(missing_ok=True)
    return EXIT_OK if all_gone else EXIT_FAILED


def status(stack: Stack) -> int:
    s = stack.secrets
    rows = [("PostgreSQL", f"127.0.0.1:{stack.ports['pg']}", postgres.answers(stack)),
            ("SeaweedFS S3", stack.s3_url(), port_open(stack.ports["s3"]) and seaweedfs.ready(stack, s)),
            ("MLflow", stack.mlflow_url(), mlflow_server.answers(stack))]
    for name, where, ok in rows:
        print(f"{name:13} {where:26} {'up' if ok else 'down'}")
    return EXIT_OK if all(ok for *_, ok in rows) else EXIT_FAILED


def env(stack: Stack) -> None:
    if not (stack.home / "secrets.env").is_file():
        raise TeamError(f"no stack in {stack.home}: run `make team-up` first")
    for key, value in stack.client_env().items():
        print(f"export {key}={shlex.quote(value)}")


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fmnist.team",
                                description="The team stack on 127.0.0.1: PostgreSQL, SeaweedFS S3, MLflow.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start what is not running; idempotent")
    stop = sub.add_parser("down", help="end all three; nothing is left running")
    stop.add_argument("--grace", type=non_negative, default=GRACE_S, metavar="SECONDS",
                      help=f"how long each may take to end before SIGKILL (default {GRACE_S:g})")
    sub.add_parser("status", help="which of the three answer (exit status 1 when one does not)")
    sub.add_parser("env", help="shell exports for clients: eval \"$(python -m fmnist.team env)\"")
    rem = sub.add_parser("remote", help="the DVC remote on SeaweedFS, in .dvc/config.local")
    rem.add_argument("--repo", type=Path, default=Path.cwd())
    rem.add_argument("--name", default="team")
    rem.add_argument("--prefix", default="fmnist", help="the folder in the bucket; the same for every clone")
    user = sub.add_parser("add-user", help="an MLflow account; prints its credentials")
    user.add_argument("name")
    user.add_argument("--password")
    perm = sub.add_parser("grant", help="a permission on an experiment")
    perm.add_argument("name")
    perm.add_argument("permission", choices=accounts.PERMISSIONS)
    perm.add_argument("--experiment", default="fashion-mnist-alexnet")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        stack = Stack()
        if args.command == "up":
            up(stack)
        elif args.command == "down":
            return down(stack, args.grace)
        elif args.command == "status":
            return status(stack)
        elif args.command == "env":
            env(stack)
        elif args.command == "remote":
            print(seaweedfs.add_dvc_remote(stack, args.repo, args.name, args.prefix))
        elif args.command == "add-user":
            password = accounts.add_user(stack, args.name, args.password)
            print(f"MLFLOW_TRACKING_USERNAME={args.name} MLFLOW_TRACKING_PASSWORD={password}")
        elif args.command == "grant":
            accounts.grant(stack, args.name, args.permission, args.experiment)
            print(f"{args.name}: {args.permission} on experiment {args.experiment!r}")
    except TeamError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, TeamInputError) else EXIT_FAILED
    return EXIT_OK
