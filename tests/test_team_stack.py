"""The team path on real servers, started by ``python -m fmnist.team`` on free ports of 127.0.0.1:
PostgreSQL behind an MLflow server with accounts, SeaweedFS as the S3 store of MLflow's artifacts
and of the DVC remote ``team``. Nothing is mocked.

Two clones of one bare git remote, alice's (A) and bob's (B), each with its own MLflow account:
A runs and pushes an experiment, B pulls it and gets the same bytes, sees A's runs through the
REST API and loads A's model from the registry. Then accounts, faults (the MLflow server killed
mid-training, PostgreSQL stopped, SeaweedFS stopped), four queued experiments logging at once,
every server SIGKILLed and brought back by ``up``, and ``make team-down`` ending a suspended server
and one that does not act on SIGTERM. One stack and one pair of clones serve the whole module;
fixtures build on each other.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import ROOT, env_for, make_repo, ran_stages, sh, start_queue
from helpers import free_ports

pytestmark = pytest.mark.slow

from fmnist.team import mlflow_server, postgres, seaweedfs
from fmnist.team.process import end, marked
from fmnist.team.stack import DVC_BUCKET, MLFLOW_BUCKET, Stack as TeamStack, TeamError

EXPERIMENT = "fashion-mnist-alexnet"
MODEL = "fashion-mnist-alexnet"
METRICS = ("metrics/train.json", "metrics/evaluate.json", "metrics/mlflow.json")
QUEUED = {f"load-{i}": i for i in range(1, 5)}


# --- the stack ------------------------------------------------------------------------------------



def require_postgres() -> None:
    try:
        postgres.find_pg_bin("initdb")
    except TeamError as err:
        if os.environ.get("CI") == "true":  # CI installs it (scripts/install-system-deps.sh): missing is a failure
            pytest.fail(str(err))
        pytest.skip(str(err))


class Stack:
    """The stack of one test module, run through ``python -m fmnist.team`` as users do: its home,
    free ports, and ways to stop one part (the faults) and to act as a user."""

    def __init__(self, home: Path):
        self.home = home
        self.env = {"TEAM_HOME": str(home), "TEAM_MLFLOW_PORT": str(free_ports(1)),
                    "TEAM_S3_PORT": str(free_ports(1)), "TEAM_PG_PORT": str(free_ports(1)),
                    "TEAM_WEED_PORTS": str(free_ports(10))}
        self.run_env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAM_", "MLFLOW_", "AWS_"))}
        self.run_env |= self.env
        self.url = f"http://127.0.0.1:{self.env['TEAM_MLFLOW_PORT']}"
        self.s3_port = self.env["TEAM_S3_PORT"]

    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "fmnist.team", *args], capture_output=True,
                                text=True, env=self.run_env, timeout=300, cwd=ROOT)
        if check and result.returncode != 0:
            raise AssertionError(f"fmnist.team {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result

    @property
    def secrets(self) -> dict[str, str]:
        return TeamStack(self.home).secrets  # the generated ones: no TEAM_* secret is set here

    def s3(self, secret: str | None = None):
        import boto3

        s = self.secrets
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.s3_port}", region_name="us-east-1",
                            aws_access_key_id=s["s3_access_key"], aws_secret_access_key=secret or s["s3_secret_key"])

    def stop(self, name: str) -> None:
        """Stop one part as a crash or an operator would, behind the back of the others."""
        module = {"postgres": postgres, "mlflow": mlflow_server, "seaweedfs": seaweedfs}[name]
        lines, gone = end([module.service(TeamStack(self.home))])
        assert lines and "stopped in" in lines[0] and gone, f"{name}: {lines}"

    def user_env(self, repo: Path, user: str, password: str) -> dict[str, str]:
        return env_for(repo) | {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_TRACKING_USERNAME": user,
                                "MLFLOW_TRACKING_PASSWORD": password}


def stack_processes(home: Path) -> list[str]:
    """Processes whose command line names the stack's home or that run in a folder under it (the
    postgres children name neither their cluster nor its folder on their command line): what
    ``down`` must leave none of."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if (str(home) in cmd or cwd.startswith(str(home))) and "pytest" not in cmd:
                found.append(f"{proc.name}: {cmd[:200]}")
    return found


