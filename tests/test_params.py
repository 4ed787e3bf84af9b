"""The strict params loader: every bad value stops with one line naming the key; HyperParams; the
JSON Schema published for editors."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import subprocess
import sys

import jsonschema
import pytest
import yaml
from sklearn.model_selection import ParameterGrid

from conftest import ROOT
from fmnist.errors import ParamsError
from fmnist.model import min_input_size
from fmnist.params import MIN_INPUT_SIZE, GridParams, HyperParams, load_params, parse_params, to_dict
from fmnist.params_schema import SCHEMA_FILE, json_schema, schema_text
from fmnist.profiles import load_profile, merge


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
    message = bad_line(raw, edit)
    assert key in message
    assert allowed in message


def test_model_conv_chooses_how_the_convolutions_compute(raw):
    assert parse_params(raw).model.conv == "auto"
    raw["model"]["conv"] = "pytorch"
    assert parse_params(raw).model.conv == "pytorch"
    del raw["model"]["conv"]
    assert parse_params(raw).model.conv == "auto"  # a params file from before the key
    assert bad_line(raw, lambda p: p["model"].update(conv="fast")) == (
        "params.yaml: model.conv='fast' is not allowed; allowed: one of 'auto', 'pytorch'")
    assert "model.conv=true is not allowed" in bad_line(raw, lambda p: p["model"].update(conv=True))


def test_bad_yaml_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ParamsError, match=r"not valid YAML at line \d"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_grid_follows_parameter_grid(raw):
    grid = GridParams(lr=(0.003, 0.001, 0.0003), batch_size=(64, 256), dropout=(0.5, 0.2, 0.0))
    combos = grid.combinations()
    assert all(isinstance(c, HyperParams) for c in combos)
    expected = ParameterGrid({"lr": list(grid.lr), "batch_size": list(grid.batch_size), "dropout": list(grid.dropout)})
    assert [c.as_dict() for c in combos] == [dict(p) for p in expected]  # the same order, not just the same set
    assert [c.as_dict() for c in parse_params(raw).search.grid.combinations()] == [
        {"lr": 0.001, "batch_size": 256, "dropout": 0.5}, {"lr": 0.0005, "batch_size": 256, "dropout": 0.5},
        {"lr": 0.001, "batch_size": 256, "dropout": 0.3}, {"lr": 0.0005, "batch_size": 256, "dropout": 0.3}]


def bad_line(raw: dict, edit) -> str:
    bad = copy.deepcopy(raw)
    edit(bad)
    with pytest.raises(ParamsError) as err:
        parse_params(bad)
    message = str(err.value)
    assert "\n" not in message
    return message


# Issue 14's bad inputs: each a one-line error naming the key and what is allowed.
@pytest.mark.parametrize("edit, expected", [
    # a section that is a scalar, a list or empty
    (lambda p: p.update(train=5), "params.yaml: train must be a mapping with keys use_search, lr,"),
    (lambda p: p.update(train=[0.001, 256]), "params.yaml: train must be a mapping with keys use_search, lr,"),
    (lambda p: p.update(search=None), "params.yaml: search must be a mapping with keys strategy, grid,"),
    (lambda p: p["search"].update(grid="lr"), "params.yaml: search.grid must be a mapping with keys lr, batch_size"),
    # null values, also where a default would exist
    (lambda p: p["train"].update(lr=None), "params.yaml: train.lr=null is not allowed; allowed: a number > 0"),
    (lambda p: p["search"].update(scheduler=None), "params.yaml: search.scheduler=null is not allowed"),
    (lambda p: p["search"]["grid"].update(dropout=[0.5, None]), "search.grid.dropout[1]=null is not allowed"),
    # inf and nan (YAML's .inf/.nan), even where the range has no upper bound
    (lambda p: p["train"].update(lr=math.inf), "params.yaml: train.lr=.inf is not allowed; allowed: a number > 0"),
    (lambda p: p["download"].update(timeout_s=-math.inf), "download.timeout_s=-.inf is not allowed"),
    (lambda p: p["download"].update(timeout_s=math.nan), "download.timeout_s=.nan is not allowed"),
    # booleans where integers (or numbers) go, strings where numbers go
    (lambda p: p["train"].update(batch_size=True), "train.batch_size=true is not allowed; allowed: an integer >= 1"),
    (lambda p: p["search"].update(n_jobs=False), "search.n_jobs=false is not allowed; allowed: an integer"),
    (lambda p: p["search"]["grid"].update(batch_size=[True]), "search.grid.batch_size=[true] is not allowed"),
    (lambda p: p["train"].update(dropout=False), "train.dropout=false is not allowed; allowed: a number >= 0.0"),
    (lambda p: p["train"].update(batch_size="256"), "train.batch_size='256' is not allowed; allowed: an integer"),
    (lambda p: p["train"].update(augment=1), "train.augment=1 is not allowed; allowed: true or false"),
    # train_size larger than the data, batch sizes larger than what a trial trains on
    (lambda p: p["split"].update(train_size=59_000), "split.train_size=59000 is more than the 55000 images left"),
    (lambda p: p["search"]["grid"].update(batch_size=[256, 9000]),
     "search.grid.batch_size=9000 is larger than the 8000 training images of a trial"),
    # an empty source list, an empty source
    (lambda p: p["download"].update(sources=[]), "download.sources=[] is not allowed; allowed: a non-empty list"),
    (lambda p: p["download"].update(sources=["", "x"]), "download.sources[0]='' is not allowed; allowed: a non-empty"),
    (lambda p: p["download"].update(sources="/data"), "download.sources='/data' is not allowed"),
    # a malformed Dask scheduler address
    (lambda p: p["search"].update(scheduler="10.0.0.5"), "search.scheduler='10.0.0.5' is not allowed; allowed: "
                                                         '"" (this machine) or a Dask scheduler address'),
    (lambda p: p["search"].update(scheduler="tcp://10.0.0.5"), "search.scheduler='tcp://10.0.0.5' is not allowed"),
    (lambda p: p["search"].update(scheduler="tcp://host:99999"), "search.scheduler='tcp://host:99999'"),
    (lambda p: p["search"].update(scheduler="http://host:8786"), "search.scheduler='http://host:8786'"),
    (lambda p: p["search"].update(scheduler="tcp://host:8786/x"), "search.scheduler='tcp://host:8786/x'"),
    (lambda p: p["search"].update(scheduler=8786), "search.scheduler=8786 is not allowed"),
    # an empty experiment name
    (lambda p: p["tracking"].update(experiment=""), "tracking.experiment='' is not allowed; allowed: a non-empty"),
    (lambda p: p["tracking"].update(experiment="  "), "tracking.experiment='  ' is not allowed"),
    (lambda p: p["tracking"].update(experiment=None), "tracking.experiment=null is not allowed"),
    # the cross-field rule and the renamed head
    (lambda p: p["search"].update(cv=1), "search.cv=1 is not allowed; allowed: 0 (the validation split) or 2 to 20"),
    (lambda p: p["model"].update(head="seed"),
     "model.head='seed' is not allowed; allowed: one of 'linear', 'notebook'"),
    # keys YAML reads as numbers are unknown keys, not list indices
    (lambda p: p["train"].update({1: 2}), "params.yaml: unknown key 'train.1'; allowed: use_search, lr"),
])
def test_bad_inputs_name_the_key(raw, edit, expected):
    assert expected in bad_line(raw, edit)


def test_the_first_problem_in_file_order_is_reported(raw):
    """A typo is reported before the values after it; sections in the file's order."""
    def edit(p):
        p["train"].update(lr=-1, epochs=3)
        p["split"].update(seed="x")
    assert bad_line(raw, edit).startswith("params.yaml: split.seed='x' is not allowed")
    assert "unknown key 'train.epochs'" in bad_line(raw, lambda p: p["train"].update(lr=-1, epochs=3))


