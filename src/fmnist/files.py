"""Atomic outputs: a file is written to a temp file in the same folder, a folder to a temp
folder beside it, then renamed into place.

A stage killed or failing at any moment leaves either the previous output or none, never a
truncated file or a half-filled folder that a later stage could read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on success it takes the place of ``path``.

    When the block raises, the temp folder is removed and ``path`` is left as it was. The swap is
    two renames (the old folder aside, the new one in), so only a crash between those two leaves
    no ``path``, never a mix of old and new files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = tmp.with_suffix(".old")
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_array(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` atomically (``.npy`` has no timestamps, so equal arrays give equal bytes)."""
    with atomic_open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


@contextlib.contextmanager
def array_writer(path: str | Path, shape: tuple[int, ...], dtype=np.uint8) -> Iterator[Callable[[np.ndarray], None]]:
    """Write a ``.npy`` file block by block (in order along the first axis), atomically.

    For outputs larger than memory should hold (70k images at 227 px are 3.6 GB): only one block
    is ever in memory. The file has the same bytes ``np.save`` would write for the whole array.
    """
    dtype = np.dtype(dtype)
    expected = int(np.prod(shape))
    written = 0
    with atomic_open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": tuple(shape)})

        def write(block: np.ndarray) -> None:
            nonlocal written
            block = np.ascontiguousarray(block, dtype=dtype)
            f.write(block.tobytes())
            written += block.size

        yield write
        if written != expected:
            raise ValueError(f"{path}: wrote {written} values, expected {expected}")


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` atomically, with the same bytes for the same content.

    ``torch.save`` to a file names the archive's root folder after the file, so saving to a
    random temp name and renaming would change the bytes on every run; a buffer is always
    named "archive".
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getbuffer())


def load_array(path: str | Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
