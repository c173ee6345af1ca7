"""Rolling-origin backtests and the choice of a model per series.

Origins: `windows` of them, `step` apart, the last one `horizon` steps before the end; each
candidate is fitted on the series up to an origin and forecasts `horizon` steps from it. A
series' errors are the mean over its windows; the winner has the lowest selection error (ties:
the earlier candidate, simpler first). A global model (LightGBM, XGBoost) is backtested on all
series of a group at once: per window, one model fitted on every series cut at its own origin.
The ensemble is scored from its members' forecasts of the same windows (ADR 0044).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting import ensembles, learners, neural
from nexus.forecast.forecasting.metrics import (
    Errors,
    average,
    coverage,
    mase,
    mase_scale,
    rmse,
    smape,
)
from nexus.forecast.forecasting.models import (
    ENSEMBLE,
    GLOBAL,
    NEURAL,
    ModelKind,
    candidates,
    min_length,
)
from nexus.forecast.forecasting.predicting import Forecast, forecast_once
from nexus.forecast.forecasting.series import Prepared

if TYPE_CHECKING:
    from nexus.forecast.forecasting.prophet_model import ProphetOptions

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
    params: Mapping[ModelKind, learners.Params] = field(default_factory=dict)
    """Learner parameters of the global models over their defaults."""
    prophet: ProphetOptions | None = None
    """How Prophet is fitted (None: its defaults)."""

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


def need(kind: ModelKind, seasons: tuple[int, ...], horizon: int) -> int:
    """Fewest values `kind` is fitted on (a global model: with its conformal windows)."""
    if kind in NEURAL:
        return neural.min_length(seasons, horizon)
    return learners.min_length(seasons, horizon) if kind in GLOBAL else min_length(kind, seasons)


def applicable(series: Prepared, kinds: tuple[ModelKind, ...], plan: Plan) -> tuple[ModelKind, ...]:
    """A series' candidates: those named (checked), else the defaults that apply to it (the
    global ones only where the series is long enough for their backtest).

    Raises:
        InvalidArgument: MSTL named for a series without a season.
    """
    found = candidates(kinds, series.seasons)
    if kinds:
        return found
    first = plan.origins(len(series.y))[0]
    return tuple(
        k for k in found if k not in GLOBAL or first >= need(k, series.seasons, plan.horizon)
    )


def check_length(series: Prepared, kinds: Sequence[ModelKind], plan: Plan) -> None:
    """Refuses a series too short for the backtest of every candidate.

    Raises:
        InvalidArgument: Naming the series' values, its length and what it needs.
    """
    need_ = max(need(kind, series.seasons, plan.horizon) for kind in kinds)
    first = plan.origins(len(series.y))[0]
    if first < need_:
        total = need_ + plan.horizon + (plan.windows - 1) * plan.stride
        raise InvalidArgument.for_field(
            f"{series.field}.values",
            f"series {series.id!r} has {len(series.y)} values; a backtest of {plan.windows} "
            f"windows of {plan.horizon} steps with a season of {max(series.seasons)} needs "
            f"{total} (fewer windows, a shorter horizon or a shorter season need fewer)",
        )


def check_fit_length(series: Prepared, kind: ModelKind, horizon: int = 0) -> None:
    """Refuses a series too short for the model it is to be fitted with (for a global model,
    with conformal windows of `horizon` steps).

    Raises:
        InvalidArgument: Naming the series' values, its length and what the model needs.
    """
    need_ = need(kind, series.seasons, horizon)
    if len(series.y) < need_:
        raise InvalidArgument.for_field(
            f"{series.field}.values",
            f"series {series.id!r} has {len(series.y)} values; {kind.value} with a season of "
            f"{max(series.seasons)}{_horizon(kind, horizon)} needs {need_}",
        )


def _horizon(kind: ModelKind, horizon: int) -> str:
    return f" and intervals for {horizon} steps" if kind in GLOBAL else ""


Known = Mapping[str, Mapping[ModelKind, Errors]]
"""Backtest errors already found (the global models'), by series id and model."""


def backtest(
    series: Prepared,
    kinds: Sequence[ModelKind],
    plan: Plan,
    known: Mapping[ModelKind, Errors] | None = None,
) -> Choice:
    """Backtests each candidate on one series and chooses (blocking, CPU). A global candidate
    takes its errors from `known` (see `global_backtests`), else it is fitted on this series
    alone. The ensemble, when a candidate, is scored from the others' window forecasts."""
    check_length(series, kinds, plan)
    known = known or {}
    keep = ENSEMBLE in kinds
    scores = {
        kind: known.get(kind) or _score(series, kind, plan, keep)
        for kind in kinds
        if kind is not ENSEMBLE
    }
    if keep:
        scores[ENSEMBLE] = _ensemble(series, scores, plan)
    return choose(series.id, {k: replace(scores[k], windows=()) for k in kinds}, plan.metric)


def _ensemble(series: Prepared, scores: Mapping[ModelKind, Errors], plan: Plan) -> Errors:
    """The ensemble's errors: in each window, its members' forecasts combined."""
    chosen = ensembles.members(scores, plan.metric)
    if not chosen or any(len(scores[k].windows) != plan.windows for k in chosen):
        return FAILED
    found = [
        _errors_at(series, plan, origin, ensembles.combine([scores[k].windows[i] for k in chosen]))
        for i, origin in enumerate(plan.origins(len(series.y)))
    ]
    return average(found)


def global_backtests(
    series: Sequence[Prepared], kinds: Mapping[str, Sequence[ModelKind]], plan: Plan
) -> dict[str, dict[ModelKind, Errors]]:
    """Backtests each global model on the series that have it among their candidates `kinds`
    (by id) and are long enough for the backtest; one model per group and window (blocking,
    CPU). Where a series has the ensemble among its candidates, its errors keep the window
    forecasts."""
    found: dict[str, dict[ModelKind, Errors]] = {}
    for kind in sorted(GLOBAL, key=lambda k: k.value):
        members = [s for s in series if kind in kinds[s.id] and _fits(s, kinds[s.id], plan)]
        for part in learners.groups(members).values():
            keep = any(ENSEMBLE in kinds[s.id] for s in part)
            for series_id, err in global_scores(kind, part, plan, keep=keep).items():
                found.setdefault(series_id, {})[kind] = err
    return found


def _fits(series: Prepared, kinds: Sequence[ModelKind], plan: Plan) -> bool:
    try:
        check_length(series, kinds, plan)
    except InvalidArgument:
        return False
    return True


def global_scores(
    kind: ModelKind,
    series: Sequence[Prepared],
    plan: Plan,
    params: learners.Params | None = None,
    keep: bool = False,
) -> dict[str, Errors]:
    """One global model's backtest errors on series of one group, with learner parameters
    `params` over the defaults, with the window forecasts when `keep` (blocking, CPU)."""
    windows: dict[str, list[Errors]] = {s.id: [] for s in series}
    kept: dict[str, list[Forecast]] = {s.id: [] for s in series}
    params = params if params is not None else plan.params.get(kind)
    for k in range(plan.windows):
        origins = {s.id: plan.origins(len(s.y))[k] for s in series}
        try:
            model = learners.fit_global(
                kind, series, plan.horizon, origins, bool(plan.levels), params
            )
            futures = window_futures(series, origins, plan.horizon)
            forecasts = model.forecast(list(origins), plan.horizon, plan.levels, futures)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
            log.warning("%s failed on %d series: %s", kind.value, len(series), err)
            return {s.id: FAILED for s in series}
        for s in series:
            windows[s.id].append(_errors_at(s, plan, origins[s.id], forecasts[s.id]))
            kept[s.id].append(forecasts[s.id])
    return {sid: _kept(average(found), kept[sid], keep) for sid, found in windows.items()}


def _kept(found: Errors, forecasts: Sequence[Forecast], keep: bool) -> Errors:
    return replace(found, windows=tuple(forecasts)) if keep else found


def window_futures(
    series: Sequence[Prepared], origins: Mapping[str, int], horizon: int
) -> dict[str, np.ndarray]:
    """The exogenous values of each series over the window after its origin (what happened:
    a backtest forecasts as if they had been known)."""
    return {s.id: s.x[origins[s.id] : origins[s.id] + horizon] for s in series if s.x is not None}


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


def _score(series: Prepared, kind: ModelKind, plan: Plan, keep: bool = False) -> Errors:
    if kind in GLOBAL:
        return global_scores(kind, [series], plan, keep=keep)[series.id]
    origins = plan.origins(len(series.y))
    try:
        forecasts = [_window_forecast(series, kind, plan, o, plan.levels) for o in origins]
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
        log.warning("%s failed on series %r: %s", kind.value, series.id, err)
        return FAILED
    found = [_errors_at(series, plan, o, f) for o, f in zip(origins, forecasts, strict=True)]
    return _kept(average(found), forecasts, keep)


def _errors_at(series: Prepared, plan: Plan, origin: int, forecast: Forecast) -> Errors:
    """The errors of a forecast from `origin` against what followed."""
    actual = series.y[origin : origin + plan.horizon]
    return errors(actual, forecast, mase_scale(series.y[:origin], series.season))


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


def window_forecasts(
    series: Prepared, kind: ModelKind, plan: Plan, members: Sequence[ModelKind] = ()
) -> list[tuple[int, Forecast]]:
    """The forecast of each backtest window of `kind` (the ensemble: of `members`) on one
    series, with its origin, oldest first (blocking, CPU); for a chart.

    Raises:
        InvalidArgument: The series is too short for the backtest.
    """
    if kind is ENSEMBLE:
        parts = [window_forecasts(series, k, plan) for k in members]
        together = zip(*parts, strict=True)
        return [(found[0][0], ensembles.combine([f for _, f in found])) for found in together]
    check_length(series, [kind], plan)
    origins = plan.origins(len(series.y))
    if kind in GLOBAL:
        return [(o, _global_window(series, kind, plan, o)) for o in origins]
    return [(o, _window_forecast(series, kind, plan, o, ())) for o in origins]


def _global_window(series: Prepared, kind: ModelKind, plan: Plan, origin: int) -> Forecast:
    origins = {series.id: origin}
    model = learners.fit_global(kind, [series], plan.horizon, origins, intervals=False)
    futures = window_futures([series], origins, plan.horizon)
    return model.forecast([series.id], plan.horizon, (), futures)[series.id]


def _window_forecast(
    series: Prepared, kind: ModelKind, plan: Plan, origin: int, levels: Sequence[float]
) -> Forecast:
    x = series.x
    x_past = x[:origin] if x is not None else None
    x_future = x[origin : origin + plan.horizon] if x is not None else None
    y = series.y[:origin]
    dates = series.grid(origin + plan.horizon)
    return forecast_once(
        kind, series.seasons, y, plan.horizon, levels, x_past, x_future, dates, plan.prophet
    )
