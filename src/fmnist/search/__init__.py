"""Hyper-parameter search over lr, batch_size and dropout: full grid, successive halving or Optuna.

Strategies. ``grid`` trains every combination for the full budget. ``halving`` is successive
halving with scikit-learn's ``HalvingGridSearchCV`` schedule: round i runs ceil(n / factor**i)
candidates, the best 1/factor of a round go on to the next, and each round gives its trials
factor times the resource of the round before. The resource is training ``samples`` (a trial
trains from scratch on a stratified subset; the last round trains on all of the trial's images)
or ``epochs`` (a surviving trial goes on from the weights, optimizer and history it reached, so
the last round ends exactly where a grid trial of the full budget would). Either way a last-round
trial is the same computation as the grid's trial of that combination.

Scoring. A trial is scored on the pipeline's validation split, or, when ``cv`` >= 2, by
stratified k-fold on the trial's own training images; its score is the best epoch's accuracy
(of the mean curve over folds), as early stopping in the train stage would keep it.

Execution. Trials run in this process (``n_jobs`` 1), in ``n_jobs`` local worker processes
(joblib's loky backend), or on a Dask cluster through joblib's dask backend. A worker runs
``max(1, cores // trials at once on that machine)`` torch threads and makes its own MLflow client
from the tracking URI, so each trial is a nested run of the search run whichever worker ran it.
Every trial is seeded from the search seed alone, so results do not depend on ``n_jobs`` or on
the order trials finish in (bit for bit at a fixed torch thread count: oneDNN's CPU kernels sum
in an order that depends on the number of threads).

Failures. A trial that raises or diverges is recorded as failed with its reason, and the search
goes on without it; only when every trial failed does :func:`best_trial` raise.

Optuna. ``optuna`` samples ranges instead of a grid (TPE, reseeded per trial), prunes trials from
their per-epoch validation accuracy, and spends a budget of training images; its study outlives
the process, so a killed search goes on and several workers or teammates share it.

Modules, one job each: :mod:`~fmnist.search.schedule` (which trials run in which round, pure),
:mod:`~fmnist.search.trial` (one trial, on whichever worker runs it),
:mod:`~fmnist.search.executors` (local processes or a Dask cluster),
:mod:`~fmnist.search.rounds` (running the rounds and ranking the results),
:mod:`~fmnist.search.study` (where an Optuna study lives, its name, its budget),
:mod:`~fmnist.search.optuna_search` (the Optuna workers' loop) and
:mod:`~fmnist.search.optuna_views` (Optuna's plots of a study).
"""