@pytest.fixture(scope="module")
def stack(data_source):
    require_postgres()
    # Not pytest's tmp_path: its folders are 0700 root's, and PostgreSQL runs as the postgres user.
    home = Path(tempfile.mkdtemp(prefix="fmnist-team-"))
    os.chmod(home, 0o755)
    s = Stack(home / "team")
    start = time.monotonic()
    up = s.script("up")
    s.up_seconds = time.monotonic() - start
    s.up_output = up.stdout
    try:
        yield s
    finally:
        s.script("down", check=False)
        left = stack_processes(s.home)
        shutil.rmtree(home, ignore_errors=True)
        assert not left, f"fmnist.team down left processes behind: {left}"


@pytest.fixture(scope="module")
def accounts(stack) -> dict[str, str]:
    """Two MLflow accounts besides the admin: alice (clone A) and bob (clone B)."""
    passwords = {}
    for user in ("alice", "bob"):
        out = stack.script("add-user", user).stdout
        passwords[user] = out.split("MLFLOW_TRACKING_PASSWORD=")[1].split()[0]
    return passwords


@pytest.fixture(scope="module")
def clones(stack, accounts, tmp_path_factory) -> dict:
    """A bare remote with the tiny project; clones A and B, both with the DVC remote ``team``."""
    base = tmp_path_factory.mktemp("team-clones")
    seed = make_repo(base / "seed")
    bare = base / "origin.git"
    sh(base, "git", "init", "-q", "--bare", "-b", "main", str(bare))
    sh(seed, "git", "remote", "add", "origin", str(bare))
    sh(seed, "git", "push", "-q", "origin", "main")
    repos = {}
    for name, user in (("A", "alice"), ("B", "bob")):
        repo = base / name
        sh(base, "git", "clone", "-q", str(bare), str(repo))
        stack.script("remote", "--repo", str(repo))
        sh(repo, "dvc", "remote", "default", "--local", "team")
        repos[name] = {"repo": repo, "user": user, "env": stack.user_env(repo, user, accounts[user])}
    return repos


@pytest.fixture(scope="module")
def round_trip(stack, clones) -> dict:
    """A: ``dvc exp run``, ``dvc exp push``, ``dvc push``; B: ``dvc exp pull``, ``dvc exp apply``,
    ``dvc pull``, ``dvc repro``."""
    a, b = clones["A"], clones["B"]
    ran = sh(a["repo"], "dvc", "exp", "run", "-n", "from-alice", env=a["env"])
    pushed = sh(a["repo"], "dvc", "exp", "push", "origin", "from-alice", env=a["env"])
    assert "Pushed experiment from-alice" in pushed.stdout, pushed.stdout
    sh(a["repo"], "dvc", "push", env=a["env"])
    sh(b["repo"], "dvc", "exp", "pull", "origin", "from-alice", env=b["env"])
    sh(b["repo"], "dvc", "exp", "apply", "from-alice", env=b["env"])
    sh(b["repo"], "dvc", "pull", env=b["env"])
    repro = sh(b["repo"], "dvc", "repro", env=b["env"])
    return {"A": a, "B": b, "ran": ran.stdout + ran.stderr, "repro": repro.stdout + repro.stderr}


def api(stack, user: str | None, password: str | None, method: str, path: str, **kwargs) -> requests.Response:
    auth = (user, password) if user else None
    return requests.request(method, f"{stack.url}/api/2.0/mlflow/{path}", auth=auth, timeout=60, **kwargs)


def runs_of(stack, user: str, password: str, filter_string: str = "") -> list[dict]:
    experiment = api(stack, user, password, "GET", "experiments/get-by-name",
                     params={"experiment_name": EXPERIMENT}).json()["experiment"]
    body = {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000, "filter": filter_string}
    return api(stack, user, password, "POST", "runs/search", json=body).json().get("runs", [])


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metric_steps(stack, user: str, password: str, run_id: str, key: str) -> list[int]:
    history = api(stack, user, password, "GET", "metrics/get-history",
                  params={"run_id": run_id, "metric_key": key}).json().get("metrics", [])
    return sorted({m["step"] for m in history})


# --- the stack itself -----------------------------------------------------------------------------

def test_up_is_quick_idempotent_and_on_loopback_only(stack):
    again = stack.script("up").stdout
    assert again.count("already running") == 3, again
    assert stack.script("status").returncode == 0
    base = int(stack.env["TEAM_WEED_PORTS"])
    served = {int(stack.env[k]) for k in ("TEAM_MLFLOW_PORT", "TEAM_S3_PORT", "TEAM_PG_PORT")}
    ports = served | set(range(base, base + 10))
    listening = listening_sockets()
    assert served <= {port for _, port in listening}
    assert {(addr, port) for addr, port in listening if port in ports and addr != "127.0.0.1"} == set()
    assert stack.up_seconds < 60, stack.up_output  # last: on a loaded machine only this one fails


