"""Machine-learning models global across many series (mlforecast: LightGBM, XGBoost).

One model learns from every series of a group (the same frequency and seasons) on features
mlforecast computes per series: lags (1 to a season, then whole seasons up to the longest
seasonality), rolling means over a season, calendar features of the frequency; the target is
Box-Cox transformed per series (when every value of the group is positive), differenced at the
season and scaled per series, so series of any level and scale train one model. Forecasts are
recursive; the intervals are mlforecast's conformal ones (`PredictionIntervals`, per series and
step, from up to MAX_CONFORMAL_WINDOWS windows of the horizon held out at fit time).

A series' exogenous columns are dynamic features of the model (ADR 0045): series with the same
columns train together, and a forecast needs the columns' values over the horizon.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlforecast import MLForecast
from mlforecast.lag_transforms import RollingMean
from mlforecast.target_transforms import Differences, LocalBoxCox, LocalStandardScaler
from mlforecast.utils import PredictionIntervals

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting.models import GLOBAL, ModelKind
from nexus.forecast.forecasting.predicting import Forecast
from nexus.forecast.forecasting.series import Prepared

MIN_CONFORMAL_WINDOWS = 2
"""mlforecast needs two held-out windows to calibrate intervals."""
MAX_CONFORMAL_WINDOWS = 20
"""Held-out windows of the horizon for the conformal intervals, as many as the shortest series
of a group allows up to this (each costs a horizon of history; more windows, finer quantiles)."""
SHORT_LAGS = 24
"""Lags 1..min(season, SHORT_LAGS); then whole seasons."""
MIN_SEASONS_OF_LAGS = 2
"""Seasonal lags reach the longest seasonality, and two seasons at least."""
ROUNDS = 300
LEARNING_RATE = 0.05
LEAVES = 63


@dataclass(frozen=True)
class Group:
    """Series one global model learns from together: one frequency, the same seasons, the same
    exogenous columns."""

    frequency: str
    seasons: tuple[int, ...]
    exogenous: tuple[str, ...] = ()


def group_of(series: Prepared) -> Group:
    """The group a series trains in."""
    exogenous = series.exogenous if series.x is not None else ()
    return Group(series.frequency, series.seasons, exogenous)


def positive(series: Sequence[Prepared]) -> bool:
    """Whether every value is positive (Box-Cox applies)."""
    return all(bool((s.y > 0).all()) for s in series)


def lags(seasons: tuple[int, ...]) -> list[int]:
    """The lags a model of these seasons sees."""
    season = max(seasons[0], 1)
    found = set(range(1, min(season, SHORT_LAGS) + 1))
    reach = max(max(seasons), MIN_SEASONS_OF_LAGS * season)
    found.update(range(season, reach + 1, season))
    found.update(s for s in seasons[1:] if s > 1)
    return sorted(found)


def feature_need(seasons: tuple[int, ...]) -> int:
    """Values a series needs before its first complete row of features."""
    return max(lags(seasons)) + max(seasons[0], 1) + 1


def min_length(seasons: tuple[int, ...], horizon: int) -> int:
    """Fewest values a series is fitted on: its features, a few rows to learn from, and the
    conformal windows (two at least)."""
    return feature_need(seasons) + max(seasons[0], 8) + MIN_CONFORMAL_WINDOWS * max(horizon, 1)


def date_features(frequency: str) -> list[str]:
    """The calendar features that vary at a frequency."""
    offset = pd.tseries.frequencies.to_offset(frequency)
    try:
        step = pd.Timedelta(offset)
    except ValueError:  # months, quarters, years: calendar steps
        name = offset.name.upper()
        return ["quarter"] if name.startswith(("Q", "BQ")) else ["month"] if "M" in name else []
    if step < pd.Timedelta(days=1):
        return ["hour", "dayofweek"]
    if step == pd.Timedelta(days=1):
        return ["dayofweek", "month"]
    return ["month"] if step <= pd.Timedelta(days=31) else []


Params = Mapping[str, float]
"""Learner parameters that override the defaults (`DEFAULTS`), such as a tuning trial's."""
DEFAULTS: dict[ModelKind, dict[str, float]] = {
    ModelKind.LIGHTGBM: {
        "n_estimators": ROUNDS,
        "learning_rate": LEARNING_RATE,
        "num_leaves": LEAVES,
    },
    ModelKind.XGBOOST: {"n_estimators": ROUNDS, "learning_rate": LEARNING_RATE, "max_depth": 6},
}
INTEGER = frozenset({"n_estimators", "num_leaves", "max_depth"})


def parameters(kind: ModelKind, params: Params | None = None) -> dict[str, Any]:
    """The learner parameters of `kind`: the defaults, overridden by `params` (integers where
    the learner wants them)."""
    merged = {**DEFAULTS[kind], **(params or {})}
    return {k: round(v) if k in INTEGER else float(v) for k, v in merged.items()}


def learner(kind: ModelKind, params: Params | None = None) -> Any:
    """A fresh regressor of `kind` (one thread: the service runs many fits side by side)."""
    if kind is ModelKind.LIGHTGBM:
        from lightgbm import LGBMRegressor

        return LGBMRegressor(**parameters(kind, params), n_jobs=1, random_state=0, verbosity=-1)
    from xgboost import XGBRegressor

    return XGBRegressor(**parameters(kind, params), tree_method="hist", n_jobs=1, random_state=0)


def build(
    kind: ModelKind, group: Group, boxcox: bool = False, params: Params | None = None
) -> MLForecast:
    """A fresh mlforecast pipeline of `kind` for a group's series (Box-Cox first when asked:
    it needs positive values; learner parameters `params` over the defaults)."""
    season = max(group.seasons[0], 1)
    windows: dict[int, list[Any]] = {1: [RollingMean(window_size=max(season, 2))]}
    if season > 1:
        windows[season] = [RollingMean(window_size=season)]
    return MLForecast(
        models={kind.value: learner(kind, params)},
        freq=group.frequency,
        lags=lags(group.seasons),
        lag_transforms=windows,
        date_features=date_features(group.frequency),
        target_transforms=[
            *([LocalBoxCox()] if boxcox else []),  # type: ignore[no-untyped-call]  # untyped
            Differences([season]),
            LocalStandardScaler(),
        ],
        num_threads=1,
    )


