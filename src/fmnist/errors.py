"""The failures the project's commands expect and report as one line (no traceback), and the
one exit-status rule every command follows: the stages, ``fmnist-predict``, ``fmnist-params``,
``fmnist-profiles`` and ``fmnist-team``.

0
    ok.
1
    the work failed: data that cannot be downloaded or that an earlier stage left missing or
    corrupt, a tracking server or store, every search trial, a model that cannot be loaded, a
    team service; and any unexpected error (Python's own status for a traceback).
2
    bad input or usage: the command line (argparse's own status), a params file or profile
    that does not validate, input files named on the command line that cannot be read
    (``fmnist-predict``'s images).
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class ParamsError(ValueError):
    """A params file that does not match the schema."""


class DataError(RuntimeError):
    """Missing or corrupt data; the message names the file and the check that failed."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


class SearchError(RuntimeError):
    """Every search trial failed; the message lists the reasons."""


class StageError(RuntimeError):
    """A stage cannot go on for another reason the message states."""


EXPECTED = (ParamsError, DataError, TrackingError, SearchError, StageError)


def exit_status(err: BaseException) -> int:
    """The rule above for one of the :data:`EXPECTED` failures: bad params are bad input."""
    return EXIT_USAGE if isinstance(err, ParamsError) else EXIT_FAILED