def listening_sockets() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            addr = socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1]) if len(addr_hex) == 8 else addr_hex
            found.add((addr, int(port_hex, 16)))
    return found


def test_a_taken_port_is_one_clear_line(stack, tmp_path):
    other = Stack(tmp_path / "other")
    other.env["TEAM_PG_PORT"] = other.run_env["TEAM_PG_PORT"] = stack.env["TEAM_PG_PORT"]
    os.chmod(tmp_path, 0o755)
    result = other.script("up", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: port {stack.env['TEAM_PG_PORT']} for PostgreSQL is taken by another process on "
                     f"127.0.0.1; stop it or set TEAM_PG_PORT to a free port"], result.stderr


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEAM_")}
    for args, extra, message in (
            (["status"], {"TEAM_PG_PORT": "54x"}, "error: TEAM_PG_PORT='54x' is not a port number"),
            (["down", "--grace", "-1"], {}, "argument --grace: '-1' is not a number of seconds >= 0")):
        result = subprocess.run([sys.executable, "-m", "fmnist.team", *args], capture_output=True, text=True,
                                env=env | {"TEAM_HOME": str(tmp_path / "team")} | extra, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].endswith(message), result.stderr

def test_s3_refuses_a_wrong_secret(stack):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        stack.s3(secret="wrong-" + stack.secrets["s3_secret_key"]).list_objects_v2(Bucket=DVC_BUCKET)
    stack.s3().list_objects_v2(Bucket=DVC_BUCKET)  # the right one is let in



