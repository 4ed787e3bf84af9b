"""How long does each pipeline stage take, and what memory does it peak at, in a real run watched from outside?

    python benchmarks/stages.py -- dvc exp run $(python -m fmnist.profiles alexnet227) -n alexnet227

Runs the command and polls /proc every half second. A process running the script
``stages/<name>.py`` (its first or second argument, as in ``python stages/train.py ...``) belongs
to stage ``<name>``, with all its descendants (search's workers).
Per stage it reports wall time (first to last sighting) and peak resident memory: the largest
sampled sum over the stage's process tree, or the kernel's own high-water mark (VmHWM) of any
one process in it when that is larger. Nothing in the stages changes, so their outputs and
the dvc.lock are those of a plain run. Linux only.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

STAGE = re.compile(r"(?:^|/)stages/(\w+)\.py$")


@dataclass
class StageSeen:
    first: float
    last: float
    peak_mb: float = 0.0


def _processes() -> dict[int, tuple[int, str, float, float]]:
    """pid -> (parent pid, the stage whose script it runs or "", resident MB, high-water resident MB)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:  # the process ended while we looked
            continue
        kb = lambda key: float(fields.get(key, "0 kB").split()[0])  # noqa: E731
        script = next((m.group(1) for m in map(STAGE.search, argv[:2]) if m), "")
        out[int(entry)] = (int(fields["PPid"]), script, kb("VmRSS") / 1024, kb("VmHWM") / 1024)
    return out


def _descendants(root: int, procs: dict) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def watch(command: list[str], interval: float) -> tuple[int, dict[str, StageSeen], float]:
    start = time.monotonic()
    child = subprocess.Popen(command)
    seen: dict[str, StageSeen] = {}
    while True:
        done = child.poll() is not None
        procs = _processes()
        now = time.monotonic() - start
        ours = {pid for pid in _descendants(child.pid, procs) if pid in procs}
        for pid in ours:
            name, parent = procs[pid][1], procs[pid][0]
            if not name or (parent in ours and procs[parent][1]):
                continue  # not a stage, or a forked worker already counted in its stage's tree
            tree = [p for p in _descendants(pid, procs) if p in procs]  # the stage and its workers
            resident = sum(procs[p][2] for p in tree)
            stage = seen.setdefault(name, StageSeen(now, now))
            stage.last = now
            stage.peak_mb = max(stage.peak_mb, resident, *(procs[p][3] for p in tree))
        if done:
            return child.returncode, seen, time.monotonic() - start
        time.sleep(interval)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to watch after --")
    code, seen, total = watch(command, args.interval)
    print(f"\n# {' '.join(command)}\n# exit status {code}, {total / 60:.1f} min in all, "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"{'stage':<10} {'minutes':>8} {'peak resident MB':>17}")
    for name, stage in seen.items():
        print(f"{name:<10} {(stage.last - stage.first) / 60:>8.1f} {stage.peak_mb:>17.0f}")
    print(" ".join(f"{name}_min={(s.last - s.first) / 60:.2f} {name}_peak_mb={s.peak_mb:.0f}" for name, s in seen.items()))
    sys.exit(code)


if __name__ == "__main__":
    main()
