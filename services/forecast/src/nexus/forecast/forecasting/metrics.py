"""Forecast errors, as the M4 organisers compute them: sMAPE in percent, MASE scaled by the
in-sample seasonal naive error; RMSE; interval coverage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FloatArray = np.ndarray


@dataclass(frozen=True)
class Errors:
    """Forecast errors of one model (on one series, or averaged over series)."""

    mase: float
    smape: float
    rmse: float
    coverage: Mapping[float, float] = field(default_factory=dict)
    """Share of actual values inside the interval of each level."""
    windows: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    """The forecasts of the backtest windows these errors come from, oldest first: kept while
    a backtest scores an ensemble from its members (ADR 0044), else ()."""

    def value(self, metric: str) -> float:
        """The error named `metric` ("mase", "smape" or "rmse")."""
        return float(getattr(self, metric))


def smape(actual: FloatArray, forecast: FloatArray) -> float:
    """Symmetric MAPE in percent (0-200); a step where both are 0 counts 0."""
    denominator = np.abs(actual) + np.abs(forecast)
    ratio = np.divide(
        2 * np.abs(actual - forecast),
        denominator,
        out=np.zeros_like(denominator),
        where=denominator > 0,
    )
    return float(100 * ratio.mean())


def mase_scale(history: FloatArray, season: int) -> float:
    """The in-sample mean absolute error of the seasonal naive forecast (naive when the
    history is shorter than a season and one step)."""
    m = season if len(history) > season else 1
    return float(np.mean(np.abs(history[m:] - history[:-m]))) if len(history) > m else 0.0


def mase(actual: FloatArray, forecast: FloatArray, scale: float) -> float:
    """Mean absolute error over `scale`; 0 for a perfect forecast of a flat history, else
    infinite when the scale is 0."""
    mae = float(np.mean(np.abs(actual - forecast)))
    if scale > 0:
        return mae / scale
    return 0.0 if mae == 0 else float("inf")


def rmse(actual: FloatArray, forecast: FloatArray) -> float:
    """Root mean squared error."""
    return float(np.sqrt(np.mean((actual - forecast) ** 2)))


def coverage(actual: FloatArray, lower: FloatArray, upper: FloatArray) -> float:
    """Share of actual values within [lower, upper]."""
    return float(np.mean((actual >= lower) & (actual <= upper)))


def average(errors: Sequence[Errors]) -> Errors:
    """Each error averaged (coverage: per level over the errors that have it)."""
    if not errors:
        return Errors(float("nan"), float("nan"), float("nan"))
    levels = sorted({level for e in errors for level in e.coverage})
    return Errors(
        mase=float(np.mean([e.mase for e in errors])),
        smape=float(np.mean([e.smape for e in errors])),
        rmse=float(np.mean([e.rmse for e in errors])),
        coverage={
            level: float(np.mean([e.coverage[level] for e in errors if level in e.coverage]))
            for level in levels
        },
    )
