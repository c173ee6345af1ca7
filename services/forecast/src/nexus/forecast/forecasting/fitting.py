"""Fitted sets: the model each series won, fitted on all of its history, packed per series so
that a served set unpacks a series' model only when it is first asked for. A global model
(LightGBM, XGBoost) is packed once per group in the set's `shared` models; the series that won
with it name it. An ensemble is packed as its members' fitted models (ADR 0044)."""

from __future__ import annotations

import pickle
import zlib
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cloudpickle
import numpy as np
import pandas as pd

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting import ensembles, learners
from nexus.forecast.forecasting.backtest import (
    Choice,
    Plan,
    backtest,
    check_fit_length,
    check_length,
)
from nexus.forecast.forecasting.learners import GlobalModel
from nexus.forecast.forecasting.metrics import Errors, average
from nexus.forecast.forecasting.models import ENSEMBLE, GLOBAL, USES_EXOGENOUS, ModelKind
from nexus.forecast.forecasting.neural import NeuralModel
from nexus.forecast.forecasting.predicting import Forecast, fit, predict
from nexus.forecast.forecasting.series import Prepared

if TYPE_CHECKING:
    from nexus.forecast.forecasting.prophet_model import ProphetOptions

SharedModel = GlobalModel | NeuralModel
"""A model several series of a set forecast with."""


@dataclass(frozen=True)
class FittedSeries:
    """One series' fitted model and what forecasting from it needs."""

    series_id: str
    kind: ModelKind
    model: Any
    last: pd.Timestamp
    frequency: str
    exogenous: tuple[str, ...]
    shared: str = ""
    """The key of the set's shared global model this series forecasts with ("" for a model
    of its own)."""
    members: tuple[FittedSeries, ...] = ()
    """An ensemble's members, fitted on the same series (() for any other model)."""

    def shared_keys(self) -> set[str]:
        """The shared global models this series forecasts with (its own, or its members')."""
        own = {self.shared} if self.shared else set()
        return own.union(*(m.shared_keys() for m in self.members))

    def horizon_index(self, horizon: int) -> pd.DatetimeIndex:
        """The timestamps of the next `horizon` steps."""
        return pd.date_range(self.last, periods=horizon + 1, freq=self.frequency)[1:]

    def forecast(
        self,
        horizon: int,
        levels: Sequence[float],
        future: Mapping[str, np.ndarray],
        where: str,
        shared: SharedModel | None = None,
    ) -> tuple[pd.DatetimeIndex, Forecast]:
        """The next `horizon` steps (blocking); `shared`: the global model named by `shared`.

        Raises:
            InvalidArgument: Exogenous values over the horizon missing or of the wrong length;
                intervals beyond a global model's calibrated horizon.
        """
        index = self.horizon_index(horizon)
        x_future = future_matrix(self.exogenous, future, horizon, where, self.kind)
        if shared is not None:
            futures = {self.series_id: x_future} if x_future is not None else None
            found = shared.forecast([self.series_id], horizon, levels, futures)
            return index, found[self.series_id]
        return index, predict(self.kind, self.model, horizon, levels, x_future)

    def forecast_with(
        self,
        horizon: int,
        levels: Sequence[float],
        future: Mapping[str, np.ndarray],
        where: str,
        models: Mapping[str, SharedModel],
    ) -> tuple[pd.DatetimeIndex, Forecast]:
        """Like `forecast`, any model: `models` holds the shared global models by key (see
        `shared_keys`); an ensemble combines its members' forecasts (blocking)."""
        if not self.members:
            return self.forecast(horizon, levels, future, where, models.get(self.shared))
        parts = [m.forecast_with(horizon, levels, future, where, models)[1] for m in self.members]
        return self.horizon_index(horizon), ensembles.combine(parts)


@dataclass
class FittedSet:
    """A fit's result, registered as one model version: per-series models, packed."""

    horizon: int
    packed: dict[str, bytes] = field(default_factory=dict)
    """Series id -> zlib-compressed pickle of its FittedSeries (inside the signed artifact)."""
    shared: dict[str, bytes] = field(default_factory=dict)
    """Key -> zlib-compressed pickle of a global model several series forecast with."""

    def add(self, fitted: FittedSeries) -> None:
        """Packs one series' model."""
        self.packed[fitted.series_id] = zlib.compress(pickle.dumps(fitted), 1)

    def add_shared(self, key: str, model: SharedModel) -> None:
        """Packs a global model (cloudpickle: mlforecast's Box-Cox keeps a lambda; plain pickle
        reads the bytes back)."""
        self.shared[key] = zlib.compress(cloudpickle.dumps(model), 1)

    def unpack(self, series_id: str) -> FittedSeries:
        """One series' model. Safe: the packed bytes come from the set's signed artifact."""
        obj = pickle.loads(zlib.decompress(self.packed[series_id]))
        assert isinstance(obj, FittedSeries)
        return obj

    def unpack_shared(self, key: str) -> SharedModel:
        """A global model. Safe: the packed bytes come from the set's signed artifact."""
        obj = pickle.loads(zlib.decompress(self.shared[key]))
        assert isinstance(obj, GlobalModel | NeuralModel)
        return obj


@dataclass(frozen=True)
class Report:
    """What a backtest or a fit found over many series."""

    choices: list[Choice]
    overall: dict[ModelKind, Errors]
    chosen: Errors
    wins: dict[ModelKind, int]


