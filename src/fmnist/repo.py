"""The project on disk: its root (also from inside DVC's experiment copies), its git state, the
script a process runs, and file digests. No MLflow here: :mod:`fmnist.tracking` turns these into
run tags, :mod:`fmnist.checkpoint` into a checkpoint's fingerprint."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path


def project_root(start: str | Path | None = None) -> Path:
    """The user's project root: the folder with ``dvc.yaml`` and ``.dvc/``, seen through DVC's
    temporary experiment copies (``<root>/.dvc/tmp/exps/<dir>/...``)."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if folder.name == "exps" and folder.parent.name == "tmp" and folder.parent.parent.name == ".dvc":
            return folder.parent.parent.parent
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / ".dvc").is_dir():
            return folder
    return here


@dataclasses.dataclass(frozen=True)
class GitState:
    """The commit checked out ("" outside git), whether code or params differ from it, and the
    ``origin`` remote's URL ("" when there is none)."""

    commit: str
    dirty: bool
    remote: str


def git_state(root: Path) -> GitState:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    # dvc.lock and metrics are rewritten by the run itself; only code and params make it dirty.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock", ":!metrics")
    return GitState(commit=git("rev-parse", "HEAD"), dirty=bool(dirty), remote=git("remote", "get-url", "origin"))


def entry_script(root: Path) -> str | None:
    """The script this process runs (``sys.argv[0]``), relative to ``root`` when inside it."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if not (script and script.is_file()):
        return None
    with contextlib.suppress(ValueError):
        script = script.relative_to(root.resolve())
    return script.as_posix()


def file_digest(path: str | Path, pattern: str = "*") -> str:
    """MD5 of a file, or of a folder's files matching ``pattern``, in name order."""
    path = Path(path)
    h = hashlib.md5()
    files = sorted(p for p in path.rglob(pattern) if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
