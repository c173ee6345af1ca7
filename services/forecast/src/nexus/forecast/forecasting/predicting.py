"""One model's forecast of one series: the mean and an interval per level."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nexus.forecast.forecasting.models import USES_EXOGENOUS, ModelKind, build

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
) -> Forecast:
    """Fits `kind` on `y` and forecasts `horizon` steps, without keeping the fitted model."""
    model = build(kind, seasons)
    exogenous = _exogenous(kind, x, x_future)
    out = model.forecast(y=y, h=horizon, level=list(levels) or None, **exogenous)
    return to_forecast(out, levels)


def fit(kind: ModelKind, seasons: tuple[int, ...], y: FloatArray, x: FloatArray | None) -> Any:
    """`kind` fitted on `y` (and x, for a model that uses exogenous columns)."""
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
    if kind in USES_EXOGENOUS and x_future is not None:
        out = fitted.predict(h=horizon, X=x_future, level=list(levels) or None)
    else:
        out = fitted.predict(h=horizon, level=list(levels) or None)
    return to_forecast(out, levels)


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
