"""Where trials run: in this process, in local worker processes (joblib's loky), or on a Dask cluster."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Callable, Iterator

from fmnist.errors import SearchError

if TYPE_CHECKING:
    from fmnist.search.trial import SearchData


def _cores() -> int:
    return os.cpu_count() or 1


def dask_threads(client) -> dict[str, int]:
    """Torch threads per Dask worker: its machine's cores over the trials that machine runs at once."""
    from collections import Counter

    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(_cores)
    per_host = Counter()
    for info in workers.values():
        per_host[info["host"]] += info["nthreads"]
    return {addr: max(1, cores.get(addr, 1) // per_host[info["host"]]) for addr, info in workers.items()}


@contextlib.contextmanager
def executor(n_jobs: int, scheduler: str, data: SearchData,
             connect_timeout_s: float = 30) -> Iterator[tuple[Callable, int | dict[str, int], int]]:
    """Yield ``(parallel, threads, slots)``: a joblib ``Parallel`` that yields results as trials
    finish, the torch threads per trial, and how many trials run at once.

    ``scheduler`` set: the trials run on that Dask cluster, one per worker thread (``n_jobs`` is
    then the cluster's to decide), and ``data`` goes to every worker once. Else ``n_jobs``
    processes on this machine (0: one per core); 1 runs the trials in this process.
    """
    from joblib import Parallel, parallel_config

    options = {"return_as": "generator_unordered", "batch_size": 1, "pre_dispatch": "n_jobs"}
    if scheduler:
        from distributed import Client

        try:
            client = Client(scheduler, timeout=f"{connect_timeout_s}s", set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise SearchError(f"search.scheduler={scheduler}: cannot connect ({str(err).splitlines()[0]})") from None
        try:
            try:
                client.wait_for_workers(1, timeout=connect_timeout_s)
            except TimeoutError:
                raise SearchError(f"search.scheduler={scheduler}: no Dask worker joined within "
                                  f"{connect_timeout_s:g} s; start some with: dask worker {scheduler}") from None
            threads = dask_threads(client)
            slots = sum(info["nthreads"] for info in client.scheduler_info(n_workers=-1)["workers"].values())
            with parallel_config(backend="dask", client=client, scatter=[data],
                                 wait_for_workers_timeout=connect_timeout_s):
                with Parallel(n_jobs=-1, **options) as parallel:
                    yield parallel, threads, slots
        finally:
            client.close()
        return
    n_jobs = n_jobs or _cores()
    threads = max(1, _cores() // n_jobs)
    with Parallel(n_jobs=n_jobs, backend="loky" if n_jobs > 1 else "sequential",
                  inner_max_num_threads=threads if n_jobs > 1 else None, **options) as parallel:
        try:
            yield parallel, threads, n_jobs
        finally:
            if n_jobs > 1:  # the search owns its worker processes: stop them now, not after loky's idle timeout
                from joblib.externals.loky import get_reusable_executor

                get_reusable_executor(max_workers=n_jobs).shutdown(wait=True)
