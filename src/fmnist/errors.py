"""The failures a stage expects and reports as one line (no traceback), exit status 2."""


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
