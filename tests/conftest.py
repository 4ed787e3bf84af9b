"""Shared fixtures (the data, the tiny pipeline run once) and the rule that a skip is no pass in CI.

Under ``CI=true`` (GitHub Actions sets it; ``.ci/run`` sets it itself) a green run means every
test ran and passed as written: a skipped test, an xfail (a marker or a runtime ``pytest.xfail``),
an unexpected pass of an xfail-marked test, and a test left out by ``-k``, ``-m``, ``--deselect``
or ``--ignore`` each fail the run with the reason. Locally a skip stays a skip, and the summary says
how to install what was missing. The helpers are in ``helpers.py``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import yaml

import helpers
from helpers import (BIN, DEBIAN, INSTALL_HINT, ROOT, env_for, make_repo, project_files,  # noqa: F401
                     ran_stages, sh, start_queue)

CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
SKIPS = pytest.StashKey[list]()
LEFT_OUT = pytest.StashKey[list]()  # (what, how many) of the tests a run left out
pytest_plugins = ["helpers_workflow"]  # the DVC workflow modules' shared repo


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SKIPS] = []
    config.stash[LEFT_OUT] = []
    if CI:
        ignored = [*(config.getoption("ignore") or []), *(config.getoption("ignore_glob") or [])]
        if ignored:
            config.stash[LEFT_OUT].append((f"--ignore {' '.join(map(str, ignored))}", None))


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _skipped(config: pytest.Config, report) -> None:
    reason = _reason(report)
    config.stash[SKIPS].append((report.nodeid, reason))
    if CI:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which fails the run: {reason}"


# Fixtures that run `dvc repro` (or build on a repo that did): a test using one is slow, and says so.
SLOW_FIXTURES = {"pipeline", "project", "one_epoch", "queued", "offline_page"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items
                if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError("tests that run dvc repro must be marked slow: " + ", ".join(unmarked))


def _xfail(report) -> None:
    """Under CI=true an xfail, or an xfail-marked test that passed, is a failure: the test says
    the code is not as the suite claims, and a green CI would hide it."""
    reason = report.wasxfail
    del report.wasxfail  # else pytest's summary would still count it as xfailed / xpassed
    if report.skipped:
        report.longrepr = f"xfail under CI=true, which fails the run: {reason or 'no reason given'}"
    else:
        report.longrepr = (f"unexpected pass (XPASS) under CI=true, which fails the run: "
                           f"{reason or 'no reason given'}; remove the xfail marker")
    report.outcome = "failed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if hasattr(report, "wasxfail"):
        if CI:
            _xfail(report)
    elif report.skipped:
        _skipped(item.config, report)


def pytest_deselected(items: list[pytest.Item]) -> None:
    if CI and items:
        items[0].config.stash[LEFT_OUT].append(("deselected (-k, -m, --deselect, --lf)", len(items)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.stash.get(LEFT_OUT, None) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:  # a module that skips itself, e.g. pytest.importorskip
        _skipped(collector.config, report)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    left_out = config.stash[LEFT_OUT]
    if left_out:
        terminalreporter.section("tests left out fail the run under CI=true", red=True)
        for what, n in left_out:
            terminalreporter.line(f"{n} test(s) {what}" if n is not None else what)
    skips = config.stash[SKIPS]
    if not skips:
        return
    reasons = sorted({reason for _, reason in skips})
    if CI:
        terminalreporter.section("skipped tests fail the run under CI=true", red=True)
    else:
        terminalreporter.section("skipped: what to install to run them")
    for reason in reasons:
        n = sum(r == reason for _, r in skips)
        terminalreporter.line(f"{n} test(s): {reason}")
    if not CI:
        terminalreporter.line(f"System packages (Chromium, npm, the Debian data): {INSTALL_HINT}; "
                              f"Python packages: make setup. Under CI=true these skips fail the run.")


def fetch_as_debian_folder(sources: list[str], timeout_s: float, tmp: Path) -> Path:
    """The four files fetched by the download stage's own logic, gzipped in ``tmp/fashion-mnist``
    as the Debian package lays them out (tests copy and corrupt ``.gz`` files)."""
    from fmnist.data import FILES, fetch

    raw, folder = tmp / "raw", tmp / "fashion-mnist"
    fetch(tuple(sources), raw, timeout_s=timeout_s)
    folder.mkdir()
    for idx in FILES.values():
        with gzip.open(folder / f"{idx.name}.gz", "wb", compresslevel=1) as f:
            f.write((raw / idx.name).read_bytes())
    return folder


@pytest.fixture(scope="session")
def data_source(tmp_path_factory) -> Path:
    """A folder with the four Fashion-MNIST ``.gz`` files: the Debian package's, else one filled
    from the sources in ``params.yaml`` (mirror URLs), as the download stage would."""
    from fmnist.data import FILES
    from fmnist.errors import DataError

    if all((DEBIAN / f"{idx.name}.gz").is_file() for idx in FILES.values()):
        folder = DEBIAN
    else:
        download = yaml.safe_load((ROOT / "params.yaml").read_text())["download"]
        try:
            folder = fetch_as_debian_folder(download["sources"], float(download["timeout_s"]),
                                            tmp_path_factory.mktemp("data"))
        except DataError as err:
            pytest.skip(f"no Fashion-MNIST data ({err})")
    helpers.data_folder = folder
    return folder


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, data_source) -> dict:
    """The whole pipeline, run once by ``dvc repro`` on the tiny profile in a temp git repo.

    Shared by several modules: read it, or change a copy (``helpers.copy_repo``), never the repo.
    """
    repo = make_repo(tmp_path_factory.mktemp("pipeline"))
    result = sh(repo, "dvc", "repro")
    return {"repo": repo, "output": result.stdout + result.stderr}
