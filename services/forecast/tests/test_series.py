"""Series on a grid: frequency inference, the missing-value policy, irregular timestamps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from forecast_testing import START, hourly

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting import Series, SeriesOptions, default_season, prepare


def test_hourly_series_with_a_missing_step_and_a_nan_are_filled() -> None:
    values = np.arange(48, dtype=float)
    values[10] = np.nan
    index = pd.date_range(START, periods=48, freq="h").delete(20)  # step 20 missing

    prepared = prepare(Series("a", index, np.delete(values, 20)), SeriesOptions(), 12)

    assert prepared.frequency == "h"
    assert prepared.season == 24
    assert prepared.filled == 2
    np.testing.assert_allclose(prepared.y, np.arange(48.0))  # a line, interpolated exactly
    assert prepared.horizon_index(2)[0] == START + pd.Timedelta(hours=48)


def test_monthly_series_with_gaps_are_inferred_on_the_calendar() -> None:
    index = pd.date_range("2020-01-01", periods=30, freq="MS").delete([5, 6])
    prepared = prepare(Series("m", index, np.ones(28)), SeriesOptions(), 3)

    assert prepared.frequency == "MS"
    assert prepared.season == 12
    assert len(prepared.y) == 30


def test_leading_missing_values_are_dropped() -> None:
    values = np.r_[np.nan, np.nan, np.arange(30.0)]
    prepared = prepare(hourly(values), SeriesOptions(), 1)

    assert prepared.start == START + pd.Timedelta(hours=2)
    assert len(prepared.y) == 30


@pytest.mark.parametrize(
    ("series", "field", "words"),
    [
        (
            Series(
                "x",
                pd.DatetimeIndex(
                    [
                        "2024-01-01 00:00",
                        "2024-01-01 01:00",
                        "2024-01-01 02:00",
                        "2024-01-01 02:30",
                        "2024-01-01 04:00",
                    ]
                ),
                np.ones(5),
            ),
            "series.timestamps[3]",
            "irregular",
        ),
        (
            Series("x", pd.DatetimeIndex(["2024-01-01", "2024-01-03", "2024-01-02"]), np.ones(3)),
            "series.timestamps[2]",
            "is not after",
        ),
        (
            hourly(np.r_[np.arange(10.0), [np.nan] * 13, np.arange(10.0)]),
            "series.values",
            "13 missing values in a row from step 10",
        ),
        (hourly(np.r_[np.arange(10.0), [np.nan]]), "series.values", "last value is missing"),
        (hourly(np.r_[np.arange(10.0), [np.inf, 1.0]]), "series.values", "infinite"),
        (
            Series("x", pd.date_range(START, periods=3, freq="h"), np.ones(2)),
            "series.values",
            "2 values for 3",
        ),
    ],
)
def test_bad_series_are_refused_naming_the_field(series: Series, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        prepare(series, SeriesOptions(), 12)

    assert refused.value.violations[0].field == field
    assert words in refused.value.violations[0].description


def test_a_given_frequency_must_hold_every_timestamp() -> None:
    index = pd.date_range(START, periods=10, freq="h")
    with pytest.raises(InvalidArgument) as refused:
        prepare(Series("x", index, np.ones(10)), SeriesOptions(frequency="2h"), 1)
    assert refused.value.violations[0].field == "series.timestamps[1]"
    with pytest.raises(InvalidArgument) as unknown:
        prepare(Series("x", index, np.ones(10)), SeriesOptions(frequency="fortnightly"), 1)
    assert unknown.value.violations[0].field == "options.frequency"


@pytest.mark.parametrize(
    ("frequency", "season"),
    [
        ("h", 24),
        ("30min", 48),
        ("D", 7),
        ("W-SUN", 52),
        ("MS", 12),
        ("QE", 4),
        ("YS", 1),
        ("7h", 1),
    ],
)
def test_default_seasons(frequency: str, season: int) -> None:
    assert default_season(frequency) == season
