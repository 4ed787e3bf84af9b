"""search.strategy optuna: ranges sampled by TPE, poor trials pruned per epoch, one shared study.

Each worker (this process, ``n_jobs`` local processes, or one per Dask worker thread) runs the
same loop against the study's storage (:mod:`fmnist.search.study`): ask for a trial while the
budget has room, train it with the trial code every strategy uses, report ``valid_acc`` after
every epoch (the pruner may stop it there), and tell the study how it ended. Several stages, on
one machine or on teammates' machines with ``$FMNIST_OPTUNA_STORAGE``, join the same study.

Seeds. A trial's suggestions are drawn from ``search.seed`` and the trial's number (the sampler is
reseeded before each trial), and every trial trains from ``search.seed``; with one worker the
study, and so every output, is a function of the params and the data. With several workers the
order in which trials finish decides what each sampler has seen, so the suggestions after the
startup trials, the pruning decisions and the trial count vary from run to run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from skorch.callbacks import Callback

from fmnist.errors import SearchError
from fmnist.params import HyperParams, OptunaParams
from fmnist.search.schedule import Task
from fmnist.search.study import (COST_ATTR, IMAGES_ATTR, SKIPPED_ATTR, WORKER_ATTR, fail_orphans, heartbeat,
                                 is_local, open_storage, quiet_optuna, spending, worker_id)
from fmnist.search.trial import SearchData, TrackingTarget, TrialResult, TrialSetup, TrialStopped, run_trial

log = logging.getLogger(__name__)

STATUS = {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "failed"}  # Optuna's states in trials.json


@dataclass(frozen=True)
class StudyPlan:
    """What every worker needs to join the study: plain values, sent to worker processes."""

    storage: str  # journal:<folder> or a SQLAlchemy URL
    study: str
    space: OptunaParams
    seed: int
    epochs: int
    factor: int
    train_images: int
    budget: int

    @property
    def trial_cost(self) -> int:
        """Training images of a trial that runs to its last epoch."""
        return self.epochs * self.train_images


def _reseeded(base: type):
    """``base`` sampler reseeded before each trial from (seed, trial number): suggestions then
    depend on the trial's number and the finished trials, not on which worker asked."""

    class Reseeded(base):
        def __init__(self, seed: int, **kwargs):
            super().__init__(seed=seed, **kwargs)
            self.base_seed = seed

        def before_trial(self, study, trial) -> None:
            seed = (self.base_seed * 1_000_003 + trial.number) % 2**32
            self._rng.rng.seed(seed)
            if hasattr(self, "_random_sampler"):  # TPE's startup trials
                self._random_sampler._rng.rng.seed(seed)
            super().before_trial(study, trial)

    Reseeded.__name__ = Reseeded.__qualname__ = f"Reseeded{base.__name__}"
    return Reseeded


def make_sampler(plan: StudyPlan):
    from optuna.samplers import RandomSampler, TPESampler

    if plan.space.sampler == "random":
        return _reseeded(RandomSampler)(plan.seed)
    return _reseeded(TPESampler)(plan.seed, n_startup_trials=plan.space.startup_trials)


def make_pruner(plan: StudyPlan):
    from optuna.pruners import HyperbandPruner, NopPruner, SuccessiveHalvingPruner

    if plan.space.pruner == "hyperband":
        return HyperbandPruner(min_resource=plan.space.min_epochs, max_resource=plan.epochs,
                               reduction_factor=plan.factor)
    if plan.space.pruner == "halving":
        return SuccessiveHalvingPruner(min_resource=plan.space.min_epochs, reduction_factor=plan.factor)
    return NopPruner()


def load_study(plan: StudyPlan, storage=None):
    import optuna

    return optuna.load_study(study_name=plan.study, storage=storage or open_storage(plan.storage, plan.study),
                             sampler=make_sampler(plan), pruner=make_pruner(plan))


