"""Getting, verifying and preparing the data: real Fashion-MNIST files, real corruption."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from fmnist.data import FILES, check_labels, fetch, load_raw, load_split, read_idx, resize_images, \
    stratified_split
from fmnist.errors import DataError
from fmnist.files import save_array
from helpers import ROOT, env_for


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory, data_source):
    dest = tmp_path_factory.mktemp("raw")
    used = fetch((str(data_source),), dest)
    assert set(used.values()) == {str(data_source)}
    return dest


def copy_of(raw_dir, tmp_path):
    dest = tmp_path / "raw"
    shutil.copytree(raw_dir, dest)
    return dest


def test_fetch_verifies_and_decompresses(raw_dir):
    arrays = load_raw(raw_dir)
    assert arrays["train_images"].shape == (60_000, 28, 28)
    assert arrays["test_labels"].shape == (10_000,)
    assert np.bincount(arrays["train_labels"]).tolist() == [6000] * 10


def test_fetch_falls_back_and_lists_every_source(tmp_path, data_source):
    missing = tmp_path / "nowhere"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        fetch((str(missing), str(empty), "http://127.0.0.1:9/fmnist"), tmp_path / "out", timeout_s=2)
    message = str(err.value)
    assert "\n" not in message
    for source in (str(missing), str(empty), "http://127.0.0.1:9/fmnist"):
        assert source in message
    assert "folder not found" in message and "apt-get install dataset-fashion-mnist" in message
    assert not (tmp_path / "out" / FILES["train_images"].name).exists()
    # the first working source is used after failing ones
    fetch((str(missing), str(data_source)), tmp_path / "ok")
    assert (tmp_path / "ok" / FILES["test_labels"].name).stat().st_size == 10_008


def test_fetch_accepts_a_folder_of_decompressed_files(raw_dir, tmp_path):
    used = fetch((str(raw_dir),), tmp_path / "again")
    assert len(used) == 4


def test_a_flipped_byte_fails_the_checksum(raw_dir, tmp_path):
    raw = copy_of(raw_dir, tmp_path)
    path = raw / FILES["train_images"].name
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{path}: SHA-256 check failed"):
        load_raw(raw)


def test_a_truncated_gzip_source_is_refused(data_source, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(data_source, source)
    gz = source / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:1000])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not a complete gzip file"):
        fetch((str(source),), tmp_path / "out")


def test_a_wrong_magic_number_is_named(raw_dir, tmp_path):
    raw = copy_of(raw_dir, tmp_path)
    path = raw / FILES["test_labels"].name
    data = bytearray(path.read_bytes())
    data[3] = 0x03
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"IDX magic number check failed \(0x00000803, expected 0x00000801\)"):
        read_idx(path, FILES["test_labels"])


def test_labels_out_of_range_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"x.npy: label range check failed \(found 0..12"):
        check_labels(np.array([0, 3, 12]), "x.npy")
    images = np.zeros((3, 28, 28), np.uint8)
    save_array(tmp_path / "train_images.npy", images)
    save_array(tmp_path / "train_labels.npy", np.array([1, 2, 10]))
    with pytest.raises(DataError, match="train_labels.npy: label range check failed"):
        load_split(tmp_path, "train")


def test_a_missing_split_file_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match="train_images.npy: file not found; run the stages"):
        load_split(tmp_path, "train")


def test_stratified_split_is_seeded_and_balanced():
    labels = np.repeat(np.arange(10), 100)
    train, valid = stratified_split(labels, 200, seed=3)
    again, _ = stratified_split(labels, 200, seed=3)
    other, _ = stratified_split(labels, 200, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    assert np.bincount(labels[valid]).tolist() == [20] * 10
    assert len(set(train) & set(valid)) == 0 and len(train) + len(valid) == 1000


def test_resize_keeps_uint8_and_content():
    images = np.zeros((5, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = 255
    out = resize_images(images, 67, chunk=2)
    assert out.dtype == np.uint8 and out.shape == (5, 67, 67)
    assert out[:, 33, 33].tolist() == [255] * 5 and out[:, 2, 2].tolist() == [0] * 5
    flat = np.full((1, 28, 28), 77, np.uint8)
    assert np.all(resize_images(flat, 227) == 77)


def test_a_download_that_fails_on_the_third_file_leaves_the_folder_as_it_was(data_source, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    names = [idx.name for idx in FILES.values()]
    for name in names[:2]:  # the first two files are there, the third is not
        shutil.copy(data_source / f"{name}.gz", source)
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "previous-run.txt").write_text("kept")
    with pytest.raises(DataError, match=f"could not get {names[2]} from any source"):
        fetch((str(source),), dest)
    assert [p.name for p in dest.iterdir()] == ["previous-run.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "src"]  # no temp folder left
    with pytest.raises(DataError, match="no source to get the data from; to get the data offline"):
        fetch((), dest)


def write_split(folder, images, labels, name="train"):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}_images.npy", images)
    np.save(folder / f"{name}_labels.npy", labels)


IMAGES = np.zeros((4, 28, 28), np.uint8)
LABELS = np.array([0, 1, 2, 9])


@pytest.mark.parametrize("images, labels, error", [
    (IMAGES, np.array([0, -1, 2, 3]), r"train_labels.npy: label range check failed \(found -1..3, expected 0..9\)"),
    (IMAGES, LABELS.astype(np.float64), r"train_labels.npy: label type check failed \(float64, expected integers\)"),
    (IMAGES, LABELS[:3], r"train_labels.npy: \(3,\) labels for 4 images"),
    (IMAGES, LABELS.reshape(2, 2), r"train_labels.npy: \(2, 2\) labels for 4 images"),
    (IMAGES[:, :, 0], LABELS, r"train_images.npy: shape check failed \(uint8 \(4, 28\), expected uint8 \(N, S, S\)\)"),
    (IMAGES[:, :, :20], LABELS, r"train_images.npy: shape check failed \(uint8 \(4, 28, 20\)"),
    (IMAGES.astype(np.float32), LABELS, r"train_images.npy: shape check failed \(float32 \(4, 28, 28\)"),
    (IMAGES[:0], LABELS[:0], r"train_images.npy: no images; run the stages before this one again"),
    (IMAGES, np.array(["a", 1, 2, 3], dtype=object), r"train_labels.npy: not a readable .npy array \(Object arrays "
                                                      r"cannot be loaded when allow_pickle=False\)"),
])
@pytest.mark.parametrize("mmap", [False, True])
def test_bad_split_arrays_are_one_line_errors_naming_the_file(tmp_path, images, labels, error, mmap):
    write_split(tmp_path, images, labels)
    with pytest.raises(DataError, match=error) as err:
        load_split(tmp_path, "train", mmap=mmap)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["empty", "truncated", "header only"])
@pytest.mark.parametrize("mmap", [False, True])
def test_empty_or_truncated_npy_files_are_one_line_errors(tmp_path, damage, mmap):
    write_split(tmp_path, np.zeros((50, 28, 28), np.uint8), np.arange(50) % 10)
    path = tmp_path / "train_images.npy"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[:len(data) // 2], "header only": data[:128]}[damage])
    with pytest.raises(DataError, match=rf"^{path}: not a readable .npy array \(.+\)$"):
        load_split(tmp_path, "train", mmap=mmap)


def run_stage(cwd, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / script), *args], cwd=cwd, env=env_for(cwd),
                          capture_output=True, text=True, timeout=300)


def test_resize_on_bad_split_data_fails_in_one_line_and_keeps_its_previous_output(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    split = tmp_path / "data" / "split"
    for name in ("train", "valid", "test"):
        write_split(split, np.full((3, 28, 28), 9, np.uint8), np.array([1, 2, 3]), name)
    done = run_stage(tmp_path, "resize.py", "--src", "data/split", "--out", "data/resized")
    assert done.returncode == 0, done.stderr
    resized = tmp_path / "data" / "resized"
    before = {p.name: p.read_bytes() for p in resized.iterdir()}
    assert len(before) == 6
    np.save(split / "test_labels.npy", np.array([1.0, 2.0, 3.0]))  # the last split is bad: the first two were fine
    failed = run_stage(tmp_path, "resize.py", "--src", "data/split", "--out", "data/resized")
    assert failed.returncode == 1  # bad data is a failure of the work; bad params would be 2
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: data/split/test_labels.npy: label type check failed (float64, expected integers)")
    assert "Traceback" not in failed.stderr
    assert {p.name: p.read_bytes() for p in resized.iterdir()} == before
    assert sorted(p.name for p in resized.parent.iterdir()) == ["resized", "split"]
