"""The strict params loader: every bad value stops with one line naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import ROOT
from fmnist.errors import ParamsError
from fmnist.model import min_input_size
from fmnist.params import MIN_INPUT_SIZE, load_params, parse_params


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_params_load(raw):
    params = parse_params(raw)
    assert params.model.name == "AlexNetSmall"
    assert params.resize.size == 67
    assert params.search.grid.lr == tuple(raw["search"]["grid"]["lr"])


def test_min_input_size_matches_the_model():
    assert MIN_INPUT_SIZE == min_input_size() == 67


@pytest.mark.parametrize("edit, key, allowed", [
    (lambda p: p.update(trian=p.pop("train")), "'trian'", "allowed: download, split"),
    (lambda p: p["train"].update(lrr=0.1), "'train.lrr'", "allowed: use_search, lr"),
    (lambda p: p["train"].update(lr="fast"), "train.lr='fast'", "a number > 0"),
    (lambda p: p["train"].update(lr=-0.1), "train.lr=-0.1", "a number > 0 and <= 1.0"),
    (lambda p: p["train"].update(lr=3.0), "train.lr=3.0", "<= 1.0"),
    (lambda p: p["train"].update(max_epochs=0), "train.max_epochs=0", "an integer >= 1"),
    (lambda p: p["train"].update(batch_size=2.5), "train.batch_size=2.5", "an integer"),
    (lambda p: p["train"].update(use_search="yes"), "train.use_search='yes'", "true or false"),
    (lambda p: p["split"].update(valid_size=-5), "split.valid_size=-5", ">= 10"),
    (lambda p: p["search"]["grid"].update(lr=[]), "search.grid.lr=[]", "a non-empty list"),
    (lambda p: p["search"]["grid"].update(dropout=[0.5, 1.5]), "search.grid.dropout[1]=1.5", "<= 0.95"),
    (lambda p: p["search"].update(strategy="random"), "search.strategy='random'", "one of 'grid', 'halving'"),
    (lambda p: p["model"].update(name="VGG"), "model.name='VGG'", "'AlexNetSmall', 'AlexNet'"),
    (lambda p: p["model"].update(precision="fp16"), "model.precision='fp16'", "one of 'auto', 'fp32', 'bf16'"),
    (lambda p: p["resize"].update(size=50), "resize.size=50", "allowed: 67 or more"),
    (lambda p: p["train"].update(batch_size=60_000), "train.batch_size=60000", "allowed: 1..55000"),
    (lambda p: p["split"].update(train_size=500), "search.subset=8000", "up to 500"),
    (lambda p: p["evaluate"].pop("batch_size"), "'evaluate.batch_size'", "missing key"),
])
def test_bad_params_name_the_key(raw, edit, key, allowed):
    bad = copy.deepcopy(raw)
    edit(bad)
    with pytest.raises(ParamsError) as err:
        parse_params(bad)
    message = str(err.value)
    assert "\n" not in message
    assert key in message
    assert allowed in message


def test_bad_yaml_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ParamsError, match=r"not valid YAML at line \d"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_grid_follows_parameter_grid(raw):
    grid = parse_params(raw).search.grid
    combos = grid.combinations()
    assert len(combos) == len(grid.lr) * len(grid.batch_size) * len(grid.dropout)
    assert {tuple(sorted(c)) for c in combos} == {("batch_size", "dropout", "lr")}