def suggest(trial, space: OptunaParams) -> HyperParams:
    """The trial's hyper-parameters: lr log-uniform, dropout uniform, batch size from the list."""
    return HyperParams(lr=trial.suggest_float("lr", *space.lr, log=True),
                       batch_size=trial.suggest_categorical("batch_size", list(space.batch_size)),
                       dropout=trial.suggest_float("dropout", *space.dropout))


class ReportToTrial(Callback):
    """skorch callback: report the epoch's ``valid_acc`` to the Optuna trial and stop the trial
    (:class:`TrialStopped`) when the pruner says so; also keeps the images trained so far in the
    study, so that a trial whose process is killed still counts them against the budget."""

    def __init__(self, trial, images_per_epoch: int):
        self.trial = trial
        self.images_per_epoch = images_per_epoch

    def on_epoch_end(self, net, **kwargs):
        epoch = len(net.history)
        self.trial.report(float(net.history[-1, "valid_acc"]), epoch)
        self.trial.set_user_attr(IMAGES_ATTR, epoch * self.images_per_epoch)
        # A rung of the pruner may fall on the last epoch; a trial that trained every epoch is complete.
        if epoch < net.max_epochs and self.trial.should_prune():
            raise TrialStopped(f"pruned after epoch {epoch}")


def prepare_study(plan: StudyPlan, say: Callable[[str], None]) -> None:
    """Create the study, or continue it. A study that has spent its budget, in the local journal,
    is started afresh (a forced rerun trains again, as the train stage does); in a shared
    database it is kept: the stage then writes its outputs from the trials already there."""
    import optuna

    storage = open_storage(plan.storage, plan.study)
    try:
        study = load_study(plan, storage)
    except KeyError:  # no such study yet
        optuna.create_study(study_name=plan.study, storage=storage, direction="maximize",
                            sampler=make_sampler(plan), pruner=make_pruner(plan), load_if_exists=True)
        say(f"search: new Optuna study {plan.study}")
        return
    orphans = fail_orphans(study)
    spent = spending(study, plan.trial_cost, plan.train_images)
    done = sum(t.state.is_finished() and not t.user_attrs.get(SKIPPED_ATTR) for t in study.get_trials(deepcopy=False))
    if not spent.running and not spent.room(plan.budget, plan.trial_cost) and is_local(plan.storage):
        optuna.delete_study(study_name=plan.study, storage=storage)
        optuna.create_study(study_name=plan.study, storage=storage, direction="maximize",
                            sampler=make_sampler(plan), pruner=make_pruner(plan))
        say(f"search: Optuna study {plan.study} had spent its budget ({done} trials): starting it afresh")
        return
    interrupted = "".join(f"; trial {n} had been interrupted: failed" for n in orphans)
    say(f"search: going on with Optuna study {plan.study}: {done} trials finished, {len(spent.running)} "
        f"running, {spent.finished} of {plan.budget} training images spent{interrupted}")


