"""Rolling-origin backtests and the choice of a model per series.

Origins: `windows` of them, `step` apart, the last one `horizon` steps before the end; each
candidate is fitted on the series up to an origin and forecasts `horizon` steps from it. A
series' errors are the mean over its windows; the winner has the lowest selection error (ties:
the earlier candidate, simpler first).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting.metrics import (
    Errors,
    average,
    coverage,
    mase,
    mase_scale,
    rmse,
    smape,
)
from nexus.forecast.forecasting.models import ModelKind, min_length
from nexus.forecast.forecasting.predicting import Forecast, forecast_once
from nexus.forecast.forecasting.series import Prepared

log = logging.getLogger(__name__)
METRICS = ("mase", "smape", "rmse")
FAILED = Errors(float("inf"), float("inf"), float("inf"))


@dataclass(frozen=True)
class Plan:
    """How a backtest runs and what it chooses by."""

    horizon: int
    windows: int = 3
    step: int = 0
    """Steps between origins; 0: the horizon."""
    levels: tuple[float, ...] = ()
    metric: str = "mase"

    @property
    def stride(self) -> int:
        """Steps between origins."""
        return self.step or self.horizon

    def origins(self, n: int) -> list[int]:
        """The origins (lengths of the training part) for a series of `n` values, oldest first."""
        last = n - self.horizon
        return [last - k * self.stride for k in reversed(range(self.windows))]


@dataclass(frozen=True)
class Choice:
    """Which model won a series' backtest, by how much, and every candidate's errors."""

    series_id: str
    model: ModelKind
    runner_up: ModelKind | None
    margin_percent: float
    scores: Mapping[ModelKind, Errors]

    @property
    def errors(self) -> Errors:
        """The winner's errors."""
        return self.scores[self.model]


def check_length(series: Prepared, kinds: Sequence[ModelKind], plan: Plan) -> None:
    """Refuses a series too short for the backtest of every candidate.

    Raises:
        InvalidArgument: Naming the series' values, its length and what it needs.
    """
    need = max(min_length(kind, series.seasons) for kind in kinds)
    first = plan.origins(len(series.y))[0]
    if first < need:
        total = need + plan.horizon + (plan.windows - 1) * plan.stride
        raise InvalidArgument.for_field(
            f"{series.field}.values",
            f"series {series.id!r} has {len(series.y)} values; a backtest of {plan.windows} "
            f"windows of {plan.horizon} steps with a season of {max(series.seasons)} needs "
            f"{total} (fewer windows, a shorter horizon or a shorter season need fewer)",
        )


def check_fit_length(series: Prepared, kind: ModelKind) -> None:
    """Refuses a series too short for the model it is to be fitted with.

    Raises:
        InvalidArgument: Naming the series' values, its length and what the model needs.
    """
    need = min_length(kind, series.seasons)
    if len(series.y) < need:
        raise InvalidArgument.for_field(
            f"{series.field}.values",
            f"series {series.id!r} has {len(series.y)} values; {kind.value} with a season of "
            f"{max(series.seasons)} needs {need}",
        )


def backtest(series: Prepared, kinds: Sequence[ModelKind], plan: Plan) -> Choice:
    """Backtests each candidate on one series and chooses (blocking, CPU)."""
    check_length(series, kinds, plan)
    scores = {kind: _score(series, kind, plan) for kind in kinds}
    return choose(series.id, scores, plan.metric)


def choose(series_id: str, scores: Mapping[ModelKind, Errors], metric: str) -> Choice:
    """The candidate with the lowest error, the runner-up and the margin between them."""
    ranked = sorted(scores, key=lambda kind: scores[kind].value(metric))  # stable: ties keep order
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    return Choice(series_id, best, runner, _margin(scores, best, runner, metric), dict(scores))


def _margin(
    scores: Mapping[ModelKind, Errors], best: ModelKind, runner: ModelKind | None, metric: str
) -> float:
    if runner is None:
        return 0.0
    a, b = scores[best].value(metric), scores[runner].value(metric)
    if not np.isfinite(b) or b <= 0:
        return 100.0 if np.isfinite(a) and b > a else 0.0
    return 100.0 * (b - a) / b


def _score(series: Prepared, kind: ModelKind, plan: Plan) -> Errors:
    try:
        windows = [_window(series, kind, plan, origin) for origin in plan.origins(len(series.y))]
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
        log.warning("%s failed on series %r: %s", kind.value, series.id, err)
        return FAILED
    return average(windows)


def _window(series: Prepared, kind: ModelKind, plan: Plan, origin: int) -> Errors:
    history, actual = series.y[:origin], series.y[origin : origin + plan.horizon]
    x = series.x
    x_past = x[:origin] if x is not None else None
    x_future = x[origin : origin + plan.horizon] if x is not None else None
    forecast = forecast_once(
        kind, series.seasons, history, plan.horizon, plan.levels, x_past, x_future
    )
    return errors(actual, forecast, mase_scale(history, series.season))


def errors(actual: np.ndarray, forecast: Forecast, scale: float) -> Errors:
    """The errors of one forecast against what happened."""
    return Errors(
        mase=mase(actual, forecast.mean, scale),
        smape=smape(actual, forecast.mean),
        rmse=rmse(actual, forecast.mean),
        coverage={
            level: coverage(actual, lower, upper)
            for level, (lower, upper) in forecast.intervals.items()
        },
    )
