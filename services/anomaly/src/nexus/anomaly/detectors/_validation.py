"""Input checks for the service: every message names the bad field, row and column.

Requests arrive as lists of lists (points of values) or as numpy arrays; these helpers turn them
into finite float64 arrays or raise `InvalidArgument` (malformed) / `ResourceExhausted` (too big).
Field paths follow the request: `points[3].values[1]` is the second value of the fourth point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nexus.anomaly.detectors._types import FloatArray
from nexus.common.errors import InvalidArgument, ResourceExhausted

DEFAULT_MAX_ROWS = 100_000
"""Rows in one matrix unless the caller sets its own limit."""

DEFAULT_MAX_FEATURES = 1_000
"""Values per row unless the caller sets its own limit."""

MatrixLike = np.ndarray[Any, Any] | Sequence[Sequence[float] | np.ndarray[Any, Any]]
"""Points as a 2-D array or a list of rows."""


def validate_matrix(
    x: MatrixLike,
    *,
    field: str = "points",
    n_features: int | None = None,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    max_features: int | None = DEFAULT_MAX_FEATURES,
    row_field: str = "values",
) -> FloatArray:
    """`x` as a finite float64 matrix, one row per point.

    Args:
        x: The points: a 2-D array or a list of equally long lists of numbers.
        field: The request field holding the points, for messages (`points`).
        n_features: The width the model expects; None accepts any (equal) width.
        max_rows: Most rows allowed; None for no limit.
        max_features: Most values per row allowed; None for no limit.
        row_field: The field of a row holding its values (`points[3].values`); "" when a row
            is the list itself (`rows[3]`).

    Raises:
        InvalidArgument: No rows, a row of another length, a width other than `n_features`, a
            value that is not a number, NaN or infinite.
        ResourceExhausted: More rows or values per row than the limits (reason
            REQUEST_TOO_LARGE).
    """
    paths = _Paths(field, row_field)
    rows = _checked_rows(x, field, max_rows)
    return _checked_matrix(rows, paths, n_features, max_features)


def validate_point(
    x: Sequence[float] | np.ndarray[Any, Any],
    *,
    field: str = "point.values",
    n_features: int | None = None,
    max_features: int | None = DEFAULT_MAX_FEATURES,
) -> FloatArray:
    """One point's values as a finite float64 vector (`field[j]` names a bad value).

    Raises:
        InvalidArgument: Not a flat list of numbers, empty, a width other than `n_features`, a
            value that is not a number, NaN or infinite.
        ResourceExhausted: More values than `max_features`.
    """
    if not _is_row(x) or (isinstance(x, np.ndarray) and x.ndim != 1):
        raise InvalidArgument.for_field(field, "must be a flat list of numbers")
    matrix = _checked_matrix([x], _Paths(field, single=True), n_features, max_features)
    return np.ascontiguousarray(matrix[0], dtype=np.float64)


def validate_labels(
    y: Sequence[float] | np.ndarray[Any, Any], n_rows: int, *, field: str = "labels"
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Labels as 0 (normal) / 1 (anomaly), one per row.

    Raises:
        InvalidArgument: Another count than `n_rows`, or a label other than 0 and 1.
    """
    try:
        labels = np.asarray(y, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidArgument.for_field(field, "must be a list of 0/1 labels") from None
    if labels.shape[0] != n_rows:
        raise InvalidArgument.for_field(field, f"has {labels.shape[0]} labels for {n_rows} points")
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise InvalidArgument.for_field(
            f"{field}[{bad[0]}]", f"is {labels[bad[0]]}; labels are 0 (normal) or 1 (anomaly)"
        )
    return labels.astype(np.int64)


class _Paths:
    """Field paths of rows and values: `points[3].values` and `points[3].values[1]`.

    A single point (`single`) is its own row: `point.values` and `point.values[1]`.
    """

    def __init__(self, field: str, row_field: str = "", *, single: bool = False) -> None:
        self.field = field
        self.row_field = row_field
        self.single = single

    def row(self, i: int) -> str:
        if self.single:
            return self.field
        return f"{self.field}[{i}].{self.row_field}" if self.row_field else f"{self.field}[{i}]"

    def value(self, i: int, j: int) -> str:
        return f"{self.row(i)}[{j}]"


def _checked_matrix(
    rows: MatrixLike, paths: _Paths, n_features: int | None, max_features: int | None
) -> FloatArray:
    width = _checked_width(rows, paths, n_features)
    if max_features is not None and width > max_features:
        raise ResourceExhausted.too_large(f"{paths.row(0)} (values)", width, max_features)
    matrix = _as_floats(rows, paths)
    _check_finite(matrix, paths)
    return matrix


def _checked_rows(x: MatrixLike, field: str, max_rows: int | None) -> MatrixLike:
    if isinstance(x, np.ndarray) and x.ndim != 2:
        raise InvalidArgument.for_field(
            field, f"must be a list of points (a 2-D matrix), got {x.ndim} dimension(s)"
        )
    if len(x) == 0:
        raise InvalidArgument.for_field(field, "is empty; send at least one point")
    if max_rows is not None and len(x) > max_rows:
        raise ResourceExhausted.too_large(f"{field} (rows)", len(x), max_rows)
    return x


def _checked_width(rows: MatrixLike, paths: _Paths, n_features: int | None) -> int:
    """The common row width; every row must have it (and it must be `n_features` when given)."""
    widths = [rows.shape[1]] * len(rows) if isinstance(rows, np.ndarray) else _widths(rows, paths)
    expected = widths[0] if n_features is None else n_features
    for i, width in enumerate(widths):
        if width == 0:
            raise InvalidArgument.for_field(paths.row(i), "has no values")
        if width != expected:
            problem = _width_problem(width, expected, paths, n_features)
            raise InvalidArgument.for_field(paths.row(i), problem)
    return expected


def _width_problem(width: int, expected: int, paths: _Paths, n_features: int | None) -> str:
    if n_features is not None:
        return f"has {width} values; the model expects {n_features}"
    return f"has {width} values where {paths.row(0)} has {expected}"


def _widths(rows: Sequence[Any], paths: _Paths) -> list[int]:
    widths = []
    for i, row in enumerate(rows):
        if not _is_row(row):
            raise InvalidArgument.for_field(paths.row(i), "must be a list of numbers")
        widths.append(len(row))
    return widths


def _as_floats(rows: MatrixLike, paths: _Paths) -> FloatArray:
    try:
        return np.ascontiguousarray(np.asarray(rows, dtype=np.float64))
    except (TypeError, ValueError):
        i, j = _first_non_number(rows)
        raise InvalidArgument.for_field(paths.value(i, j), "is not a number") from None


def _first_non_number(rows: MatrixLike) -> tuple[int, int]:
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            try:
                float(value)
            except (TypeError, ValueError):
                return i, j
    return 0, 0


def _check_finite(matrix: FloatArray, paths: _Paths) -> None:
    bad = ~np.isfinite(matrix)
    if not bad.any():
        return
    i, j = (int(k) for k in np.argwhere(bad)[0])
    what = "is NaN" if np.isnan(matrix[i, j]) else "is infinite"
    raise InvalidArgument.for_field(paths.value(i, j), what)


def _is_row(row: object) -> bool:
    return hasattr(row, "__len__") and not isinstance(row, str | bytes)
