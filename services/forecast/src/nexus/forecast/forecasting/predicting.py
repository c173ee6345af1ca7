"""One model's forecast of one series: the mean and an interval per level."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting.models import USES_EXOGENOUS, ModelKind, build

if TYPE_CHECKING:
    from nexus.forecast.forecasting.prophet_model import ProphetOptions

FloatArray = np.ndarray


@dataclass(frozen=True)
class Forecast:
    """A forecast: the mean per step and (lower, upper) per level."""

    mean: FloatArray
    intervals: Mapping[float, tuple[FloatArray, FloatArray]] = field(default_factory=dict)


def forecast_once(
    kind: ModelKind,
    seasons: tuple[int, ...],
    y: FloatArray,
    horizon: int,
    levels: Sequence[float],
    x: FloatArray | None = None,
    x_future: FloatArray | None = None,
    dates: pd.DatetimeIndex | None = None,
    options: ProphetOptions | None = None,
) -> Forecast:
    """Fits `kind` on `y` and forecasts `horizon` steps, without keeping the fitted model
    (Prophet: on `dates`, the timestamps of `y` and the horizon, with `options`)."""
    if kind is ModelKind.PROPHET:
        from nexus.forecast.forecasting import prophet_model

        assert dates is not None, "Prophet needs the timestamps"
        given = options or prophet_model.ProphetOptions()
        return prophet_model.forecast_once(dates, y, horizon, levels, x, x_future, given)
    model = build(kind, seasons)
    exogenous = _exogenous(kind, x, x_future)
    out = model.forecast(y=y, h=horizon, level=list(levels) or None, **exogenous)
    return to_forecast(out, levels)


def fit(
    kind: ModelKind,
    seasons: tuple[int, ...],
    y: FloatArray,
    x: FloatArray | None,
    dates: pd.DatetimeIndex | None = None,
    options: ProphetOptions | None = None,
) -> Any:
    """`kind` fitted on `y` (and x, for a model that uses exogenous columns; Prophet: at
    `dates`, with `options`)."""
    if kind is ModelKind.PROPHET:
        from nexus.forecast.forecasting import prophet_model

        assert dates is not None, "Prophet needs the timestamps"
        given = options or prophet_model.ProphetOptions()
        return prophet_model.fit(dates, y, x, given, dates.freqstr or "")
    model = build(kind, seasons)
    return model.fit(y=y, X=x) if kind in USES_EXOGENOUS and x is not None else model.fit(y=y)


def predict(
    kind: ModelKind,
    fitted: Any,
    horizon: int,
    levels: Sequence[float],
    x_future: FloatArray | None,
) -> Forecast:
    """A fitted model's forecast."""
    if kind is ModelKind.PROPHET:
        return fitted.predict(horizon, levels, x_future)  # type: ignore[no-any-return]
    if kind in USES_EXOGENOUS and x_future is not None:
        out = fitted.predict(h=horizon, X=x_future, level=list(levels) or None)
    else:
        out = fitted.predict(h=horizon, level=list(levels) or None)
    return to_forecast(out, levels)


def check_calibrated(
    kind: ModelKind, calibrated: int, horizon: int, levels: Sequence[float]
) -> None:
    """Refuses intervals from a global model beyond the horizon they were calibrated for (0:
    fitted without intervals).

    Raises:
        InvalidArgument: Naming levels or horizon.
    """
    if levels and not calibrated:
        raise InvalidArgument.for_field(
            "levels", f"{kind.value} was fitted without intervals (series too short)"
        )
    if levels and horizon > calibrated:
        raise InvalidArgument.for_field(
            "horizon",
            f"{kind.value} intervals were calibrated for {calibrated} steps; "
            f"{horizon} asked (refit with the longer horizon, or ask for no levels)",
        )


def to_forecast(out: Mapping[str, FloatArray], levels: Sequence[float]) -> Forecast:
    """statsforecast's dict ("mean", "lo-80.0", "hi-80.0") as a Forecast."""
    intervals = {
        level: (np.asarray(out[f"lo-{level}"]), np.asarray(out[f"hi-{level}"])) for level in levels
    }
    return Forecast(np.asarray(out["mean"], dtype=np.float64), intervals)


def _exogenous(
    kind: ModelKind, x: FloatArray | None, x_future: FloatArray | None
) -> dict[str, FloatArray]:
    if kind not in USES_EXOGENOUS or x is None or x_future is None:
        return {}
    return {"X": x, "X_future": x_future}
