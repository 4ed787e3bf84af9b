"""Which trials run in which round, and with how much resource: pure functions of the search's params."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fmnist.params import HyperParams


@dataclass(frozen=True)
class Round:
    """One round: how many candidates run, and the resource each gets."""

    candidates: int
    epochs: int  # epochs a trial has trained when the round ends
    samples: int  # training images per trial
    start_epoch: int = 0  # epochs a trial goes on from (epochs resource); 0 = from scratch


@dataclass(frozen=True)
class Task:
    """One trial: a grid combination in a round, and the resource it gets."""

    index: int  # position of the combination in the grid
    round: int
    hp: HyperParams
    epochs: int
    samples: int
    start_epoch: int = 0
    keep_state: bool = False  # return the state at the end: a later round goes on from it
    name: str = ""  # the trial's MLflow run name; "" = round and hyper-parameters

    def describe(self) -> str:
        going_on = f" (going on from epoch {self.start_epoch})" if self.start_epoch else ""
        return f"{self.hp.label()}, {self.epochs} epochs on {self.samples} images{going_on}"


def _ilog(x: int, base: int) -> int:
    """The largest k with base**k <= x (integer arithmetic: math.log(27, 3) is 3.0000000000000004)."""
    k = 0
    while base ** (k + 1) <= x:
        k += 1
    return k


def halving_schedule(n_candidates: int, max_resource: int, factor: int,
                     min_resource: int = 1) -> list[tuple[int, int]]:
    """Rounds of successive halving as ``(candidates, resource)``; the last round gets ``max_resource``.

    As scikit-learn's ``HalvingGridSearchCV`` (``min_resources="exhaust"``): 1 + floor(log_factor(n))
    rounds, no more than the resource can tell apart (each round gets ``factor`` times the one
    before, and at least ``min_resource``); round i runs ceil(n / factor**i) candidates.
    """
    required = 1 + _ilog(n_candidates, factor)
    possible = 1 + _ilog(max_resource // min_resource, factor) if max_resource >= min_resource else 1
    rounds = min(required, possible)
    return [(math.ceil(n_candidates / factor**i), max_resource // factor ** (rounds - 1 - i))
            for i in range(rounds)]


def plan_rounds(strategy: str, n_candidates: int, epochs: int, samples: int, factor: int = 3,
                resource: str = "samples", min_samples: int = 1) -> list[Round]:
    """``grid``: one round, every candidate for the full budget; ``halving``: :func:`halving_schedule`
    over ``epochs`` (trials go on from the round before) or ``samples`` (trials start afresh)."""
    if strategy == "grid":
        return [Round(n_candidates, epochs, samples)]
    if strategy != "halving":
        raise ValueError(f"unknown search strategy {strategy!r}")
    if resource == "epochs":
        schedule = halving_schedule(n_candidates, epochs, factor)
        starts = [0] + [e for _, e in schedule[:-1]]
        return [Round(c, e, samples, start) for (c, e), start in zip(schedule, starts)]
    if resource == "samples":
        return [Round(c, epochs, s) for c, s in halving_schedule(n_candidates, samples, factor, min_samples)]
    raise ValueError(f"unknown halving resource {resource!r}")


def round_tasks(round_no: int, rounds: list[Round], grid: list[HyperParams], survivors: list[int]) -> list[Task]:
    """The tasks of round ``round_no`` for the grid indices in ``survivors`` (best first)."""
    rnd = rounds[round_no]
    nxt = rounds[round_no + 1] if round_no + 1 < len(rounds) else None
    keep = nxt is not None and nxt.start_epoch > 0
    return [Task(index=i, round=round_no, hp=grid[i], epochs=rnd.epochs, samples=rnd.samples,
                 start_epoch=rnd.start_epoch, keep_state=keep) for i in survivors[:rnd.candidates]]
