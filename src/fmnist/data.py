"""Fashion-MNIST files: fetch from an ordered list of sources, verify, parse, split, resize."""

from __future__ import annotations

import gzip
import hashlib
import logging
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fmnist.errors import DataError
from fmnist.files import atomic_dir

log = logging.getLogger(__name__)

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"
OFFLINE_HINT = (f"to get the data offline, install the Debian package dataset-fashion-mnist "
                f"(apt-get install dataset-fashion-mnist, files in {DEBIAN_FOLDER}) or copy the four "
                f"*-ubyte.gz files into a folder and list it in download.sources")


@dataclass(frozen=True)
class IdxFile:
    name: str
    sha256: str  # of the decompressed content: mirrors re-compress, the content is what matters
    shape: tuple[int, ...]

    @property
    def magic(self) -> int:
        return 0x0800 | len(self.shape)  # unsigned bytes, then the number of dimensions


FILES = {
    "train_images": IdxFile("train-images-idx3-ubyte",
                            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                            (60_000, 28, 28)),
    "train_labels": IdxFile("train-labels-idx1-ubyte",
                            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                            (60_000,)),
    "test_images": IdxFile("t10k-images-idx3-ubyte",
                           "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                           (10_000, 28, 28)),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte",
                           "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                           (10_000,)),
}


def _read_source(source: str, idx: IdxFile, timeout_s: float) -> bytes:
    """The decompressed bytes of ``idx`` from one source (a folder or a URL prefix)."""
    if "://" in source:
        url = source.rstrip("/") + "/" + idx.name + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (listed URLs)
                data = response.read()
        except OSError as err:  # URLError, HTTPError and timeouts
            raise DataError(f"{url}: {getattr(err, 'reason', err)}") from None
        return _gunzip(data, url)
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    if (folder / (idx.name + ".gz")).is_file():
        path = folder / (idx.name + ".gz")
        return _gunzip(path.read_bytes(), str(path))
    if (folder / idx.name).is_file():
        return (folder / idx.name).read_bytes()
    raise DataError(f"{folder}: neither {idx.name}.gz nor {idx.name} is there")


def _gunzip(data: bytes, where: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{where}: not a complete gzip file ({err})") from None


def verify(content: bytes, idx: IdxFile, where: str) -> None:
    """Check size and SHA-256 of decompressed content; raise :class:`DataError` naming ``where``."""
    expected_size = 16 if len(idx.shape) == 3 else 8
    expected_size += int(np.prod(idx.shape))
    if len(content) != expected_size:
        raise DataError(f"{where}: size check failed ({len(content)} bytes, expected {expected_size})")
    digest = hashlib.sha256(content).hexdigest()
    if digest != idx.sha256:
        raise DataError(f"{where}: SHA-256 check failed ({digest[:16]}..., expected {idx.sha256[:16]}...)")


def fetch(sources: tuple[str, ...], dest: str | Path, timeout_s: float = 30.0) -> dict[str, str]:
    """Put the four verified, decompressed IDX files into ``dest``; return {file: source used}.

    Every source is tried in order for every file; if a file comes from none of them, one
    :class:`DataError` lists each source with the reason it failed. The files are gathered in a
    temp folder beside ``dest`` that replaces it only once all four are there: a failure leaves
    ``dest`` as it was.
    """
    if not sources:
        raise DataError(f"no source to get the data from; {OFFLINE_HINT}")
    used: dict[str, str] = {}
    with atomic_dir(dest) as tmp:
        for idx in FILES.values():
            failures = []
            for source in sources:
                try:
                    content = _read_source(source, idx, timeout_s)
                    verify(content, idx, f"{source} {idx.name}")
                except (DataError, OSError) as err:  # each names the file or URL it tried
                    failures.append(str(err))
                    continue
                (tmp / idx.name).write_bytes(content)
                used[idx.name] = source
                log.info("%s <- %s", idx.name, source)
                break
            else:
                raise DataError(f"could not get {idx.name} from any source: " + "; ".join(failures)
                                + f"; {OFFLINE_HINT}")
        for path in tmp.iterdir():
            path.chmod(0o644)
    return used


def read_idx(path: str | Path, idx: IdxFile) -> np.ndarray:
    """Parse a decompressed IDX file after checking its checksum, magic number and shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; run the download stage")
    content = path.read_bytes()
    magic = int.from_bytes(content[:4], "big") if len(content) >= 4 else -1
    if magic != idx.magic:
        raise DataError(f"{path}: IDX magic number check failed (0x{magic:08x}, expected 0x{idx.magic:08x})")
    verify(content, idx, str(path))
    ndim = len(idx.shape)
    dims = tuple(int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if dims != idx.shape:
        raise DataError(f"{path}: IDX shape check failed ({dims}, expected {idx.shape})")
    return np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def check_labels(labels: np.ndarray, where: str) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: label type check failed ({labels.dtype}, expected integers)")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(f"{where}: label range check failed (found {labels.min()}..{labels.max()}, "
                        f"expected 0..{len(CLASS_NAMES) - 1})")


def load_raw(raw_dir: str | Path) -> dict[str, np.ndarray]:
    """The four arrays from ``raw_dir``, each verified."""
    raw_dir = Path(raw_dir)
    arrays = {key: read_idx(raw_dir / idx.name, idx) for key, idx in FILES.items()}
    for key in ("train_labels", "test_labels"):
        check_labels(arrays[key], str(raw_dir / FILES[key].name))
    return arrays


def stratified_split(labels: np.ndarray, valid_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation indices, each class in the same proportion in both."""
    from sklearn.model_selection import train_test_split

    train_idx, valid_idx = train_test_split(np.arange(len(labels)), test_size=valid_size,
                                            stratify=labels, random_state=seed)
    return np.sort(train_idx), np.sort(valid_idx)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a stratified subset of ``size`` items (all of them if size is 0)."""
    if size == 0 or size >= len(labels):
        return np.arange(len(labels))
    _, keep = stratified_split(labels, size, seed)
    return keep


FLOAT_CHUNK_BYTES = 256 << 20  # the float copy of one resize block stays under this


def iter_resized(images: np.ndarray, size: int, chunk: int = 4096) -> Iterator[np.ndarray]:
    """Resized uint8 blocks ``(B, size, size)`` of ``images``, in order; bilinear, antialiased.

    At most ``chunk`` images per block, fewer at large sizes, so that the float copy stays small
    (at 227 px, 4096 images would be 844 MB as float32).
    """
    chunk = max(1, min(chunk, FLOAT_CHUNK_BYTES // (size * size * 4)))
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk]))
        x = block.unsqueeze(1).float()  # (B, 1, H, W)
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        yield y.round_().clamp_(0, 255).to(torch.uint8).squeeze(1).numpy()


def resize_images(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """Resize uint8 ``(N, H, W)`` images to ``(N, size, size)`` uint8 in memory."""
    blocks = list(iter_resized(images, size, chunk))
    return np.concatenate(blocks) if blocks else np.zeros((0, size, size), np.uint8)

SPLITS = ("train", "valid", "test")


def load_split(folder: str | Path, name: str, size: int | None = None,
               mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, S, S)`` uint8 and labels ``(N,)`` of one split, checked before use."""
    folder = Path(folder)
    paths = folder / f"{name}_images.npy", folder / f"{name}_labels.npy"
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: file not found; run the stages before this one (dvc repro)")
    images, labels = _read_npy(paths[0], mmap), _read_npy(paths[1], False)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise DataError(f"{paths[0]}: shape check failed ({images.dtype} {images.shape}, "
                        f"expected uint8 (N, S, S))")
    if size is not None and images.shape[1] != size:
        raise DataError(f"{paths[0]}: size check failed ({images.shape[1]} px, expected {size})")
    if len(images) == 0:
        raise DataError(f"{paths[0]}: no images; run the stages before this one again (dvc repro -f)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{paths[1]}: {labels.shape} labels for {len(images)} images")
    check_labels(labels, str(paths[1]))
    return images, labels


def _read_npy(path: Path, mmap: bool) -> np.ndarray:
    """A ``.npy`` file, or a :class:`DataError` naming it: empty, truncated, pickled objects."""
    from fmnist.files import load_array

    try:
        return load_array(path, mmap=mmap)
    except (ValueError, EOFError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a readable .npy array ({reason})") from None
