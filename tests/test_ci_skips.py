"""The CI rule of conftest.py: under CI=true a skipped test, an xfail, an unexpected pass and a
test left out fail the run with the reason; locally a skip stays a skip and the summary says how to
install what was missing. And what makes CI run everything: ``.ci/run`` sets CI=true itself, the
README's test command deselects nothing, the system-package script fails when it cannot install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers import DEBIAN, ROOT, env_for

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

def test_gives_up_at_run_time():
    pytest.xfail("not supported here: probe reason")

@pytest.mark.xfail(reason="was broken once")
def test_marked_broken_but_passes():
    pass
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
        assert "4 failed, 1 passed, 2 errors" in out, out
        assert "skipped under CI=true, which fails the run: chromium missing: probe reason" in out
        assert "skipped under CI=true, which fails the run: npm missing: probe reason" in out
        assert "skipped under CI=true, which fails the run: no data: probe reason" in out
        assert "skipped tests fail the run under CI=true" in out
        assert "xfail under CI=true, which fails the run: a known bug" in out
        assert "xfail under CI=true, which fails the run: not supported here: probe reason" in out
        assert ("unexpected pass (XPASS) under CI=true, which fails the run: was broken once; "
                "remove the xfail marker") in out
        assert "xfailed" not in out and "xpassed" not in out, out
    else:
        assert result.returncode == 0, out
        assert "1 passed, 3 skipped, 2 xfailed, 1 xpassed" in out, out
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


LEFT_OUT_PROBE = '''
import pytest

def test_one():
    pass

@pytest.mark.slow
def test_two():
    pass
'''


@pytest.mark.parametrize("args", [["-k", "one"], ["-m", "not slow"], ["--deselect", "test_probe.py::test_two"],
                                  ["--ignore", "test_other.py"]], ids=["k", "m", "deselect", "ignore"])
def test_a_test_left_out_fails_the_run_only_under_ci(tmp_path, args):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(LEFT_OUT_PROBE)
    (tmp_path / "test_other.py").write_text("def test_three():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    runs = {}
    for ci in ("true", ""):
        env = env_for(tmp_path) | {"CI": ci, "PYTHONPATH": str(ROOT / "tests")}
        runs[ci] = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert runs[""].returncode == 0, runs[""].stdout
    assert "left out" not in runs[""].stdout
    out = runs["true"].stdout
    assert runs["true"].returncode == 1, out
    assert "tests left out fail the run under CI=true" in out
    left = {"-k": 2, "-m": 1, "--deselect": 1}.get(args[0])  # -k one: test_two and test_three
    expected = f"{left} test(s) deselected" if left else "--ignore test_other.py"
    assert expected in out, out
    all_run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path,
                             env=env_for(tmp_path) | {"CI": "true", "PYTHONPATH": str(ROOT / "tests")},
                             capture_output=True, text=True, timeout=120)
    assert all_run.returncode == 0 and "3 passed" in all_run.stdout, all_run.stdout  # the control


LEAVE_OUT = ("-k", "-m", "--deselect", "--ignore", "--ignore-glob", "--lf", "--last-failed", "--sw",
             "--stepwise", "--runxfail")


def leaving_out(args: list[str]) -> list[str]:
    return [a for a in args if a.split("=")[0] in LEAVE_OUT or a.startswith(("-k", "-m"))]


def test_the_readme_test_command_runs_the_whole_suite():
    import shlex
    import tomllib

    readme = (ROOT / "README.md").read_text()
    assert any(line.split("#")[0].strip() == "make test" for line in readme.splitlines()), \
        "README.md names no `make test` line"
    env = {k: v for k, v in env_for(ROOT).items() if k not in ("PYTEST_ARGS", "PYTEST_ADDOPTS", "MAKEFLAGS")}
    dry = subprocess.run(["make", "-n", "--no-print-directory", "test"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    commands = [shlex.split(line) for line in dry.splitlines() if "pytest" in line.split()]
    assert len(commands) == 1, dry
    args = commands[0][commands[0].index("pytest") + 1:]
    assert not leaving_out(args), f"make test runs pytest {' '.join(args)}"
    assert not [a for a in args if not a.startswith("-")], f"make test names a subset: {args}"
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert not leaving_out(shlex.split(options.get("addopts", ""))), options["addopts"]
    assert options.get("testpaths") == ["tests"]
    assert "collect_ignore" not in (ROOT / "tests" / "conftest.py").read_text()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "export CI=true" in ci and "make test" in ci
    assert ci.index("export CI=true") < ci.index("make test")
    assert not any("PYTEST" in line for line in ci)
    # the check itself: a deselecting command line is caught
    assert leaving_out(["-q", "-m", "not slow"]) and leaving_out(["-knot slow"]) and leaving_out(["--deselect=x"])


def install_script(tmp_path, tools: dict[str, str]) -> subprocess.CompletedProcess:
    """Run scripts/install-system-deps.sh with a PATH of the basic tools and ``tools`` (name ->
    script), so that chromium, npm and apt-get are there only when given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "dirname", "ls", "id", "mktemp", "rm", "grep", "tail", "env"):
        (bin_dir / name).symlink_to(shutil.which(name))
    for name, text in tools.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + text + "\n")
        (bin_dir / name).chmod(0o755)
    if os.geteuid() != 0:  # the script asks sudo; let it run the given apt-get
        (bin_dir / "sudo").write_text('#!/bin/bash\nexec "$@"\n')
        (bin_dir / "sudo").chmod(0o755)
    return subprocess.run([str(bin_dir / "bash"), str(ROOT / "scripts/install-system-deps.sh")],
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, capture_output=True, text=True,
                          timeout=60)


def the_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    if DEBIAN.is_dir():  # else ensure-data-source.sh notes first that the mirrors will be tried
        assert len(lines) == 1, result.stderr
    assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, result.stderr
    return lines[-1]


def test_install_script_fails_in_one_line_without_apt_get(tmp_path):
    line = the_error_line(install_script(tmp_path, {}))
    assert line.startswith("error: chromium fonts-dejavu-core npm")
    assert line.endswith("needed and apt-get is not available to install them; "
                         "install them with this system's package manager")


def test_install_script_fails_in_one_line_when_apt_get_fails(tmp_path):
    apt_get = 'if [ "$1" = update ]; then exit 0; fi\necho "E: Unable to locate package chromium" >&2\nexit 100'
    line = the_error_line(install_script(tmp_path, {"apt-get": apt_get}))
    assert line.startswith("error: apt-get install failed (exit 100) installing chromium fonts-dejavu-core npm")
    assert line.endswith(": E: Unable to locate package chromium")


def test_install_script_needs_nothing_when_all_is_there(tmp_path):
    result = install_script(tmp_path, {"chromium": "", "npm": "", "apt-get": "exit 100"})  # apt-get not asked
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr
