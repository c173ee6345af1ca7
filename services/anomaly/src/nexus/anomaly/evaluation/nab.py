"""NAB's scoring of a streaming detector, as the benchmark documents it.

A detector sees each series once, in order, and gives every row an anomaly score. The first 15%
of a series (at most 750 rows) is its probationary period and is not scored. A row scored at or
above the threshold is a detection:
- inside a labelled anomaly window, the window's earliest detection is a true positive worth
  `tp * S(p) / S(-1)`, where p = -(right - i + 1) / width is the row's position relative to the
  window's right edge and S(x) = 2 / (1 + e^(5x)) - 1 (the scaled sigmoid; S(x) = -1 past x = 3);
  later detections in the window add nothing, and a window without one costs `fn`;
- outside every window it is a false positive costing `fp * S(d)` (a negative number), d being
  its distance past the preceding window's right edge over that window's width - 1, or -1 * fp
  when no window precedes it.
The raw score sums these over the corpus; the threshold is the one that maximises it for the
profile, all series together; the reported score is 100 * (raw - null) / (perfect - null),
where null detects nothing and perfect detects every window at its first row (`tp` per
labelled window).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

PROBATION_SHARE = 0.15
PROBATION_CAP_ROWS = 5000
_OUTSIDE = -1
_PROBATION = -2


@dataclass(frozen=True)
class CostProfile:
    """One application profile: the weights of a true positive, false positive and miss."""

    name: str
    tp: float
    fp: float
    fn: float


PROFILES = (
    CostProfile("standard", tp=1.0, fp=0.11, fn=1.0),
    CostProfile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    CostProfile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
)
"""NAB's three profiles (its config/profiles.json)."""


@dataclass(frozen=True)
class LabelledSeries:
    """One series: its name, values in time order and anomaly windows as row ranges [l, r]."""

    name: str
    values: npt.NDArray[np.float64]
    windows: tuple[tuple[int, int], ...]

    @property
    def probation(self) -> int:
        """Rows at the start that are not scored."""
        n = len(self.values)
        return math.ceil(min(math.floor(PROBATION_SHARE * n), PROBATION_SHARE * PROBATION_CAP_ROWS))


@dataclass(frozen=True)
class ProfileScore:
    """A detector's result for one profile."""

    profile: str
    score: float
    threshold: float
    raw: float
    true_positives: int
    false_positives: int
    missed: int


def scaled_sigmoid(position: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """S(x) = 2 / (1 + e^(5x)) - 1, and -1 beyond x = 3."""
    value = 2.0 / (1.0 + np.exp(np.clip(5.0 * position, -700, 700))) - 1.0
    return np.where(position > 3.0, -1.0, value)


class ScoredCorpus:
    """The series of a corpus, with every row's weight and window under each profile.

    Args:
        series: The labelled series (window row ranges inside each series).
    """

    def __init__(self, series: Sequence[LabelledSeries]) -> None:
        self.series = tuple(series)
        self.labelled_windows = sum(len(s.windows) for s in self.series)
        window_ids, tp_shape, fp_shape = [], [], []
        first_id = 0
        for s in self.series:
            ids, tp_part, fp_part = _row_shapes(s, first_id)
            window_ids.append(ids)
            tp_shape.append(tp_part)
            fp_shape.append(fp_part)
            first_id += len(s.windows)
        self._window = np.concatenate(window_ids)
        self._tp_shape = np.concatenate(tp_shape)
        self._fp_shape = np.concatenate(fp_shape)
        self._scored_windows = np.unique(self._window[self._window >= 0])

    def score(
        self, scores: Sequence[npt.NDArray[np.float64]], profile: CostProfile
    ) -> ProfileScore:
        """NAB's score of per-row anomaly `scores` (one array per series, in order), with the
        threshold that maximises it for `profile`."""
        flat = self._flatten(scores)
        order = np.argsort(-flat, kind="stable")
        scorable = order[self._window[order] != _PROBATION]
        thresholds = flat[scorable]
        windows = self._window[scorable].tolist()
        tp_weights = (profile.tp * self._tp_shape[scorable]).tolist()
        fp_weights = (profile.fp * self._fp_shape[scorable]).tolist()
        best_tp: dict[int, float] = {}
        fp_total, tp_total, fp_count = 0.0, 0.0, 0
        missed = len(self._scored_windows)
        best = (-missed * profile.fn, 1.1, 0, 0, missed)
        # every distinct score, highest first: rows at or above it are detections
        ends = {int(e) - 1 for e in np.flatnonzero(np.diff(thresholds) != 0) + 1}
        ends.add(len(scorable) - 1)
        for row, window in enumerate(windows):
            if window < 0:
                fp_total += fp_weights[row]
                fp_count += 1
            elif window not in best_tp:
                best_tp[window] = tp_weights[row]
                tp_total += tp_weights[row]
                missed -= 1
            elif tp_weights[row] > best_tp[window]:
                tp_total += tp_weights[row] - best_tp[window]
                best_tp[window] = tp_weights[row]
            if row in ends:
                raw = tp_total - profile.fn * missed + fp_total
                if raw > best[0]:
                    best = (raw, float(thresholds[row]), len(best_tp), fp_count, missed)
        raw_score, threshold, *counts = best
        return self._result(profile, (raw_score, counts[0], counts[1], counts[2]), threshold)

    def score_flags(
        self, flags: Sequence[npt.NDArray[np.bool_]], profile: CostProfile, threshold: float
    ) -> ProfileScore:
        """NAB's score of a detector's flags (rows it reports as anomalies)."""
        flat = self._flatten(flags).astype(bool)
        detected = np.flatnonzero(flat & (self._window != _PROBATION))
        return self._result(profile, self._raw(detected, profile), threshold)

    def null_score(self, profile: CostProfile) -> float:
        """The raw score of detecting nothing."""
        return -profile.fn * len(self._scored_windows)

    def normalise(self, raw: float, profile: CostProfile) -> float:
        """100 * (raw - null) / (perfect - null)."""
        null = self.null_score(profile)
        perfect = profile.tp * self.labelled_windows
        return 100.0 * (raw - null) / (perfect - null)

    def _raw(
        self, detected: npt.NDArray[np.int64], profile: CostProfile
    ) -> tuple[float, int, int, int]:
        windows = self._window[detected]
        inside = windows >= 0
        fp_total = profile.fp * float(self._fp_shape[detected[~inside]].sum())
        best_tp = np.full(self._window.max(initial=-1) + 1, -np.inf)
        np.maximum.at(best_tp, windows[inside], self._tp_shape[detected[inside]])
        hit = best_tp[self._scored_windows]
        found = np.isfinite(hit)
        tp_total = profile.tp * float(hit[found].sum())
        missed = int((~found).sum())
        raw = tp_total - profile.fn * missed + fp_total
        return raw, int(found.sum()), int((~inside).sum()), missed

    def _result(
        self, profile: CostProfile, raw: tuple[float, int, int, int], threshold: float
    ) -> ProfileScore:
        return ProfileScore(
            profile.name, self.normalise(raw[0], profile), threshold, raw[0], *raw[1:]
        )

    def _flatten(self, parts: Sequence[npt.NDArray[np.generic]]) -> npt.NDArray[np.float64]:
        if len(parts) != len(self.series):
            raise ValueError(f"{len(parts)} score arrays for {len(self.series)} series")
        for part, s in zip(parts, self.series, strict=True):
            if len(part) != len(s.values):
                raise ValueError(f"{s.name}: {len(part)} scores for {len(s.values)} rows")
        return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])


