"""The CI rule of conftest.py: under CI=true a skipped test fails the run with its reason; locally
it stays a skip and the summary says how to install what was missing."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, env_for

PROBE = '''
import pytest

@pytest.fixture
def browser():
    pytest.skip("chromium missing: probe reason")

def test_runs():
    pass

def test_needs_a_browser(browser):
    pass

@pytest.mark.skipif(True, reason="npm missing: probe reason")
def test_marked():
    pass

def test_skips_itself():
    pytest.skip("no data: probe reason")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
'''


@pytest.mark.parametrize("ci", ["true", ""])
def test_skips_fail_the_run_only_under_ci(tmp_path, ci):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = env_for(tmp_path) | {"CI": ci, "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = result.stdout
    if ci:
        assert result.returncode == 1, out
        assert "1 failed, 1 passed, 1 xfailed, 2 errors" in out, out
        assert "skipped under CI=true, which fails the run: chromium missing: probe reason" in out
        assert "skipped under CI=true, which fails the run: npm missing: probe reason" in out
        assert "skipped under CI=true, which fails the run: no data: probe reason" in out
        assert "skipped tests fail the run under CI=true" in out
    else:
        assert result.returncode == 0, out
        assert "1 passed, 3 skipped, 1 xfailed" in out, out
        assert "skipped: what to install to run them" in out
        assert "1 test(s): chromium missing: probe reason" in out
        assert "bash scripts/install-system-deps.sh" in out


def test_a_test_on_the_pipeline_must_be_marked_slow(tmp_path):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text("def test_uses_the_pipeline(pipeline):\n    pass\n")
    env = env_for(tmp_path) | {"PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                             str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "tests that run dvc repro must be marked slow: test_probe.py::test_uses_the_pipeline" in result.stderr


def test_without_the_debian_folder_the_data_comes_from_the_download_logic(data_source, tmp_path):
    from conftest import fetch_as_debian_folder
    from fmnist.data import FILES, fetch

    folder = fetch_as_debian_folder([str(tmp_path / "no-debian-here"), str(data_source)], 5, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{idx.name}.gz" for idx in FILES.values())
    fetch((str(folder),), tmp_path / "again")  # a source the download stage accepts, checksums and all
