"""Atomic, reproducible output files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmnist.files import array_writer, atomic_dir, atomic_open, save_array, save_torch, write_json


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"acc": 0.9})
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write('{"acc": 0.1')  # half written when the "kill" comes
            raise RuntimeError("killed")
    assert path.read_text() == '{\n  "acc": 0.9\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_save_torch_bytes_do_not_depend_on_the_file_name(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "config": {"name": "AlexNetSmall"}}
    save_torch(tmp_path / "a.pt", state)
    save_torch(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(loaded["w"], state["w"])


def test_array_writer_writes_what_np_save_writes(tmp_path):
    array = np.random.default_rng(0).integers(0, 255, (10, 5, 5), dtype=np.uint8)
    save_array(tmp_path / "whole.npy", array)
    with array_writer(tmp_path / "blocks.npy", array.shape) as write:
        for start in range(0, 10, 3):
            write(array[start:start + 3])
    assert (tmp_path / "whole.npy").read_bytes() == (tmp_path / "blocks.npy").read_bytes()


def test_array_writer_refuses_a_short_file(tmp_path):
    with pytest.raises(ValueError, match="wrote 25 values, expected 250"):
        with array_writer(tmp_path / "short.npy", (10, 5, 5)) as write:
            write(np.zeros((1, 5, 5), np.uint8))
    assert not list(tmp_path.iterdir())


def test_checkpoints_load_safely(tmp_path):
    """A model file that carries pickled code is refused, not executed."""
    import pickle

    from fmnist.predict import load_model

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    path = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "config": Payload()}, path, pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model(path)


def test_params_yaml_is_loaded_safely(tmp_path):
    from fmnist.errors import ParamsError
    from fmnist.params import load_params

    path = tmp_path / "params.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo this ran']\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def test_atomic_dir_replaces_the_folder_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.npy").write_text("first")
    assert sorted(p.name for p in out.iterdir()) == ["a.npy"]
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.npy").write_text("second")
            (tmp / "b.npy").write_text("second")
            raise RuntimeError("fails on the third file")
    assert sorted(p.name for p in out.iterdir()) == ["a.npy"] and (out / "a.npy").read_text() == "first"
    with atomic_dir(out) as tmp:  # a run that succeeds drops what the previous one wrote
        (tmp / "c.npy").write_text("third")
    assert sorted(p.name for p in out.iterdir()) == ["c.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folders left beside it
    assert oct(out.stat().st_mode & 0o777) == "0o755"