def optuna_database(url: str) -> tuple[str, str, str]:
    """(database, user, the database's owner) as SQLAlchemy sees them through ``url``."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT current_database(), current_user, pg_get_userbyid(datdba) "
                                    "FROM pg_database WHERE datname = current_database()")).one()
    finally:
        engine.dispose()
    return tuple(row)


def test_optuna_has_its_own_database_and_env_exports_its_url(stack):
    import psycopg

    exports = dict(line.removeprefix("export ").split("=", 1) for line in stack.script("env").stdout.splitlines())
    url = shlex.split(exports["FMNIST_OPTUNA_STORAGE"])[0]
    port, password = stack.env["TEAM_PG_PORT"], stack.secrets["pg_password"]
    assert url == f"postgresql+psycopg://mlflow:{password}@127.0.0.1:{port}/optuna"
    assert optuna_database(url) == ("optuna", "mlflow", "mlflow")
    # a stack made before Optuna had a database gets it from the next `up`
    with psycopg.connect(host="127.0.0.1", port=int(port), user="mlflow", password=password, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute("DROP DATABASE optuna")
    again = stack.script("up").stdout
    assert f"PostgreSQL already running on 127.0.0.1:{port} (created optuna)" in again, again
    assert optuna_database(url) == ("optuna", "mlflow", "mlflow")

# --- two teammates --------------------------------------------------------------------------------

def test_teammate_reproduces_the_experiment_byte_for_byte(round_trip):
    a, b = round_trip["A"]["repo"], round_trip["B"]["repo"]
    assert ran_stages(round_trip["ran"]) == {"download", "split", "resize", "search", "train", "evaluate"}
    assert ran_stages(round_trip["repro"]) == set(), round_trip["repro"]
    for path in METRICS:
        assert (b / path).read_bytes() == (a / path).read_bytes(), path
    assert (b / "models/model.pt").read_bytes() == (a / "models/model.pt").read_bytes()
    assert yaml.safe_load((b / "params.yaml").read_text()) == yaml.safe_load((a / "params.yaml").read_text())


def test_teammate_sees_runs_metrics_datasets_and_the_model(stack, accounts, round_trip):
    b = round_trip["B"]["repo"]
    runs = runs_of(stack, "bob", accounts["bob"])  # bob reads alice's experiment
    by_stage = {}
    for run in runs:
        by_stage.setdefault(tags(run).get("fmnist.stage"), []).append(run)
    train, evaluate = by_stage["train"][0], by_stage["evaluate"][0]
    assert json.loads((b / "metrics/mlflow.json").read_text()) == {"train_run_id": train["info"]["run_id"]}
    commit = sh(b, "git", "rev-parse", "HEAD").stdout.strip()
    for run in (train, evaluate, by_stage["search"][0]):
        t = tags(run)
        assert run["info"]["status"] == "FINISHED"
        assert t["mlflow.user"] == "alice" and t["mlflow.source.type"] == "JOB"
        assert t["mlflow.source.git.commit"] == commit  # the experiment's baseline: B's HEAD
        assert t["mlflow.source.name"] == f"stages/{t['fmnist.stage']}.py"
        assert t["fmnist.dvc_exp_name"] == "from-alice"
    assert metric_steps(stack, "bob", accounts["bob"], train["info"]["run_id"], "valid_acc") == [1, 2]
    evaluate_metrics = json.loads((b / "metrics/evaluate.json").read_text())
    got = {m["key"]: m["value"] for m in train["data"]["metrics"]}
    assert got["test_accuracy"] == pytest.approx(evaluate_metrics["test_accuracy"], abs=1e-6)

    # datasets: name, context and DVC's checksum of the file, as in the .dir manifest of data/resized
    lock = yaml.safe_load((b / "dvc.lock").read_text())
    dir_md5 = next(o["md5"] for o in lock["stages"]["resize"]["outs"] if o["path"] == "data/resized")
    manifest = b / ".dvc/cache/files/md5" / dir_md5[:2] / dir_md5[2:]
    dvc_md5 = {e["relpath"]: e["md5"] for e in json.loads(manifest.read_text())}
    inputs = {d["dataset"]["name"]: d for d in train["inputs"]["dataset_inputs"]}
    assert set(inputs) == {"train_images", "valid_images"}
    for name, d in inputs.items():
        assert d["dataset"]["digest"] == dvc_md5[f"{name}.npy"]
        assert d["dataset"]["digest"] == hashlib.md5((b / f"data/resized/{name}.npy").read_bytes()).hexdigest()
    assert {t["value"] for d in inputs.values() for t in d["tags"]} == {"training", "validation"}
    assert [d["dataset"]["name"] for d in evaluate["inputs"]["dataset_inputs"]] == ["test_images"]

    # the registry: alice's version holds the champion alias, with the reason
    got = api(stack, "bob", accounts["bob"], "GET", "registered-models/alias",
              params={"name": MODEL, "alias": "champion"}).json()["model_version"]
    assert got["run_id"] == train["info"]["run_id"]
    reason = {t["key"]: t["value"] for t in got.get("tags", [])}["fmnist.champion"]
    assert reason.startswith("first champion: test_accuracy=")


LOAD_SCRIPT = """
import json, sys
import mlflow, mlflow.pyfunc, numpy, pandas, torch   # the model's declared requirements
before = {m.split(".")[0] for m in sys.modules}
model = mlflow.pyfunc.load_model("models:/%s@champion")
images = numpy.load(sys.argv[1])[:200].astype(numpy.float32)
labels = list(model.predict(images)["label"])
after = {m.split(".")[0] for m in sys.modules}
print(json.dumps({"labels": labels, "new_modules": sorted(after - before), "all_modules": sorted(after)}))
""" % MODEL


def predicted_labels(repo: Path) -> list[str]:
    """evaluate's predicted class names, in test-set order."""
    with open(repo / "results/evaluate/predictions.csv", newline="") as f:
        return [row["predicted"] for row in csv.DictReader(f)]


