"""The search itself, where the stage runs: the rounds, the ranking between them, the progress lines."""

from __future__ import annotations

import logging
from typing import Callable, Iterator

from fmnist.errors import SearchError
from fmnist.params import HyperParams
from fmnist.search.executors import executor
from fmnist.search.schedule import Round, Task, round_tasks
from fmnist.search.trial import (SearchData, TrackingTarget, TrialResult, TrialSetup, TrialState,
                                 run_trial)

log = logging.getLogger(__name__)


def rank_key(result: TrialResult) -> tuple:
    """Best first: successful before failed, then higher accuracy, then grid order (a total order,
    so the ranking does not depend on the order trials finish in)."""
    return (not result.ok, -result.valid_acc if result.ok else 0.0, result.index)


def best_trial(results: list[TrialResult]) -> TrialResult:
    """The best successful trial of the last round any reached; raise if every trial failed."""
    ok = [r for r in results if r.ok]
    if not ok:
        reasons = "; ".join(sorted({r.error for r in results}))
        raise SearchError(f"all {len(results)} search trials failed: {reasons}")
    last_round = max(r.round for r in ok)
    return min((r for r in ok if r.round == last_round), key=rank_key)


class RoundProgress:
    """The progress lines of one round: which trial starts, which is done, the best so far."""

    def __init__(self, round_no: int, n_rounds: int, tasks: list[Task], say: Callable[[str], None]):
        self.where = f"round {round_no + 1}/{n_rounds}"
        self.numbers = {t.index: n + 1 for n, t in enumerate(tasks)}
        self.total = len(tasks)
        self.say = say

    def started(self, task: Task) -> None:
        self.say(f"[{self.where}] trial {self.numbers[task.index]}/{self.total} starts: {task.describe()}")

    def finished(self, result: TrialResult, done: list[TrialResult]) -> None:
        best = min((r for r in done if r.ok), key=rank_key, default=None)
        shown = f"valid_acc={result.valid_acc:.4f}" if result.ok else f"FAILED ({result.error})"
        self.say(f"[{self.where}] trial {self.numbers[result.index]}/{self.total} done: {result.hp.label()} "
                 f"{shown}; {len(done)}/{self.total} done; best so far: "
                 + (f"{best.valid_acc:.4f} with {best.hp.label()}" if best else "none"))


def _calls(tasks: list[Task], states: dict[int, TrialState], setup: TrialSetup, data: SearchData,
           tracking: TrackingTarget | None, threads: int | dict[str, int],
           announce: Callable[[Task], None]) -> Iterator:
    """The round's joblib calls, announced as joblib takes them (when a worker is free)."""
    from joblib import delayed

    for task in tasks:
        announce(task)
        yield delayed(run_trial)(task, setup, data, tracking, threads, states.pop(task.index, None))


def run_search(grid: list[HyperParams], rounds: list[Round], setup: TrialSetup, data: SearchData, *,
               tracking: TrackingTarget | None = None, n_jobs: int = 1, scheduler: str = "",
               progress: Callable[[str], None] = log.info) -> list[TrialResult]:
    """Run the rounds; return every trial's result, in (round, grid) order.

    After each round the successful trials are ranked (:func:`rank_key`) and the best
    ``candidates`` of the next round go on; failed trials never do. The states that a next round
    goes on from are kept for the best trials only, as results come in.
    """
    results: list[TrialResult] = []
    survivors = list(range(len(grid)))
    states: dict[int, TrialState] = {}
    with executor(n_jobs, scheduler, data) as (parallel, threads, slots):
        progress(f"search: {len(grid)} combinations in {len(rounds)} round(s), {slots} trial(s) at once"
                 + (f" on {scheduler}" if scheduler else ""))
        for round_no in range(len(rounds)):
            tasks = round_tasks(round_no, rounds, grid, survivors)
            keep_for = rounds[round_no + 1].candidates if tasks and tasks[0].keep_state else 0
            carried, states = states, {}
            report = RoundProgress(round_no, len(rounds), tasks, progress)
            done: list[TrialResult] = []
            for result, state in parallel(_calls(tasks, carried, setup, data, tracking, threads, report.started)):
                done.append(result)
                if keep_for and result.ok:
                    states[result.index] = state
                    if len(states) > keep_for:  # keep only the states a next round can use
                        rank = {r.index: rank_key(r) for r in done}
                        del states[max(states, key=rank.__getitem__)]
                report.finished(result, done)
            done.sort(key=lambda r: r.index)
            results.extend(done)
            survivors = [r.index for r in sorted(done, key=rank_key) if r.ok]
            if not survivors:
                break
    return results
