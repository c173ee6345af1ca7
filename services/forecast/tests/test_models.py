"""Real fits on simulated series: intervals cover at their nominal rate, the automatic choice
picks the model that generated the series, the errors are the M4 organisers'."""

from __future__ import annotations

import numpy as np
import pytest
from forecast_testing import hourly, local_level, seasonal_random_walk

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting import (
    ModelKind,
    Plan,
    SeriesOptions,
    backtest,
    choose_and_fit,
    forecast_once,
    mase,
    mase_scale,
    prepare,
    report,
    smape,
)

LEVELS = (80.0, 95.0)


def _coverage(
    kind: ModelKind, series: list[np.ndarray], season: int, horizon: int
) -> dict[float, float]:
    inside: dict[float, list[bool]] = {level: [] for level in LEVELS}
    for y in series:
        history, actual = y[:-horizon], y[-horizon:]
        forecast = forecast_once(kind, (season,), history, horizon, LEVELS)
        for level, (lower, upper) in forecast.intervals.items():
            inside[level].extend((actual >= lower) & (actual <= upper))
    return {level: float(np.mean(hits)) for level, hits in inside.items()}


def test_seasonal_naive_intervals_cover_at_their_level_on_its_own_process() -> None:
    """300 seasonal random walks, 12 steps each (3,600 independent checks: a standard error of
    under 0.01); tolerance 0.03."""
    rng = np.random.default_rng(7)
    series = [seasonal_random_walk(72, 12, rng) for _ in range(300)]

    covered = _coverage(ModelKind.SEASONAL_NAIVE, series, 12, 12)

    assert covered[80.0] == pytest.approx(0.80, abs=0.03)
    assert covered[95.0] == pytest.approx(0.95, abs=0.03)


def test_auto_ets_intervals_cover_at_their_level_on_a_local_level() -> None:
    """120 local-level series (ETS A,N,N), 6 steps each; steps of one series are correlated, so
    the tolerance is wider: 0.06 at 80 %, 0.04 at 95 %."""
    rng = np.random.default_rng(11)
    series = [local_level(80, rng) for _ in range(120)]

    covered = _coverage(ModelKind.AUTO_ETS, series, 1, 6)

    assert covered[80.0] == pytest.approx(0.80, abs=0.06)
    assert covered[95.0] == pytest.approx(0.95, abs=0.04)


def test_the_automatic_choice_picks_the_generating_model() -> None:
    """8 seasonal random walks (seasonal naive is their model) and 8 local levels (ETS A,N,N);
    a backtest of two windows may be unlucky on a series, so at least 7 of 8 each."""
    rng = np.random.default_rng(3)
    seasonal = [hourly(seasonal_random_walk(96, 12, rng, sd=0.5), f"srw{i}") for i in range(8)]
    level = [hourly(local_level(96, rng, noise_sd=2.0), f"ll{i}") for i in range(8)]
    options = SeriesOptions(season_length=12)
    plan = Plan(horizon=12, windows=2, levels=LEVELS)
    kinds = (ModelKind.SEASONAL_NAIVE, ModelKind.AUTO_ETS)

    choices = [backtest(prepare(s, options, 0), kinds, plan) for s in seasonal + level]
    summary = report(choices)

    assert sum(c.model is ModelKind.SEASONAL_NAIVE for c in choices[:8]) >= 7
    assert sum(c.model is ModelKind.AUTO_ETS for c in choices[8:]) >= 7
    assert all(c.margin_percent > 0 and c.runner_up is not None for c in choices)
    assert sum(summary.wins.values()) == 16
    assert summary.chosen.mase <= min(e.mase for e in summary.overall.values())


def test_a_fitted_series_forecasts_what_a_one_off_fit_does() -> None:
    y = seasonal_random_walk(60, 12, np.random.default_rng(5))
    prepared = prepare(hourly(y), SeriesOptions(season_length=12), 0)
    plan = Plan(horizon=6, windows=1, levels=(90.0,))

    choice, fitted = choose_and_fit(prepared, (ModelKind.AUTO_THETA,), plan)
    index, forecast = fitted.forecast(6, (90.0,), {}, "x")
    once = forecast_once(ModelKind.AUTO_THETA, (12,), y, 6, (90.0,))

    assert choice.model is ModelKind.AUTO_THETA
    np.testing.assert_allclose(forecast.mean, once.mean)
    np.testing.assert_allclose(forecast.intervals[90.0][0], once.intervals[90.0][0])
    assert index[0] == prepared.last + (prepared.grid(2)[1] - prepared.grid(2)[0])


def test_a_series_too_short_for_its_season_is_refused_with_what_it_needs() -> None:
    prepared = prepare(hourly(np.arange(40.0)), SeriesOptions(), 0)  # hourly: a 24-step season
    with pytest.raises(InvalidArgument) as refused:
        backtest(prepared, (ModelKind.AUTO_ETS,), Plan(horizon=12, windows=2))
    assert refused.value.violations[0].field == "series.values"
    assert "has 40 values" in refused.value.violations[0].description


def test_errors_are_the_m4_definitions() -> None:
    actual, forecast = np.array([100.0, 200.0]), np.array([110.0, 180.0])
    history = np.array([1.0, 2.0, 4.0, 7.0])  # season 1: steps of 1, 2, 3 -> scale 2

    assert smape(actual, forecast) == pytest.approx(100 * (20 / 210 + 40 / 380) / 2)
    assert mase_scale(history, 1) == pytest.approx(2.0)
    assert mase(actual, forecast, 2.0) == pytest.approx(7.5)
    assert mase_scale(history, 2) == pytest.approx(4.0)