@pytest.mark.parametrize("address", ["", "tcp://10.0.0.5:8786", "10.0.0.5:8786", "localhost:8786",
                                     "tcp://scheduler.example.org:1", "tcp://[::1]:8786", "[fe80::1]:65535"])
def test_dask_addresses_that_work(raw, address):
    raw["search"]["scheduler"] = address
    assert parse_params(raw).search.scheduler == address


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file_is_one_line(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=r"params.yaml: empty; expected the sections download, split, .*tracking$"):
        load_params(path)


@pytest.mark.parametrize("text, got", [("- 1\n- 2\n", "got [1, 2]"), ("5\n", "got 5"), ("train\n", "got 'train'")])
def test_top_level_not_a_mapping(tmp_path, text, got):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value) == ("params.yaml: the top level must be a mapping with keys download, split, resize, model, "
                              f"search, train, evaluate, tracking, {got}")


def test_cli_checks_a_file_and_exits_nonzero(tmp_path, raw):
    raw["train"]["lr"] = -0.5
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "fmnist.params_cli", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "error: params.yaml: train.lr=-0.5 is not allowed; allowed: a number > 0 and <= 1.0\n"


def test_sections_are_frozen_and_to_dict_is_plain(raw):
    params = parse_params(raw)
    with pytest.raises(ValueError):
        params.train.lr = 0.1
    # What stages log and fingerprint: the file's values, in its order, lists not tuples, floats as floats.
    assert to_dict(params.train) == raw["train"] and list(to_dict(params.train)) == list(raw["train"])
    assert to_dict(params.search)["grid"] == raw["search"]["grid"]
    assert to_dict(params.download)["timeout_s"] == 30.0 and isinstance(to_dict(params.download)["timeout_s"], float)
    assert to_dict(params.download)["sources"] == raw["download"]["sources"]


# -- HyperParams ----------------------------------------------------------------------------------

