"""Hyperparameter search for the global models (Optuna's TPE sampler) on backtest error.

The search space is small on purpose (each trial costs the backtest's `windows` fits per group):
- LightGBM: num_leaves 7-127, learning_rate 0.01-0.3, n_estimators 50-500 (all log-uniform).
- XGBoost: max_depth 3-10, learning_rate 0.01-0.3 (log), n_estimators 50-500 (log).

The first trial is always the defaults (ADR 0033), so the best found is never worse on the
backtest than what a fit uses untuned. A trial is scored by the mean over series of the
selection metric of its rolling-origin backtest (`global_scores`, one model per group and
window). The caller runs trials one at a time (`ask`, score, `tell`), so it can report progress,
stop at its budget and honour a cancel between trials.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import optuna

from nexus.forecast.forecasting import learners
from nexus.forecast.forecasting.backtest import Plan, global_scores
from nexus.forecast.forecasting.metrics import Errors, average
from nexus.forecast.forecasting.models import ModelKind
from nexus.forecast.forecasting.series import Prepared

optuna.logging.set_verbosity(logging.WARNING)  # a line per trial is Optuna's default
TUNABLE = (ModelKind.LIGHTGBM, ModelKind.XGBOOST)
RATE = (0.01, 0.3)
ROUNDS = (50, 500)
LEAVES = (7, 127)
DEPTH = (3, 10)


def study(kind: ModelKind, seed: int) -> optuna.Study:
    """A fresh search whose first trial is `kind`'s defaults."""
    found = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    found.enqueue_trial(learners.parameters(kind))
    return found


def suggest(trial: optuna.Trial, kind: ModelKind) -> dict[str, float]:
    """The parameters a trial tries."""
    params: dict[str, float] = {
        "n_estimators": trial.suggest_int("n_estimators", *ROUNDS, log=True),
        "learning_rate": trial.suggest_float("learning_rate", *RATE, log=True),
    }
    if kind is ModelKind.LIGHTGBM:
        params["num_leaves"] = trial.suggest_int("num_leaves", *LEAVES, log=True)
    else:
        params["max_depth"] = trial.suggest_int("max_depth", *DEPTH)
    return params


def score(
    kind: ModelKind, series: Sequence[Prepared], plan: Plan, params: learners.Params
) -> Errors:
    """The backtest errors of `kind` with `params`, averaged over every series (blocking, CPU;
    a failed fit scores infinity)."""
    found: list[Errors] = []
    for part in learners.groups(series).values():
        found.extend(global_scores(kind, part, plan, params).values())
    return average(found)