def _row_shapes(
    series: LabelledSeries, first_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per row: its window id (or outside/probation), its true-positive weight (of tp=1) and
    its false-positive sign-and-size (of fp=1, negative)."""
    n = len(series.values)
    rows = np.arange(n)
    window = np.full(n, _OUTSIDE, dtype=np.int64)
    tp_shape = np.zeros(n)
    fp_shape = np.full(n, -1.0)
    max_tp = float(scaled_sigmoid(np.array([-1.0]))[0])
    previous: tuple[int, int] | None = None
    for index, (left, right) in enumerate(series.windows):
        width = right - left + 1
        inside = slice(left, right + 1)
        window[inside] = first_id + index
        position = -(right - rows[inside] + 1) / width
        tp_shape[inside] = scaled_sigmoid(position) / max_tp
        if previous is not None:
            _after(fp_shape, rows, previous, left)
        previous = (right, width)
    if previous is not None:
        _after(fp_shape, rows, previous, n)
    window[: series.probation] = _PROBATION
    return window, tp_shape, fp_shape


def _after(
    fp_shape: npt.NDArray[np.float64],
    rows: npt.NDArray[np.int64],
    previous: tuple[int, int],
    end: int,
) -> None:
    right, width = previous
    span = slice(right + 1, end)
    fp_shape[span] = scaled_sigmoid(np.abs(right - rows[span]) / max(width - 1, 1))


def suppressed_flags(
    likelihood: npt.NDArray[np.float64], threshold: float, suppress: int
) -> npt.NDArray[np.bool_]:
    """Rows flagged at `threshold` when a flag silences the next `suppress` rows (as a source's
    detector does)."""
    flags = np.zeros(len(likelihood), dtype=bool)
    candidates = np.flatnonzero(likelihood >= threshold)
    quiet_until = -1
    for row in candidates.tolist():
        if row > quiet_until:
            flags[row] = True
            quiet_until = row + suppress
    return flags


def load_corpus(root: Path, names: Iterable[str] | None = None) -> list[LabelledSeries]:
    """NAB's layout: `data/<category>/<file>.csv` (timestamp,value) and
    `labels/combined_windows.json` (windows as timestamp pairs), optionally only `names`."""
    labels: Mapping[str, list[list[str]]] = json.loads(
        (root / "labels" / "combined_windows.json").read_text()
    )
    wanted = sorted(labels) if names is None else list(names)
    return [_load_series(root, name, labels[name]) for name in wanted]


def _load_series(root: Path, name: str, windows: list[list[str]]) -> LabelledSeries:
    times: list[datetime] = []
    values: list[float] = []
    with (root / "data" / name).open(newline="") as handle:
        for row in csv.DictReader(handle):
            times.append(datetime.fromisoformat(row["timestamp"]))
            values.append(float(row["value"]))
    index = {t: i for i, t in enumerate(times)}
    rows = tuple(
        (index[datetime.fromisoformat(start)], index[datetime.fromisoformat(end)])
        for start, end in windows
    )
    return LabelledSeries(name, np.asarray(values), rows)
