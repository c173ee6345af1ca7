"""Fitted sets: the model each series won, fitted on all of its history, packed per series so
that a served set unpacks a series' model only when it is first asked for."""

from __future__ import annotations

import pickle
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting.backtest import (
    Choice,
    Plan,
    backtest,
    check_fit_length,
    check_length,
)
from nexus.forecast.forecasting.metrics import Errors, average
from nexus.forecast.forecasting.models import USES_EXOGENOUS, ModelKind
from nexus.forecast.forecasting.predicting import Forecast, fit, predict
from nexus.forecast.forecasting.series import Prepared


@dataclass(frozen=True)
class FittedSeries:
    """One series' fitted model and what forecasting from it needs."""

    series_id: str
    kind: ModelKind
    model: Any
    last: pd.Timestamp
    frequency: str
    exogenous: tuple[str, ...]

    def forecast(
        self, horizon: int, levels: Sequence[float], future: Mapping[str, np.ndarray], where: str
    ) -> tuple[pd.DatetimeIndex, Forecast]:
        """The next `horizon` steps (blocking).

        Raises:
            InvalidArgument: Exogenous values over the horizon missing or of the wrong length.
        """
        x_future = future_matrix(self.exogenous, future, horizon, where, self.kind)
        index = pd.date_range(self.last, periods=horizon + 1, freq=self.frequency)[1:]
        return index, predict(self.kind, self.model, horizon, levels, x_future)


@dataclass
class FittedSet:
    """A fit's result, registered as one model version: per-series models, packed."""

    horizon: int
    packed: dict[str, bytes] = field(default_factory=dict)
    """Series id -> zlib-compressed pickle of its FittedSeries (inside the signed artifact)."""

    def add(self, fitted: FittedSeries) -> None:
        """Packs one series' model."""
        self.packed[fitted.series_id] = zlib.compress(pickle.dumps(fitted), 1)

    def unpack(self, series_id: str) -> FittedSeries:
        """One series' model. Safe: the packed bytes come from the set's signed artifact."""
        obj = pickle.loads(zlib.decompress(self.packed[series_id]))
        assert isinstance(obj, FittedSeries)
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
    series: Prepared, kinds: Sequence[ModelKind], plan: Plan
) -> tuple[Choice, FittedSeries]:
    """Backtests the candidates (when there are several), then fits the winner on all of the
    series (blocking, CPU)."""
    choice = backtest(series, kinds, plan) if len(kinds) > 1 else _only(series, kinds, plan)
    return choice, fit_series(series, choice.model)


def _only(series: Prepared, kinds: Sequence[ModelKind], plan: Plan) -> Choice:
    """One candidate: backtested too, for its errors, when the series is long enough."""
    try:
        check_length(series, kinds, plan)
    except InvalidArgument:
        nan = float("nan")
        return Choice(series.id, kinds[0], None, 0.0, {kinds[0]: Errors(nan, nan, nan)})
    return backtest(series, kinds, plan)


def fit_series(series: Prepared, kind: ModelKind) -> FittedSeries:
    """`kind` fitted on all of the series.

    Raises:
        InvalidArgument: The series is too short for the model.
    """
    check_fit_length(series, kind)
    uses = kind in USES_EXOGENOUS and series.x is not None
    model = fit(kind, series.seasons, series.y, series.x if uses else None)
    return FittedSeries(
        series.id,
        kind,
        model,
        series.last,
        series.frequency,
        series.exogenous if uses else (),
    )


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
