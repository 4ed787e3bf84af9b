"""The stack's processes: start a server in a session of its own, find every process left of one
(also after its main process was killed), and end them within a bounded time.

A server started here carries ``FMNIST_TEAM_SERVICE=<home>/<name>`` in its environment, and so do
its children: that, not a pid file, says which processes are the stack's, so a pid file left by a
killed server, or its pid reused by another program, misleads nothing. Ending sends the polite
signal, SIGCONT to every process (a suspended one then acts on it), waits a short grace period and
SIGKILLs what is left; each service is reported as "stopped in N s" or "killed after N s".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fmnist.team.stack import Stack, TeamError

MARKER = "FMNIST_TEAM_SERVICE"
GRACE_S = 10.0  # how long a service may take to end on its polite signal before SIGKILL
KILL_WAIT_S = 5.0  # how long SIGKILLed processes may take to vanish


@dataclass(frozen=True)
class Proc:
    """One process, as /proc shows it; ``start`` (clock ticks since boot) tells it from a later
    process that gets the same pid."""

    pid: int
    start: int
    state: str

    @property
    def suspended(self) -> bool:
        return self.state in "Tt"  # stopped by a signal (SIGSTOP) or by a tracer


def read_proc(pid: int) -> Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return Proc(pid, int(fields[19]), fields[0])


def alive(proc: Proc) -> bool:
    """Still running (or suspended), and still the same process: a zombie counts as gone."""
    now = read_proc(proc.pid)
    return now is not None and now.start == proc.start and now.state not in "ZXx"


def find(match: Callable[[int], bool]) -> list[Proc]:
    """The live processes (other than this one) for which ``match(pid)`` holds."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if not match(int(entry.name)):
                continue
        except OSError:  # gone meanwhile, or not ours to read
            continue
        proc = read_proc(int(entry.name))
        if proc is not None and proc.state not in "ZXx":
            found.append(proc)
    return found


def marked(stack: Stack, name: str) -> list[Proc]:
    """The processes started by :func:`spawn` as ``name`` for this stack, and their children."""
    entry = f"{MARKER}={stack.home}/{name}".encode()
    return find(lambda pid: entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))


def spawn(stack: Stack, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in its own session, marked as ``name``, logging to ``logs/<name>.log``."""
    stack.logs.mkdir(parents=True, exist_ok=True)
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    with open(stack.logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env | {MARKER: f"{stack.home}/{name}"}, cwd=stack.home, start_new_session=True)
    (stack.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")  # for people; ending goes by the marker
    return proc


@dataclass
class Service:
    """How to end one service: ``members`` finds its processes; ``polite`` says which of them get
    which signal first (none: its main process is gone, so the rest are killed at once)."""

    label: str
    members: Callable[[], list[Proc]]
    polite: Callable[[list[Proc]], list[tuple[int, signal.Signals]]]


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise TeamError(f"not allowed to signal process {pid}: run this as the user who started the stack") from None


@dataclass
class _Ending:
    service: Service
    procs: list[Proc]
    signals: str  # the polite signals sent, e.g. "SIGTERM"; "" when none could be
    note: str  # what was odd about it, said before the outcome
    line: str = ""


def end(services: list[Service], grace_s: float = GRACE_S) -> tuple[list[str], bool]:
    """End the services together, so the whole takes at most about ``grace_s + KILL_WAIT_S``.

    Returns one line per service that was running ("stopped in N s", "killed after N s"), and
    whether every process is gone.
    """
    start = time.monotonic()
    endings = []
    for service in services:
        procs = service.members()
        if not procs:
            continue
        politely = service.polite(procs)
        for pid, sig in politely:
            _send(pid, sig)
        for proc in procs:  # a suspended process acts on a pending signal only once resumed
            _send(proc.pid, signal.SIGCONT)
        note = ("was held by a tracer; " if any(p.state == "t" for p in procs)  # SIGCONT cannot resume it
                else "was suspended (SIGSTOP), resumed with SIGCONT; " if any(p.suspended for p in procs) else "")
        endings.append(_Ending(service, procs, "/".join(sorted({sig.name for _, sig in politely})), note))
    deadline = start + grace_s
    while True:
        waiting = [e for e in endings if e.signals and not e.line]
        for e in waiting:  # members() too: a supervisor may have started a new worker meanwhile
            if not any(alive(p) for p in e.procs) and not e.service.members():
                e.line = f"{e.service.label}: {e.note}stopped in {time.monotonic() - start:.1f} s"
        if all(e.line for e in waiting) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    killed = []
    for e in endings:
        if e.line:
            continue
        left = list({(p.pid, p.start): p for p in e.procs + e.service.members() if alive(p)}.values())
        for proc in left:
            _send(proc.pid, signal.SIGKILL)
        killed.append((e, left))
        if e.signals:
            e.line = (f"{e.service.label}: {e.note}killed after {time.monotonic() - start:.0f} s "
                      f"(still running {grace_s:g} s after {e.signals})")
        else:
            e.line = f"{e.service.label}: {e.note}killed {len(left)} leftover process(es) (its main process was gone)"
    all_gone = True
    kill_deadline = time.monotonic() + KILL_WAIT_S
    for e, left in killed:
        while any(alive(p) for p in left) and time.monotonic() < kill_deadline:
            time.sleep(0.05)
        stuck = [str(p.pid) for p in left if alive(p)]
        if stuck:
            all_gone = False
            e.line += f"; still there {KILL_WAIT_S:g} s after SIGKILL: pid {', '.join(stuck)}"
    return [e.line for e in endings], all_gone


# --- probes and commands ---------------------------------------------------------------------------

def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def check_free(port: int, what: str, env: str) -> None:
    if port_open(port):
        raise TeamError(f"port {port} for {what} is taken by another process on 127.0.0.1; "
                        f"stop it or set {env} to a free port")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def answers_soon(check: Callable[[], bool], timeout_s: float = 30) -> bool:
    """Whether ``check`` holds within ``timeout_s``: a server that is busy or still starting is
    given that long before ``up`` counts it as hung and restarts it."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


def wait_for(check: Callable[[], bool], what: str, timeout_s: float, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
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


def run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a command to its end; its last line of output in one TeamError when it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TeamError(f"{what} failed ({result.returncode}): {last[0]}")
    return result
