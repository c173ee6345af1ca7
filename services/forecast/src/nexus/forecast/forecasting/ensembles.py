"""Ensembles: the mean of a series' best other candidates (ADR 0044).

A series' ensemble has as members its `MEMBERS` best other candidates by the backtest's selection
error (finite errors only; at least two, else there is no ensemble). Its forecast is the mean of
its members' forecasts, step by step; its interval at a level is the mean of the members'
lower bounds and the mean of their upper bounds (quantile averaging). In a backtest its errors
come from the members' forecasts of the same windows, so it costs no fit of its own and the
choice compares it with its members on equal terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nexus.forecast.forecasting.metrics import Errors
from nexus.forecast.forecasting.models import ENSEMBLE, ModelKind
from nexus.forecast.forecasting.predicting import Forecast

MEMBERS = 3
"""The most candidates an ensemble combines."""
MIN_MEMBERS = 2


def members(
    scores: Mapping[ModelKind, Errors], metric: str, most: int = MEMBERS
) -> tuple[ModelKind, ...]:
    """The ensemble's members: the `most` best candidates other than the ensemble by `metric`
    (ties: the earlier candidate), finite errors only; () when fewer than two qualify."""
    finite = [k for k in scores if k is not ENSEMBLE and np.isfinite(scores[k].value(metric))]
    best = sorted(finite, key=lambda k: scores[k].value(metric))[:most]  # stable: ties keep order
    return tuple(best) if len(best) >= MIN_MEMBERS else ()


def combine(forecasts: Sequence[Forecast]) -> Forecast:
    """The mean of the forecasts, and per level (those every forecast has) the means of their
    bounds.

    Raises:
        ValueError: No forecasts, or forecasts of different lengths.
    """
    if not forecasts:
        raise ValueError("an ensemble needs members")
    mean = np.mean(np.stack([f.mean for f in forecasts]), axis=0)
    levels = set(forecasts[0].intervals).intersection(*(f.intervals for f in forecasts[1:]))
    intervals = {
        level: (
            np.mean(np.stack([f.intervals[level][0] for f in forecasts]), axis=0),
            np.mean(np.stack([f.intervals[level][1] for f in forecasts]), axis=0),
        )
        for level in sorted(levels)
    }
    return Forecast(mean, intervals)