def work(plan: StudyPlan, setup: TrialSetup, data: SearchData, tracking: TrackingTarget | None = None,
         threads: int | dict[str, int] = 0, say: Callable[[str], None] = print) -> int:
    """One worker's loop: trials while the budget has room for one; returns how many it ran."""
    from optuna.trial import TrialState

    quiet_optuna()
    storage = open_storage(plan.storage, plan.study)
    study = load_study(plan, storage)
    me = worker_id()
    ran = 0
    while True:
        fail_orphans(study)
        if not spending(study, plan.trial_cost, plan.train_images).room(plan.budget, plan.trial_cost):
            return ran
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, me)
        trial.set_user_attr(COST_ATTR, plan.trial_cost)
        spent = spending(study, plan.trial_cost, plan.train_images)
        if not spent.room(plan.budget, plan.trial_cost, before=trial.number):
            trial.set_user_attr(SKIPPED_ATTR, True)  # another worker took the last slot first
            study.tell(trial, state=TrialState.FAIL)
            return ran
        hp = suggest(trial, plan.space)
        task = Task(index=trial.number, round=0, hp=hp, epochs=plan.epochs, samples=plan.train_images,
                    name=f"t{trial.number} {hp.label()}")
        say(f"[optuna] trial {trial.number} starts: {task.describe()}")
        with heartbeat(storage, trial):
            result, _ = run_trial(task, setup, data, tracking, threads,
                                  callbacks=[("optuna_pruning", ReportToTrial(trial, plan.train_images))])
        for key, value in (("images_processed", result.images_processed), ("valid_acc", result.valid_acc),
                           ("valid_acc_std", result.valid_acc_std), ("best_epoch", result.best_epoch),
                           ("pruned_epoch", result.pruned_epoch), ("error", result.error),
                           ("seconds", result.seconds)):
            trial.set_user_attr(key, value if value == value else None)  # NaN is not JSON: null
        if result.status == "ok":
            study.tell(trial, result.valid_acc)
        else:
            study.tell(trial, state=TrialState.PRUNED if result.status == "pruned" else TrialState.FAIL)
        ran += 1
        spent = spending(study, plan.trial_cost, plan.train_images)
        shown = {"ok": f"valid_acc={result.valid_acc:.4f}",
                 "pruned": f"pruned after epoch {result.pruned_epoch} (valid_acc={result.valid_acc:.4f})",
                 "failed": f"FAILED ({result.error})"}[result.status]
        say(f"[optuna] trial {trial.number} done: {hp.label()} {shown}; {spent.finished}/{plan.budget} "
            f"training images spent")


def study_results(plan: StudyPlan) -> list[TrialResult]:
    """Every finished trial of the study, whichever worker ran it, by trial number."""
    from optuna.trial import TrialState

    study = load_study(plan)
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if t.user_attrs.get(SKIPPED_ATTR) or set(t.params) != set(HyperParams.names()):
            continue  # no room in the budget, or killed before it was given its hyper-parameters
        a = t.user_attrs
        valid_acc = a.get("valid_acc")
        rows.append(TrialResult(
            index=t.number, round=0, hp=HyperParams(**t.params), epochs=plan.epochs,
            train_images=plan.train_images, images_processed=int(a.get(IMAGES_ATTR, 0)),
            valid_acc=float("nan") if valid_acc is None else float(valid_acc),
            valid_acc_std=float(a.get("valid_acc_std") or 0.0), best_epoch=int(a.get("best_epoch", 0)),
            status=STATUS[t.state.name], error=str(a.get("error", "")), seconds=float(a.get("seconds", 0.0)),
            pruned_epoch=int(a.get("pruned_epoch", 0))))
    return sorted(rows, key=lambda r: r.index)


def run_optuna(plan: StudyPlan, setup: TrialSetup, data: SearchData, *, tracking: TrackingTarget | None = None,
               n_jobs: int = 1, scheduler: str = "", say: Callable[[str], None] = print) -> list[TrialResult]:
    """Prepare the study, run its workers here, in local processes or on Dask; return its trials."""
    quiet_optuna()
    if plan.budget < plan.trial_cost:
        raise SearchError(f"search.optuna.budget={plan.budget} is less than one trial's {plan.trial_cost} "
                          f"training images ({plan.epochs} epochs x {plan.train_images})")
    prepare_study(plan, say)
    if n_jobs == 1 and not scheduler:
        work(plan, setup, data, tracking, setup.threads, say)
    else:
        from joblib import delayed

        from fmnist.search.executors import executor

        with executor(n_jobs, scheduler, data) as (parallel, threads, slots):
            say(f"search: {slots} Optuna worker(s)" + (f" on {scheduler}" if scheduler else ""))
            list(parallel(delayed(work)(plan, setup, data, tracking, threads, print) for _ in range(slots)))
    return study_results(plan)


def best_of(results: list[TrialResult]) -> TrialResult:
    """The best trial that ran to the end (pruned trials did not); the lowest number on a tie."""
    done = [r for r in results if r.status == "ok"]
    if not done:
        reasons = "; ".join(sorted({r.error or r.status for r in results})) or "no trial ran"
        raise SearchError(f"no Optuna trial of {len(results)} finished: {reasons}")
    return min(done, key=lambda r: (-r.valid_acc, r.index))