def report(choices: Sequence[Choice]) -> Report:
    """Per candidate, its errors averaged over series; the choice's errors; wins per model."""
    kinds = list(dict.fromkeys(kind for c in choices for kind in c.scores))
    overall = {
        kind: average([c.scores[kind] for c in choices if kind in c.scores]) for kind in kinds
    }
    wins = Counter(c.model for c in choices)
    return Report(list(choices), overall, average([c.errors for c in choices]), dict(wins))


def choose_and_fit(
    series: Prepared,
    kinds: Sequence[ModelKind],
    plan: Plan,
    known: Mapping[ModelKind, Errors] | None = None,
) -> tuple[Choice, FittedSeries]:
    """Backtests the candidates (when there are several; a global one's errors from `known`),
    then fits the winner on all of the series (blocking, CPU). A global winner is fitted later,
    across series (`fit_globals`); the series names it."""
    if len(kinds) > 1:
        choice = backtest(series, kinds, plan, known)
    else:
        choice = _only(series, kinds, plan, known)
    chosen = ensembles.members(choice.scores, plan.metric) if choice.model is ENSEMBLE else ()
    return choice, fit_series(series, choice.model, plan.horizon, chosen, plan.prophet)


def _only(
    series: Prepared,
    kinds: Sequence[ModelKind],
    plan: Plan,
    known: Mapping[ModelKind, Errors] | None,
) -> Choice:
    """One candidate: backtested too, for its errors, when the series is long enough."""
    try:
        check_length(series, kinds, plan)
    except InvalidArgument:
        nan = float("nan")
        return Choice(series.id, kinds[0], None, 0.0, {kinds[0]: Errors(nan, nan, nan)})
    return backtest(series, kinds, plan, known)


def shared_key(kind: ModelKind, group: learners.Group) -> str:
    """The key of a global model in a fitted set."""
    seasons = ",".join(str(s) for s in group.seasons)
    exogenous = f"/{','.join(group.exogenous)}" if group.exogenous else ""
    return f"{kind.value}/{group.frequency}/{seasons}{exogenous}"


def fit_series(
    series: Prepared,
    kind: ModelKind,
    horizon: int = 0,
    members: Sequence[ModelKind] = (),
    prophet: ProphetOptions | None = None,
) -> FittedSeries:
    """`kind` fitted on all of the series (Prophet with `prophet`); for a global model, a
    reference to the shared model its group gets (`fit_globals`); for the ensemble, its
    `members` fitted so.

    Raises:
        InvalidArgument: The series is too short for the model; an ensemble of fewer than two.
    """
    if kind is ENSEMBLE:
        if len(members) < ensembles.MIN_MEMBERS:
            raise InvalidArgument.for_field("models", "an ensemble needs two members or more")
        fitted = tuple(fit_series(series, m, horizon, prophet=prophet) for m in members)
        return FittedSeries(
            series.id, kind, None, series.last, series.frequency, (), members=fitted
        )
    check_fit_length(series, kind, horizon)
    if kind in GLOBAL:
        group = learners.group_of(series)
        key = shared_key(kind, group)
        columns = group.exogenous if kind in USES_EXOGENOUS else ()
        return FittedSeries(series.id, kind, None, series.last, series.frequency, columns, key)
    uses = uses_exogenous(series, kind, prophet)
    dates = series.grid(len(series.y))
    model = fit(kind, series.seasons, series.y, series.x if uses else None, dates, prophet)
    return FittedSeries(
        series.id,
        kind,
        model,
        series.last,
        series.frequency,
        series.exogenous if uses else (),
    )


def uses_exogenous(series: Prepared, kind: ModelKind, prophet: ProphetOptions | None) -> bool:
    """Whether `kind` is fitted on the series' exogenous columns (Prophet: unless its options
    leave them out)."""
    if kind is ModelKind.PROPHET and prophet is not None and not prophet.regressors:
        return False
    return kind in USES_EXOGENOUS and series.x is not None


def future_matrix(
    names: Sequence[str],
    future: Mapping[str, np.ndarray],
    horizon: int,
    where: str,
    kind: ModelKind,
) -> np.ndarray | None:
    """The exogenous values over the horizon as a matrix, columns in `names` order.

    Raises:
        InvalidArgument: A column missing, of the wrong length, or not finite.
    """
    if not names or kind not in USES_EXOGENOUS:
        return None
    columns = []
    for name in names:
        column = np.asarray(future.get(name, ()), dtype=np.float64)
        if len(column) != horizon or not np.isfinite(column).all():
            raise InvalidArgument.for_field(
                where, f"needs {horizon} finite values of exogenous column {name!r}"
            )
        columns.append(column)
    return np.column_stack(columns)


def fit_globals(
    series: Sequence[Prepared],
    kinds: Mapping[str, Sequence[ModelKind]],
    wanted: Collection[str],
    horizon: int,
    params: Mapping[ModelKind, learners.Params] | None = None,
) -> dict[str, SharedModel]:
    """The global models named by `wanted` (keys of `shared_key`), each fitted on every series
    of its group that has it among its candidates `kinds` (by id), with conformal intervals for
    `horizon` steps and learner parameters `params[kind]` over the defaults (blocking, CPU)."""
    models = {}
    for kind in sorted(GLOBAL, key=lambda k: k.value):
        members = [s for s in series if kind in kinds[s.id]]
        for group, part in learners.groups(members).items():
            key = shared_key(kind, group)
            if key in wanted:
                ours = (params or {}).get(kind)
                models[key] = learners.fit_global(kind, part, horizon, params=ours)
    return models
