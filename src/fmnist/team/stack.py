"""Where the team stack lives: its folder, ports, secrets and the URLs a client uses.

``$TEAM_HOME`` (default ``.team/`` in the project's checkout) holds ``pg/`` (PostgreSQL: MLflow's
runs, the auth app's accounts and Optuna's studies), ``s3/`` (SeaweedFS: the buckets ``mlflow``
for MLflow's artifacts and ``dvc`` for the DVC remote), ``logs/``, ``run/`` (pid files) and
``secrets.env`` (mode 600: the MLflow admin password, the database password, the S3 keys and the
server's Flask secret). Secrets are generated on the first ``up`` unless the environment sets them
(``TEAM_ADMIN_PASSWORD``, ``TEAM_PG_PASSWORD``, ``TEAM_S3_ACCESS_KEY``, ``TEAM_S3_SECRET_KEY``,
``TEAM_FLASK_SECRET``); they are never written into a tracked file.

Ports: ``TEAM_MLFLOW_PORT`` (5000), ``TEAM_S3_PORT`` (8333), ``TEAM_PG_PORT`` (5432) and
``TEAM_WEED_PORTS``, the first of ten consecutive ports SeaweedFS uses inside (18400). The ports
of the first ``up`` are saved in ``ports.json`` and reused until the environment says otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from urllib.parse import quote

ADMIN = "admin"
DB_USER = "mlflow"
# MLflow's runs and registry; the auth app's users and permissions; Optuna's studies
DATABASES = ("mlflow", "mlflow_auth", "optuna")
MLFLOW_BUCKET, DVC_BUCKET = "mlflow", "dvc"
DEFAULT_PORTS = {"mlflow": 5000, "s3": 8333, "pg": 5432, "weed": 18400}
PORT_ENV = {"mlflow": "TEAM_MLFLOW_PORT", "s3": "TEAM_S3_PORT", "pg": "TEAM_PG_PORT", "weed": "TEAM_WEED_PORTS"}
SECRET_ENV = {"admin_password": "TEAM_ADMIN_PASSWORD", "pg_password": "TEAM_PG_PASSWORD",
              "s3_access_key": "TEAM_S3_ACCESS_KEY", "s3_secret_key": "TEAM_S3_SECRET_KEY",
              "flask_secret": "TEAM_FLASK_SECRET"}


class TeamError(Exception):
    """A service that cannot be started, reached or stopped; printed as one line, exit status 1."""


class TeamInputError(TeamError):
    """A value the user gave that is wrong (an environment variable, an argument); exit status 2."""


def default_home() -> Path:
    """``.team`` in the checkout this package is installed from (``make setup`` installs it
    editable), else in the current directory."""
    checkout = Path(__file__).resolve().parents[3]
    base = checkout if (checkout / "dvc.yaml").is_file() and (checkout / "pyproject.toml").is_file() else Path.cwd()
    return base / ".team"


class Stack:
    """The stack's folder and what it knows: ports (environment > saved > default), secrets
    (environment > ``secrets.env``) and the URLs built from them."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home or os.environ.get("TEAM_HOME") or default_home()).resolve()
        self.logs, self.run_dir = self.home / "logs", self.home / "run"
        self.pg_dir = self.home / "pg"
        self.pg_data = self.pg_dir / "data"

    @property
    def ports(self) -> dict[str, int]:
        path = self.home / "ports.json"
        saved = json.loads(path.read_text()) if path.is_file() else {}
        ports = {}
        for name, default in DEFAULT_PORTS.items():
            value = os.environ.get(PORT_ENV[name]) or saved.get(name) or default
            try:
                ports[name] = int(value)
            except ValueError:
                raise TeamInputError(f"{PORT_ENV[name]}={value!r} is not a port number") from None
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
        return {key: os.environ.get(env) or saved.get(key) or "" for key, env in SECRET_ENV.items()}

    def ensure_secrets(self) -> dict[str, str]:
        values = self.secrets
        for key in values:
            if not values[key]:
                # hex: no value starts with "-" (a command-line option to dvc) or needs quoting
                values[key] = ("team" + secrets.token_hex(8)) if key == "s3_access_key" else secrets.token_hex(20)
        write_private(self.home / "secrets.env", "".join(f"{k}={v}\n" for k, v in values.items()))
        return values

    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def db_uri(self, database: str, password: str | None = None) -> str:
        """SQLAlchemy's URL of one database, with psycopg 3 as the driver."""
        password = self.secrets["pg_password"] if password is None else password
        return f"postgresql+psycopg://{DB_USER}:{quote(password, safe='')}@127.0.0.1:{self.ports['pg']}/{database}"

    def client_env(self, user: str = ADMIN, password: str | None = None) -> dict[str, str]:
        """What a client (the pipeline, dvc, boto3, an Optuna search) needs to use the stack."""
        s = self.secrets
        return {"MLFLOW_TRACKING_URI": self.mlflow_url(), "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": s["admin_password"] if password is None else password,
                "AWS_ACCESS_KEY_ID": s["s3_access_key"], "AWS_SECRET_ACCESS_KEY": s["s3_secret_key"],
                "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": self.s3_url(),
                "FMNIST_OPTUNA_STORAGE": self.db_uri("optuna")}


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
