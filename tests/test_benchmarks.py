"""benchmarks/: every script runs in a tiny configuration, and reports what its docs say it does.

Each script is run as a user runs it (``python benchmarks/<script>.py``, a fresh process), on a
few images or steps; the figures are not checked (a shared machine's timings are noise), the
output's form and the convolution plans it names are. benchmarks/stages.py's per-stage time and
memory figures are checked against processes of known size.
"""

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist.compute import Compute, resolve_precision
from fmnist.conv import make_plan
from fmnist.files import save_array
from fmnist.model import AlexNetSmall

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
WATCHER = BENCH / "stages.py"
SHARED = "common"  # the helper module the scripts import; not a script itself


def run(script: str, *args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def headline(stdout: str) -> dict[str, str]:
    """The ``key=value`` pairs of the output's last line."""
    return dict(pair.split("=", 1) for pair in stdout.strip().splitlines()[-1].split())


def trained_by_ours(precision: str) -> str:
    """The ``fast paths`` a script names for AlexNetSmall at 67 px under the auto plan: the layers
    the rules table gives to an implementation other than PyTorch's, as the plan makes them."""
    with torch.device("meta"):
        module = AlexNetSmall()
    plan = make_plan(module, Compute("cpu", precision), 67).convolutions("train")
    return ",".join(f"{layer}:{impl}" for layer, impl in plan.items() if impl != "pytorch") or "none"


# -- the scripts' shape --------------------------------------------------------------------------

SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.stem != SHARED)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_each_script_names_its_question_and_imports_no_other_script(script):
    source = script.read_text()
    tree = ast.parse(source)
    first = ast.get_docstring(tree).splitlines()[0]
    assert first.endswith("?"), f"{script.name}: the docstring's first line is not the question it answers: {first!r}"
    assert "sys.path" not in source, f"{script.name}: changes sys.path (the package is installed; common is beside it)"
    siblings = {p.stem for p in BENCH.glob("*.py")} - {SHARED}
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not imported & siblings, f"{script.name} imports another script: {imported & siblings}"


def test_every_script_is_run_by_this_file():
    source = Path(__file__).read_text()
    missing = [p.name for p in SCRIPTS if f'run("{p.name}"' not in source and f'BENCH / "{p.name}"' not in source]
    assert not missing, f"no test in this file runs {missing}"


# -- train.py ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """The split stage's arrays, of random 28 px images: enough for the smallest run of each variant."""
    folder = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    for name, n in (("train", 120), ("valid", 64), ("test", 64)):
        save_array(folder / f"{name}_images.npy", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        save_array(folder / f"{name}_labels.npy", rng.integers(0, 10, n).astype(np.int64))
    return folder


def load_hook():
    spec = importlib.util.spec_from_file_location("generated", ROOT / "docs" / "hooks" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_benchmark_runs_each_variant_on_its_plan_in_the_form_the_docs_read(split, tmp_path):
    out = run("train.py", "--images", "32", "--valid", "16", "--smoke", "--data", str(split))
    assert out.returncode == 0, out.stderr[-3000:]
    # the docs' generated table parses the output as committed in benchmarks/results/train.txt
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "train.txt").write_text(out.stdout)
    table = load_hook().train_benchmark_table(tmp_path)
    precision = resolve_precision("auto", "cpu")
    rows = {line.split(")")[0].lstrip("| ("): line for line in table.splitlines() if line.startswith("| (")}
    assert {"a", "b", "c", "b32", "c32"} <= rows.keys(), table
    # the seed's way computes every layer as PyTorch's own; the stage's and the plain loop by the plan
    assert rows["a"].split("|")[-2].strip() == "none", rows["a"]
    for key, p in (("b", precision), ("c", precision), ("b32", "fp32"), ("c32", "fp32")):
        assert rows[key].split("|")[-2].strip() == trained_by_ours(p).replace(",", ", "), rows[key]
    figures = headline(out.stdout)
    assert figures["precision"] == precision and figures["fast_paths"] == trained_by_ours(precision), figures
    assert float(figures["train_images_per_s"]) > 0 and float(figures["alexnet227_images_per_s"]) > 0, figures


def test_train_benchmark_names_missing_data(tmp_path):
    out = run("train.py", "--smoke", "--data", str(tmp_path / "nothing"))
    assert out.returncode != 0 and "nothing: no train_images.npy" in out.stderr.strip().splitlines()[-1], out.stderr


# -- conv_step.py --------------------------------------------------------------------------------

def test_conv_step_times_each_implementation_that_computes_each_layer():
    out = run("conv_step.py", "--smoke", "--precision", "fp32")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.stdout.splitlines()
            if line.startswith("| c")]
    with torch.device("meta"):
        planned = make_plan(AlexNetSmall(), Compute("cpu", "fp32"), 67).convolutions("train")
    assert {r[0] for r in rows} == set(planned)
    for layer, impl in planned.items():
        mine = {r[2]: r for r in rows if r[0] == layer}
        assert "pytorch" in mine and mine["pytorch"][4] == "1.00x", mine
        assert [r[2] for r in mine.values() if r[6] == "yes"] == [impl], mine  # the rules' choice is marked
    # the transforms compute "same" convolutions only: not conv1 (stride 4)
    assert not {r[2] for r in rows if r[0] == "c1.conv"} & {"winograd", "fourier"}, rows
    assert {r[2] for r in rows if r[0] == "c3.conv"} >= {"pytorch", "im2col-gemm", "winograd", "fourier"}, rows
    assert all(float(v) > 0 for v in headline(out.stdout).values())


