"""PostgreSQL for the stack: MLflow's runs, the auth app's accounts and Optuna's studies.

One cluster in ``pg/data``, on 127.0.0.1 only (no Unix socket), the role ``mlflow`` with a
scram password and the databases of ``stack.DATABASES``, created on every ``up`` if missing.
PostgreSQL refuses to run as root: under root its tools run as the system user ``postgres``
(Debian's package creates it), so the stack's folder must be reachable by that user.

Its processes are those running the ``postgres`` binary in the data folder (each child makes
itself a session leader, so no process group holds them all). A postmaster killed with SIGKILL
leaves ``postmaster.pid`` behind: ``up`` ends what is left of it, removes the file and starts
PostgreSQL, which recovers from its write-ahead log by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from fmnist.team.process import GRACE_S, Proc, Service, answers_soon, check_free, end, find, run
from fmnist.team.stack import DATABASES, DB_USER, PORT_ENV, Stack, TeamError

PG_SYSTEM_USER = "postgres"
LABEL = "PostgreSQL"


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
    import pwd

    try:
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


def processes(stack: Stack) -> list[Proc]:
    """Every postgres process of this cluster: the binary, running in the data folder."""
    data = str(stack.pg_data)

    def match(pid: int) -> bool:
        return (os.readlink(f"/proc/{pid}/cwd") == data
                and Path(os.readlink(f"/proc/{pid}/exe")).name in ("postgres", "postmaster"))

    return find(match)


def postmaster(stack: Stack, procs: list[Proc] | None = None) -> Proc | None:
    """The live postmaster named by ``postmaster.pid``; None when the file is stale or missing."""
    try:
        pid = int((stack.pg_data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return next((p for p in (processes(stack) if procs is None else procs) if p.pid == pid), None)


def service(stack: Stack) -> Service:
    """Ending PostgreSQL: SIGINT to the postmaster is its fast shutdown (what ``pg_ctl -m fast``
    sends); it ends its children itself."""
    def polite(procs: list[Proc]) -> list[tuple[int, signal.Signals]]:
        master = postmaster(stack, procs)
        return [(master.pid, signal.SIGINT)] if master else []

    return Service(LABEL, lambda: processes(stack), polite)


def connect(stack: Stack, password: str, database: str = "postgres", timeout_s: int = 10):
    import psycopg

    port = stack.ports["pg"]
    try:
        return psycopg.connect(host="127.0.0.1", port=port, user=DB_USER, password=password, dbname=database,
                               connect_timeout=timeout_s, autocommit=True)
    except psycopg.OperationalError as err:
        reason = " ".join(str(err).split())[:300]
        raise TeamError(f"PostgreSQL on 127.0.0.1:{port} refused {DB_USER}@{database}: {reason}") from None


def answers(stack: Stack) -> bool:
    try:
        with connect(stack, stack.secrets["pg_password"], timeout_s=3):
            return True
    except TeamError:
        return False


def ensure_databases(stack: Stack, password: str) -> list[str]:
    """Create the databases the stack needs that are missing; returns those it created."""
    from psycopg import sql

    created = []
    with connect(stack, password) as conn:
        have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in have:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                            sql.Identifier(DB_USER)))
                created.append(name)
    return created


def up(stack: Stack, s: dict[str, str]) -> str:
    port = stack.ports["pg"]
    procs = processes(stack)
    master = postmaster(stack, procs)
    if master is not None and not master.suspended:
        answers_soon(lambda: answers(stack))  # one that is starting or recovering; never ended for being slow
        created = ensure_databases(stack, s["pg_password"])
        return f"PostgreSQL already running on 127.0.0.1:{port}" + (f" (created {', '.join(created)})"
                                                                     if created else "")
    if procs:  # suspended, or what a killed postmaster left
        for line in end([service(stack)], GRACE_S)[0]:
            print(line, flush=True)
    # no postgres of ours runs in the folder now, so a postmaster.pid there is stale; PostgreSQL
    # would refuse to start over one whose pid another process has since taken
    (stack.pg_data / "postmaster.pid").unlink(missing_ok=True)
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
                    "-o", options, "-w", "-t", "120", "start"]),
        f"PostgreSQL on port {port} (see {stack.pg_dir / 'postgres.log'})", cwd="/")
    ensure_databases(stack, s["pg_password"])
    return f"PostgreSQL on 127.0.0.1:{port} (databases {', '.join(DATABASES)}, role {DB_USER}, scram)"