def test_hyper_params_of_the_train_section(raw):
    hp = parse_params(raw).train.hyper_params()
    assert hp == HyperParams(lr=0.001, batch_size=256, dropout=0.5)
    assert HyperParams.names() == ("lr", "batch_size", "dropout") == tuple(f.name for f in dataclasses.fields(hp))
    assert hp.as_dict() == {"lr": 0.001, "batch_size": 256, "dropout": 0.5}
    assert list(hp.as_dict()) == ["lr", "batch_size", "dropout"]
    assert hp.label() == "lr=0.001 batch_size=256 dropout=0.5"
    assert HyperParams(0.0005, 2048, 0.0).label() == "lr=0.0005 batch_size=2048 dropout=0"
    assert len({hp, HyperParams(0.001, 256, 0.5)}) == 1  # hashable, compared by value
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.lr = 0.1
    with pytest.raises(ValueError):
        HyperParams(lr=2.0, batch_size=256, dropout=0.5)


def test_hyper_params_from_best_params_json():
    best = {"lr": 0.0005, "batch_size": 128, "dropout": 0.3, "valid_acc": 0.91, "epochs": 2, "round": 0}
    assert HyperParams.from_dict(best, "best_params.json") == HyperParams(0.0005, 128, 0.3)
    assert HyperParams.from_dict({"lr": 1, "batch_size": 8, "dropout": 0}).as_dict() == {
        "lr": 1.0, "batch_size": 8, "dropout": 0.0}  # JSON may write whole numbers without a point


@pytest.mark.parametrize("data, message", [
    ({"lr": "0.001", "batch_size": 256, "dropout": 0.5},
     "best_params.json: lr='0.001' is not allowed; allowed: a number > 0 and <= 1.0"),
    ({"lr": 0.001, "batch_size": 256.0, "dropout": 0.5},
     "best_params.json: batch_size=256.0 is not allowed; allowed: an integer >= 1 and <= 65536"),
    ({"lr": 0.001, "batch_size": True, "dropout": 0.5}, "best_params.json: batch_size=true is not allowed"),
    ({"lr": 0.001, "batch_size": 256, "dropout": None}, "best_params.json: dropout=null is not allowed"),
    ({"lr": 0.001, "batch_size": 256, "dropout": 0.99}, "best_params.json: dropout=0.99 is not allowed; allowed: "
                                                        "a number >= 0.0 and <= 0.95"),
    ({"lr": 0.001, "dropout": 0.5}, "best_params.json: missing key 'batch_size'; expected an integer >= 1"),
    ([0.001, 256, 0.5], "best_params.json: must be a mapping with keys lr, batch_size, dropout, got [0.001, 256, 0.5]"),
])
def test_bad_hyper_params_name_the_file_and_key(data, message):
    with pytest.raises(ParamsError) as err:
        HyperParams.from_dict(data, "best_params.json")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# -- profiles -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
def test_every_profile_gives_valid_params(raw, name):
    parse_params(merge(raw, load_profile(name, ROOT)))


def test_the_notebook_profile_is_named_after_the_notebook(raw):
    assert not (ROOT / "profiles" / "seed.yaml").exists()
    params = parse_params(merge(raw, load_profile("notebook", ROOT)))
    assert len(params.search.grid.combinations()) == 45
    params = parse_params(merge(raw, {"model": {"head": "notebook"}}))
    assert params.model.head == "notebook"


# -- the JSON Schema ------------------------------------------------------------------------------

def test_schema_file_is_current():
    path = ROOT / SCHEMA_FILE
    assert path.read_text() == schema_text(), (f"{SCHEMA_FILE} is stale; regenerate it: "
                                               f"fmnist-params --schema > {SCHEMA_FILE}")


def test_params_yaml_names_the_schema():
    first = (ROOT / "params.yaml").read_text().splitlines()[0]
    assert first == f"# yaml-language-server: $schema={SCHEMA_FILE}"


def test_schema_accepts_the_defaults_and_rejects_what_the_loader_rejects(raw):
    schema = json.loads((ROOT / SCHEMA_FILE).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    # 2020-12 is what pydantic writes; editors whose language server knows only draft 7 read it the same.
    validators = [jsonschema.Draft202012Validator(schema), jsonschema.Draft7Validator(schema)]
    for validator in validators:
        validator.validate(raw)
        for name in ("notebook", "tiny"):
            validator.validate(merge(raw, load_profile(name, ROOT)))
    edits = [lambda p: p["train"].update(lrr=0.1), lambda p: p["train"].update(lr=-0.5),
             lambda p: p["train"].update(batch_size="256"), lambda p: p["model"].update(head="seed"),
             lambda p: p["search"]["grid"].update(lr=[]), lambda p: p["search"].update(scheduler="10.0.0.5"),
             lambda p: p["search"].update(cv=1), lambda p: p["tracking"].update(experiment=""),
             lambda p: p["download"].update(sources=[]), lambda p: p.pop("evaluate")]
    for edit in edits:
        bad = copy.deepcopy(raw)
        edit(bad)
        with pytest.raises(ParamsError):
            parse_params(bad)
        assert not any(validator.is_valid(bad) for validator in validators), bad


def test_schema_describes_every_key():
    schema = json_schema()
    for name, section in schema["$defs"].items():
        assert section.get("description"), name
        for key, prop in section["properties"].items():
            assert prop.get("description") or "$ref" in prop, f"{name}.{key}"


def test_loading_params_imports_no_training_code():
    code = ("import sys, fmnist.params; "
            "print(sorted(m for m in ('torch', 'sklearn', 'skorch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