def requirement_closure(names: list[str]) -> set[str]:
    """The declared distributions and everything they require, transitively (no extras)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_teammate_loads_the_champion_from_s3_and_it_imports_only_its_requirements(stack, accounts, round_trip,
                                                                                     tmp_path):
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    b = round_trip["B"]["repo"]
    env = stack.user_env(tmp_path, "bob", accounts["bob"])  # no S3 keys: artifacts come through the server
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    out = sh(tmp_path, sys.executable, str(script), str(b / "data/split/test_images.npy"), env=env)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    expected = predicted_labels(b)[:200]
    assert loaded["labels"] == expected

    # the model's files sit in SeaweedFS, in the MLflow bucket, as code: nothing to unpickle
    s3 = stack.s3()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=MLFLOW_BUCKET, MaxKeys=10000).get("Contents", [])]
    model_keys = [k for k in keys if k.endswith("/MLmodel")]
    assert model_keys and any(k.endswith("/model.pt") for k in keys)
    assert not any(k.endswith("python_model.pkl") for k in keys)

    def read(key: str) -> str:
        return s3.get_object(Bucket=MLFLOW_BUCKET, Key=key)["Body"].read().decode()

    mlmodel = yaml.safe_load(read(model_keys[0]))
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    declared = [line.split("==")[0] for line in read(model_keys[0].replace("/MLmodel", "/requirements.txt")).split()]
    assert "skorch" not in loaded["all_modules"]
    allowed = requirement_closure(declared)
    dists = packages_distributions()
    outside = {m: dists[m] for m in loaded["new_modules"]
               if m in dists and not {canonicalize_name(d) for d in dists[m]} & allowed and m != "fmnist"}
    assert not outside, f"loading the model imports packages it does not declare ({declared}): {outside}"


def test_predict_cli_takes_the_champion_uri(stack, accounts, round_trip, tmp_path):
    from PIL import Image

    import numpy as np

    b = round_trip["B"]["repo"]
    image = np.load(b / "data/split/test_images.npy")[0]
    Image.fromarray(image).save(tmp_path / "first.png")
    env = stack.user_env(tmp_path, "bob", accounts["bob"])
    out = sh(tmp_path, "fmnist-predict", "--model-uri", f"models:/{MODEL}@champion", str(tmp_path / "first.png"),
             env=env)
    assert predicted_labels(b)[0] in out.stdout, out.stdout


# --- accounts -------------------------------------------------------------------------------------

def test_accounts_refuse_strangers_and_guard_other_users_runs(stack, accounts, round_trip):
    assert api(stack, None, None, "GET", "experiments/get-by-name",
               params={"experiment_name": EXPERIMENT}).status_code == 401
    assert api(stack, "bob", "not-" + accounts["bob"], "GET", "experiments/get-by-name",
               params={"experiment_name": EXPERIMENT}).status_code == 401
    train = next(r for r in runs_of(stack, "bob", accounts["bob"]) if tags(r).get("fmnist.stage") == "train")
    run_id = train["info"]["run_id"]
    assert api(stack, "bob", accounts["bob"], "POST", "runs/delete", json={"run_id": run_id}).status_code == 403
    assert api(stack, "bob", accounts["bob"], "POST", "runs/update",
               json={"run_id": run_id, "run_name": "bob-was-here"}).status_code == 403
    still = api(stack, "alice", accounts["alice"], "GET", "runs/get", params={"run_id": run_id}).json()["run"]
    assert still["info"]["lifecycle_stage"] == "active" and still["info"]["run_name"] == "train"


def test_no_secret_in_a_tracked_file(stack, round_trip):
    s = stack.secrets
    for repo in (ROOT, round_trip["A"]["repo"], round_trip["B"]["repo"]):
        files = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
        for name in filter(None, files.decode().split("\0")):
            path = repo / name
            if path.is_file():
                data = path.read_bytes()
                for key in ("admin_password", "pg_password", "s3_secret_key"):
                    assert s[key].encode() not in data, f"{key} in tracked file {repo}/{name}"


# --- faults ---------------------------------------------------------------------------------------

def test_mlflow_server_restarted_during_training_loses_no_epoch(stack, accounts, round_trip):
    a = round_trip["A"]
    proc = subprocess.Popen(["dvc", "exp", "run", "-n", "restart", "-S", "train.max_epochs=3", "-S", "train.seed=7"],
                            cwd=a["repo"], env=a["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while True:  # wait for the first epoch to arrive, then pull the server away
            runs = runs_of(stack, "alice", accounts["alice"], "tags.`fmnist.dvc_exp_name` = 'restart'")
            train = [r for r in runs if tags(r).get("fmnist.stage") == "train"]
            if train and metric_steps(stack, "alice", accounts["alice"], train[0]["info"]["run_id"], "valid_acc"):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "train never logged an epoch"
            time.sleep(1)
        stack.stop("mlflow")
        time.sleep(5)
        stack.script("up")
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    run_id = train[0]["info"]["run_id"]
    run = api(stack, "alice", accounts["alice"], "GET", "runs/get", params={"run_id": run_id}).json()["run"]
    assert run["info"]["status"] == "FINISHED"
    for key in ("train_loss", "valid_loss", "train_acc", "valid_acc"):
        assert metric_steps(stack, "alice", accounts["alice"], run_id, key) == [1, 2, 3], key


def test_stopped_postgres_fails_the_stage_before_training_in_one_line(stack, round_trip):
    a = round_trip["A"]
    stack.stop("postgres")
    try:
        result = sh(a["repo"], "dvc", "exp", "run", "-n", "no-db", "-S", "train.seed=8", env=a["env"], check=False)
    finally:
        stack.script("up")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert f"MLflow tracking server {stack.url} cannot use its store" in errors[0]
    assert "epoch" not in output.lower().split("running stage 'train'")[-1], output[-3000:]


def test_stopped_seaweedfs_fails_dvc_push_clearly_and_a_retry_completes(stack, round_trip):
    a = round_trip["A"]  # the restart experiment left outputs in A's workspace that are not pushed yet
    stack.stop("seaweedfs")
    try:
        failed = sh(a["repo"], "dvc", "push", env=a["env"], check=False, timeout=600)
    finally:
        stack.script("up")
    assert failed.returncode != 0
    assert f"127.0.0.1:{stack.s3_port}" in failed.stdout + failed.stderr, failed.stderr[-2000:]
    sh(a["repo"], "dvc", "push", env=a["env"])
    status = sh(a["repo"], "dvc", "status", "--cloud", env=a["env"])
    assert "Cache and remote 'team' are in sync" in status.stdout, status.stdout


# --- load -----------------------------------------------------------------------------------------

def test_four_queued_experiments_log_every_metric(stack, accounts, round_trip):
    a = round_trip["A"]
    for name, seed in QUEUED.items():
        sh(a["repo"], "dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.seed={seed}",
           "-S", "train.max_epochs=2", env=a["env"])
    start_queue(a["repo"], 2, env=a["env"])
    try:
        deadline = time.monotonic() + 1800
        while True:
            out = sh(a["repo"], "dvc", "queue", "status", env=a["env"]).stdout
            done = [line for line in out.splitlines() if any(n in line for n in QUEUED)
                    and ("Success" in line or "Failed" in line)]
            if len(done) == len(QUEUED):
                break
            assert time.monotonic() < deadline, out
            time.sleep(5)
    finally:
        sh(a["repo"], "dvc", "queue", "stop", "--kill", env=a["env"], check=False)
    assert all("Success" in line for line in done), out
    for name in QUEUED:
        runs = runs_of(stack, "alice", accounts["alice"], f"tags.`fmnist.dvc_exp_name` = '{name}'")
        by_stage = {tags(r)["fmnist.stage"]: r for r in runs}
        assert {"train", "evaluate"} <= set(by_stage), name
        assert all(r["info"]["status"] == "FINISHED" for r in runs), name
        run_id = by_stage["train"]["info"]["run_id"]
        for key in ("train_loss", "valid_loss", "train_acc", "valid_acc", "lr"):
            assert metric_steps(stack, "alice", accounts["alice"], run_id, key) == [1, 2], (name, key)
        assert "test_accuracy" in {m["key"] for m in by_stage["evaluate"]["data"]["metrics"]}, name


# --- last, since it widens bob's rights ------------------------------------------------------------

def test_grant_edit_lets_a_teammate_log_into_the_experiment(stack, accounts, round_trip):
    experiment = api(stack, "bob", accounts["bob"], "GET", "experiments/get-by-name",
                     params={"experiment_name": EXPERIMENT}).json()["experiment"]["experiment_id"]
    body = {"experiment_id": experiment, "run_name": "bob-tries"}
    assert api(stack, "bob", accounts["bob"], "POST", "runs/create", json=body).status_code == 403
    assert stack.script("grant", "bob", "EDIT").stdout.strip() == f"bob: EDIT on experiment '{EXPERIMENT}'"
    assert stack.script("grant", "bob", "EDIT").returncode == 0  # again: the same, no error
    created = api(stack, "bob", accounts["bob"], "POST", "runs/create", json=body)
    assert created.status_code == 200, created.text
    run_id = created.json()["run"]["info"]["run_id"]
    logged = api(stack, "bob", accounts["bob"], "POST", "runs/log-metric",
                 json={"run_id": run_id, "key": "x", "value": 1.0, "timestamp": 0, "step": 0})
    assert logged.status_code == 200, logged.text


# --- crashes, and ending the stack (last: they take it down) ----------------------------------------

def test_up_brings_the_stack_back_after_every_server_is_sigkilled(stack, accounts):
    import psycopg

    home, password = stack.home, stack.secrets["pg_password"]
    stack.s3().put_object(Bucket=DVC_BUCKET, Key="probe/sigkill", Body=b"still here")
    with psycopg.connect(host="127.0.0.1", port=int(stack.env["TEAM_PG_PORT"]), user="mlflow", password=password,
                         dbname="optuna", autocommit=True) as conn:
        conn.execute("CREATE TABLE probe (value text)")
        conn.execute("INSERT INTO probe VALUES ('still here')")
    experiment = api(stack, "alice", accounts["alice"], "POST", "experiments/create",
                     json={"name": "probe-sigkill"}).json()["experiment_id"]
    pid_file = home / "pg/data/postmaster.pid"
    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
    os.kill(int((home / "run/seaweedfs.pid").read_text()), signal.SIGKILL)
    # the whole server: the mlflow process alone would leave uvicorn serving on without it
    os.killpg(int((home / "run/mlflow.pid").read_text()), signal.SIGKILL)
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        # the dead postmaster's pid now names a live program, as when the system reuses it
        lines = pid_file.read_text().splitlines()
        pid_file.write_text("\n".join([str(bystander.pid), *lines[1:]]) + "\n")
        assert stack.script("status", check=False).returncode == 1
        up = stack.script("up").stdout
        assert "already running" not in up, up
        assert stack.script("status").returncode == 0
        assert bystander.poll() is None, "up ended a process that is not the stack's"
    finally:
        bystander.kill()
        bystander.wait()
    assert stack.s3().get_object(Bucket=DVC_BUCKET, Key="probe/sigkill")["Body"].read() == b"still here"
    with psycopg.connect(host="127.0.0.1", port=int(stack.env["TEAM_PG_PORT"]), user="mlflow", password=password,
                         dbname="optuna", autocommit=True) as conn:
        assert conn.execute("SELECT value FROM probe").fetchall() == [("still here",)]
        conn.execute("DROP TABLE probe")
    # runs and accounts came through PostgreSQL's crash recovery
    got = api(stack, "alice", accounts["alice"], "GET", "experiments/get", params={"experiment_id": experiment})
    assert got.json()["experiment"]["name"] == "probe-sigkill", got.text


TRACER = r"""
import ctypes, os, sys

