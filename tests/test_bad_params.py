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
}


@pytest.mark.parametrize("key, value", CASES.values(), ids=CASES.keys())
def test_bad_value_is_one_line_naming_the_key(key, value):
    with pytest.raises(ParamsError) as err:
        parse_params(with_value(key, value))
    message = str(err.value)
    assert "\n" not in message and message.startswith("params.yaml: ")
    assert key in message, message
    assert "allowed" in message or "must be a mapping" in message, message


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