def test_conv_step_forces_an_implementation_on_a_layer():
    out = run("conv_step.py", "--smoke", "--precision", "fp32", "--force", "c3.conv=fourier",
              "--force", "c1.conv=im2col-gemm")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    with torch.device("meta"):
        planned = make_plan(AlexNetSmall(), Compute("cpu", "fp32"), 67).convolutions("train")
    forced = planned | {"c1.conv": "im2col-gemm", "c3.conv": "fourier"}
    for name, plan in (("pytorch", dict.fromkeys(planned, "pytorch")), ("auto", planned), ("forced", forced)):
        assert lines[name].endswith("[" + ", ".join(f"{k}:{v}" for k, v in plan.items()) + "]"), lines[name]
    assert set(headline(out.stdout)) == {"fp32.pytorch", "fp32.auto", "fp32.forced"}


@pytest.mark.parametrize("pair, message", [
    ("c9.conv=fourier", "no convolution 'c9.conv'; allowed: c1.conv, c2.conv"),
    ("c3.conv=fft", "no implementation 'fft'; allowed: pytorch,"),
    ("c3.conv", "expected LAYER=IMPLEMENTATION"),
])
def test_conv_step_names_a_bad_force(pair, message):
    out = run("conv_step.py", "--smoke", "--precision", "fp32", "--force", pair)
    assert out.returncode != 0 and message in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]


# -- model_versus.py, profile_step.py, alexnet227.py ---------------------------------------------

def test_model_versus_times_a_commit_against_this_checkout():
    out = run("model_versus.py", "--rev", "HEAD", "--rounds", "1", "--steps", "1", "--batch", "8",
              "--precision", "fp32")
    assert out.returncode == 0, out.stderr[-3000:]
    figures = headline(out.stdout)
    assert figures["precision"] == "fp32" and float(figures["speedup"]) > 0, figures


def test_profile_step_lists_the_operators_of_the_stages_step():
    out = run("profile_step.py", "--batches", "1", "--batch-size", "8", "--rows", "5", "--precision", "fp32")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "batch 8, fp32" in out.stdout and "1 training steps" in out.stdout, out.stdout[:500]
    assert "Self CPU" in out.stdout, out.stdout[-2000:]


def test_alexnet227_cost_scales_its_rates_to_the_profiles(data_source):
    out = run("alexnet227.py", "cost", "--images", "4", "--raw", str(data_source))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "profiles/alexnet227.yaml with AlexNet at 227 px" in out.stdout, out.stdout
    assert "profiles/notebook.yaml with AlexNet at 227 px" in out.stdout, out.stdout
    figures = headline(out.stdout)
    assert float(figures["train_per_s"]) > 0 and float(figures["predict_per_s"]) > 0, figures


def test_search_strategies_compares_the_three_on_one_budget(data_source):
    out = run("search_strategies.py", "--raw", str(data_source), "--train-images", "20", "--valid-images", "20",
              "--test-images", "20", "--epochs", "1", "--seeds", "1", "--threads", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    strategies = [line.split("|")[1].strip() for line in out.stdout.splitlines() if line.startswith("| ")]
    assert {"grid", "halving", "optuna"} <= set(strategies), out.stdout[-2000:]


# -- stages.py -----------------------------------------------------------------------------------

def watch(tmp_path: Path, command: str) -> tuple[int, dict[str, float]]:
    out = subprocess.run([sys.executable, str(WATCHER), "--interval", "0.1", "--", "sh", "-c", command],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    figures = dict(pair.split("=") for pair in out.stdout.strip().splitlines()[-1].split()) if "=" in out.stdout else {}
    return out.returncode, {k: float(v) for k, v in figures.items()}


def test_stage_watcher_reports_each_stage_with_its_workers_memory(tmp_path):
    (tmp_path / "stages").mkdir()
    # a stage whose spawned worker holds 300 MB while the stage itself holds 100 MB
    (tmp_path / "stages" / "big.py").write_text(textwrap.dedent("""
        import multiprocessing as mp, time
        def hold(mb):
            block = bytearray(mb << 20)
            block[::4096] = b"x" * len(block[::4096])
            time.sleep(1.5)
        if __name__ == "__main__":
            worker = mp.get_context("spawn").Process(target=hold, args=(300,))
            worker.start()
            hold(100)
            worker.join()
    """))
    (tmp_path / "stages" / "small.py").write_text("import time; time.sleep(0.5)\n")
    code, figures = watch(tmp_path, "python stages/big.py && python stages/small.py")
    assert code == 0
    assert figures["big_peak_mb"] >= 400, figures  # the stage and its worker, summed
    assert figures["small_peak_mb"] < 100, figures
    assert figures["big_min"] * 60 >= 1.0 and figures["small_min"] * 60 >= 0.3, figures


def test_stage_watcher_passes_on_the_commands_exit_status(tmp_path):
    code, _ = watch(tmp_path, "exit 3")
    assert code == 3