ptrace = ctypes.CDLL(None, use_errno=True).ptrace
pid, held = int(sys.argv[1]), set()
while True:  # every thread (Go runs signal handlers on any): PTRACE_ATTACH stops each
    tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")} - held
    if not tids:
        break
    for tid in tids:
        if ptrace(16, tid, None, None) != 0:
            sys.exit(f"ptrace attach to {tid} failed: errno {ctypes.get_errno()}")
        held.add(tid)
print("attached", flush=True)
while held:  # a debugger that never lets it go on: each signal but SIGKILL waits for this tracer
    tid, status = os.waitpid(-1, 0x40000000)  # __WALL: the threads are not our children
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        held.discard(tid)
"""


def test_team_down_ends_a_suspended_server_and_kills_one_that_does_not_act_on_sigterm(stack):
    team = TeamStack(stack.home)
    for proc in marked(team, "mlflow"):  # the mlflow process, uvicorn and its workers
        os.kill(proc.pid, signal.SIGSTOP)
    weed = marked(team, "seaweedfs")
    assert len(weed) == 1
    tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(weed[0].pid)], stdout=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout.readline().strip() == "attached"
        start = time.monotonic()
        down = subprocess.run(["make", "--no-print-directory", "team-down"], cwd=ROOT, env=stack.run_env,
                              capture_output=True, text=True, timeout=120)
        took = time.monotonic() - start
    finally:
        tracer.kill()
        tracer.wait()
    lines = down.stdout.strip().splitlines()[-3:]
    assert down.returncode == 0, down.stdout + down.stderr
    assert re.fullmatch(r"MLflow: was suspended \(SIGSTOP\), resumed with SIGCONT; stopped in [\d.]+ s",
                        lines[0]), lines
    assert re.fullmatch(r"SeaweedFS: was held by a tracer; killed after 1\d s \(still running 10 s after SIGTERM\)",
                        lines[1]), lines
    assert re.fullmatch(r"PostgreSQL: stopped in [\d.]+ s", lines[2]), lines
    assert took < 30, f"make team-down took {took:.0f} s"
    assert not stack_processes(stack.home)
