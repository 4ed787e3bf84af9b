"""What every stage script shares: logging, argument parsing, one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from fmnist.errors import EXPECTED, StageError, exit_status

__all__ = ["StageError", "parser", "quiet_progress_bar_in_logs", "run"]


def parser(doc: str | None, **paths: str) -> argparse.ArgumentParser:
    """An argument parser with one ``--name PATH`` option per path (paths come from dvc.yaml)."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                epilog="Exit status: 0 ok, 1 the work failed, 2 bad params or usage.")
    for name, default in paths.items():
        p.add_argument(f"--{name.replace('_', '-')}", default=default, metavar="PATH")
    p.add_argument("--params", default="params.yaml", metavar="PATH")
    return p


def quiet_progress_bar_in_logs() -> None:
    """A log file, not a terminal: a progress bar line every 20 s is enough."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "20")


def run(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; expected failures become one ``error:`` line and the exit status
    of :mod:`fmnist.errors` (2 for bad params, 1 for a failure of the work)."""
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up as they happen in logs
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main()
    except EXPECTED as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(exit_status(err))