def frame(series: Sequence[Prepared], lengths: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Series in mlforecast's long format, exogenous columns after `y`, each cut to
    `lengths[id]` values when given."""
    parts = []
    for s in series:
        n = lengths[s.id] if lengths else len(s.y)
        columns = _columns(group_of(s).exogenous, s.x[:n] if s.x is not None else None)
        parts.append(pd.DataFrame({"unique_id": s.id, "ds": s.grid(n), "y": s.y[:n], **columns}))
    return pd.concat(parts, ignore_index=True)


def _columns(names: Sequence[str], x: np.ndarray | None) -> dict[str, np.ndarray]:
    return {name: x[:, i] for i, name in enumerate(names)} if x is not None else {}


Futures = Mapping[str, np.ndarray]
"""Exogenous values over the horizon by series id: a matrix of horizon rows, one column per
exogenous column of the group (in its order)."""


@dataclass
class GlobalModel:
    """A fitted global model: forecasts any series it was fitted on."""

    kind: ModelKind
    forecaster: MLForecast
    horizon: int
    """The longest horizon its intervals were calibrated for."""
    series_ids: frozenset[str]
    exogenous: tuple[str, ...] = ()
    """The exogenous columns it learned from; forecasts need their future values."""

    def forecast(
        self,
        series_ids: Sequence[str],
        horizon: int,
        levels: Sequence[float],
        futures: Futures | None = None,
    ) -> dict[str, Forecast]:
        """The next `horizon` steps of each series (blocking), with the exogenous columns'
        values over the horizon `futures` (checked by the caller, `fitting.future_matrix`).

        Raises:
            InvalidArgument: Intervals asked for beyond the calibrated horizon.
        """
        if levels and not self.horizon:
            raise InvalidArgument.for_field(
                "levels", f"{self.kind.value} was fitted without intervals (series too short)"
            )
        if levels and horizon > self.horizon:
            raise InvalidArgument.for_field(
                "horizon",
                f"{self.kind.value} intervals were calibrated for {self.horizon} steps; "
                f"{horizon} asked (refit with the longer horizon, or ask for no levels)",
            )
        windows = self.forecaster.prediction_intervals.n_windows if levels else 0
        asked = {level: conformal_level(level, windows) for level in levels}
        ids = list(dict.fromkeys(series_ids))
        out = self.forecaster.predict(
            h=horizon,
            level=sorted(set(asked.values())) or None,
            ids=ids,
            X_df=self._future_frame(ids, horizon, futures or {}),
        )
        return _forecasts(out, self.kind.value, asked)

    def _future_frame(self, ids: list[str], horizon: int, futures: Futures) -> pd.DataFrame | None:
        if not self.exogenous:
            return None
        grid = pd.DataFrame(self.forecaster.make_future_dataframe(horizon))
        grid = grid[grid["unique_id"].isin(ids)]
        parts = []
        for series_id, rows in grid.groupby("unique_id", sort=False):
            values = _columns(self.exogenous, futures[str(series_id)])
            parts.append(rows.assign(**values))
        return pd.concat(parts, ignore_index=True)


def conformal_level(level: float, windows: int) -> float:
    """The level to ask mlforecast for so that its interval is split conformal's.

    mlforecast's "conformal_distribution" takes, per series and step, the linear-interpolated
    quantile of the 2k values {+-s_i} of its k held-out absolute errors: with few windows that
    interval falls short of the level (about 68 % at 80 % with 5 windows, measured). Split
    conformal's interval reaches out to the ceil((k + 1) * level)-th smallest error, which covers
    at least the level when errors are exchangeable; it is the quantile at position k - 1 + j of
    the 2k sorted values. A level above k / (k + 1) needs more windows than there are: the
    interval is then the widest error (ADR 0033).
    """
    j = min(int(np.ceil((windows + 1) * level / 100 - 1e-9)), windows)
    q = (windows - 1 + j) / (2 * windows - 1)
    return round(200 * q - 100, 9)


def _forecasts(out: pd.DataFrame, column: str, asked: Mapping[float, float]) -> dict[str, Forecast]:
    found = {}
    for series_id, rows in out.groupby("unique_id", sort=False):
        intervals = {
            level: (
                rows[f"{column}-lo-{inner}"].to_numpy(np.float64),
                rows[f"{column}-hi-{inner}"].to_numpy(np.float64),
            )
            for level, inner in asked.items()
        }
        found[str(series_id)] = Forecast(rows[column].to_numpy(np.float64), intervals)
    return found


def fit_global(
    kind: ModelKind,
    series: Sequence[Prepared],
    horizon: int,
    lengths: Mapping[str, int] | None = None,
    intervals: bool = True,
    params: Params | None = None,
) -> GlobalModel:
    """`kind` fitted on every series of one group, cut to `lengths` when given (blocking, CPU).

    Conformal intervals are calibrated for `horizon` steps on as many held-out windows as the
    shortest series allows, up to MAX_CONFORMAL_WINDOWS.
    """
    if kind not in GLOBAL:
        raise ValueError(f"{kind.value} is not a global model")
    group = group_of(series[0])
    data = frame(series, lengths)
    shortest = int(data.groupby("unique_id").size().min())
    pi = _conformal(group, shortest, horizon) if intervals else None
    forecaster = build(kind, group, positive(series), params).fit(
        data, prediction_intervals=pi, static_features=[]
    )
    ids = frozenset(s.id for s in series)
    return GlobalModel(kind, forecaster, horizon if pi else 0, ids, group.exogenous)


def _conformal(group: Group, shortest: int, horizon: int) -> PredictionIntervals | None:
    room = (shortest - feature_need(group.seasons) - max(group.seasons[0], 8)) // max(horizon, 1)
    windows = min(MAX_CONFORMAL_WINDOWS, room)
    return PredictionIntervals(n_windows=windows, h=horizon) if windows >= 2 else None


def groups(series: Sequence[Prepared]) -> dict[Group, list[Prepared]]:
    """Series by the group they train in, in their order."""
    found: dict[Group, list[Prepared]] = {}
    for s in series:
        found.setdefault(group_of(s), []).append(s)
    return found
