"""Bad params that a user can write, each one line naming the key (issue 14's list).

The wording belongs to ``fmnist.params`` (tests/test_params.py pins it); these check what every
such error must have: a ParamsError, one line, the key named, and what is allowed.
"""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from fmnist.errors import ParamsError
from fmnist.params import load_params, parse_params
from helpers import ROOT

BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(path: str, value):
    raw = copy.deepcopy(BASE)
    *sections, key = path.split(".")
    node = raw
    for section in sections:
        node = node[section]
    node[key] = value
    return raw


CASES = {
    "a section that is a scalar": ("train", 5),
    "a section that is a list": ("search", [1, 2]),
    "a section that is null": ("model", None),
    "a null value": ("train.lr", None),
    "inf": ("train.lr", math.inf),
    "nan": ("search.grid.lr", [0.001, math.nan]),
    "inf in a timeout": ("download.timeout_s", math.inf),
    "a boolean where an integer goes": ("train.max_epochs", True),
    "a boolean in an integer grid": ("search.grid.batch_size", [False]),
    "train_size larger than the data": ("split.train_size", 59_000),
    "an empty source list": ("download.sources", []),
    "a null source list": ("download.sources", None),
    "a scheduler without a port": ("search.scheduler", "tcp://scheduler"),
    "a scheduler with another scheme": ("search.scheduler", "http://10.0.0.1:8786"),
    "a scheduler port out of range": ("search.scheduler", "tcp://10.0.0.1:99999"),
    "an empty experiment name": ("tracking.experiment", ""),
    "a blank experiment name": ("tracking.experiment", "   "),
    "an optuna lr range upside down": ("search.optuna.lr", [0.01, 0.001]),
    "an optuna lr range from 0": ("search.optuna.lr", [0.0, 0.01]),
    "an optuna lr range of three": ("search.optuna.lr", [0.0001, 0.001, 0.01]),
    "an optuna lr range as a string": ("search.optuna.lr", "0.0001..0.01"),
    "an optuna dropout range of one point": ("search.optuna.dropout", [0.3, 0.3]),
    "an optuna dropout past 0.95": ("search.optuna.dropout", [0.1, 0.99]),
    "no optuna batch sizes": ("search.optuna.batch_size", []),
    "an optuna batch size of 0": ("search.optuna.batch_size", [0, 64]),
    "an unknown optuna sampler": ("search.optuna.sampler", "cmaes"),
    "an unknown optuna pruner": ("search.optuna.pruner", "median"),
    "a negative optuna budget": ("search.optuna.budget", -1),
    "an optuna budget as a float": ("search.optuna.budget", 1e6),
    "optuna min_epochs 0": ("search.optuna.min_epochs", 0),
    "negative optuna startup trials": ("search.optuna.startup_trials", -1),
    "an unknown optuna key": ("search.optuna.n_trials", 20),
}


@pytest.mark.parametrize("key, value", CASES.values(), ids=CASES.keys())
def test_bad_value_is_one_line_naming_the_key(key, value):
    with pytest.raises(ParamsError) as err:
        parse_params(with_value(key, value))
    message = str(err.value)
    assert "\n" not in message and message.startswith("params.yaml: ")
    assert key in message, message
    assert "allowed" in message or "must be a mapping" in message, message


def optuna_with(**search):
    raw = copy.deepcopy(BASE)
    raw["search"].update(strategy="optuna", **search)
    return raw


@pytest.mark.parametrize("search, key", [
    ({"cv": 3}, "search.cv"),  # the pruner reads one validation curve per epoch
    ({"epochs": 2, "optuna": {"min_epochs": 3}}, "search.optuna.min_epochs"),
    ({"subset": 300, "optuna": {"batch_size": [64, 512]}}, "search.optuna.batch_size"),
], ids=["k-fold", "min_epochs past epochs", "batch size past the subset"])
def test_optuna_settings_that_do_not_fit_are_one_line(search, key):
    with pytest.raises(ParamsError) as err:
        parse_params(optuna_with(**search))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"params.yaml: {key}=") and "allowed" in message, message
    parse_params(copy.deepcopy(BASE) | {"search": BASE["search"] | search})  # the same values pass with grid


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "[1, 2]\n", "just words\n"])
def test_a_file_without_sections_is_one_line(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert "\n" not in message and "download" in message, message


def test_parse_params_refuses_nothing_at_all():
    with pytest.raises(ParamsError):
        parse_params(None)
    with pytest.raises(ParamsError, match="download"):
        parse_params({})
