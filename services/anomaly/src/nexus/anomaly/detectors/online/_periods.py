"""Finding a series' period: the lag of its autocorrelation's first clear peak.

`ExtremeTails` searches its value window every `period_every` values; a source's detectors make
all of a batch's searches together (`dominant_periods`), windows of one length as one matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nexus.anomaly.detectors.online._jit import compiled

MIN_AUTOCORRELATION = 0.5
"""A period is accepted when the autocorrelation at its lag reaches this."""
PEAK_SHARE = 0.9
"""Peaks within this share of the highest compete, and the shortest lag wins (not a multiple)."""


def dominant_period(values: np.ndarray) -> int:
    """The lag of the autocorrelation's first near-highest peak after it first turns negative,
    if it reaches MIN_AUTOCORRELATION; else 0 (no clear period)."""
    return int(dominant_periods([values])[0])


def dominant_periods(windows: Sequence[np.ndarray]) -> np.ndarray:
    """`dominant_period` of each window, windows of one length as one matrix: each numpy call
    on a large array lets the GIL go, and the thread then waits for it (up to the switch
    interval) while the event loop runs; a source's searches one at a time made hundreds of
    such waits per batch (docs/adr/0047-anomaly-stream-throughput.md). Row by row, the same
    operations in the same order as on one window: the same periods."""
    found = np.zeros(len(windows), dtype=np.int64)
    by_length: dict[int, list[int]] = {}
    for index, window in enumerate(windows):
        by_length.setdefault(len(window), []).append(index)
    for n, rows in by_length.items():
        if n >= 8:
            found[rows] = _periods_of(np.stack([windows[row] for row in rows]))
    return found


def _periods_of(values: np.ndarray) -> np.ndarray:
    """`dominant_period` of each row of `values` (rows of at least 8)."""
    x = values - values.mean(axis=1, keepdims=True)
    n = x.shape[1]
    energy = np.vecdot(x, x)  # a dot product per row, as `x @ x` of one
    spectrum = np.fft.rfft(x, 2 * n, axis=1)
    lags = np.arange(n // 3)
    # per overlapping pair, so that the falling overlap does not pull peaks to shorter lags
    with np.errstate(divide="ignore", invalid="ignore"):  # no energy: no period (below)
        autocorrelation = (
            np.fft.irfft(spectrum * np.conj(spectrum), axis=1)[:, : n // 3]
            * n
            / ((n - lags) * energy[:, None])
        )
    periods = np.zeros(len(values), dtype=np.int64)
    _pick_periods(np.ascontiguousarray(autocorrelation), energy, periods)
    return periods


@compiled
def _pick_periods(
    autocorrelation: np.ndarray, energy: np.ndarray, periods: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Per row of autocorrelations: the lag of the first near-highest peak after they first
    turn negative, if it reaches MIN_AUTOCORRELATION (else 0)."""
    lags = autocorrelation.shape[1]
    for row in range(len(periods)):
        if energy[row] <= 0.0:
            continue
        ac = autocorrelation[row]
        negative = 0
        while negative < lags and not ac[negative] < 0:
            negative += 1
        if negative >= lags - 1:
            continue  # never negative, or only at the last lag
        start = max(2, negative)
        highest = ac[start]
        for lag in range(start + 1, lags):
            if ac[lag] > highest or ac[lag] != ac[lag]:  # NaN wins, as numpy's max
                highest = ac[lag]
        if not highest >= MIN_AUTOCORRELATION:
            continue  # (NaN: overflowed values have no period)
        # the shortest lag that is a local peak nearly as high as the highest: a period, not a
        # multiple
        lag = start
        while not ac[lag] >= PEAK_SHARE * highest:
            lag += 1
        while lag + 1 < lags and ac[lag + 1] > ac[lag]:
            lag += 1
        periods[row] = lag
