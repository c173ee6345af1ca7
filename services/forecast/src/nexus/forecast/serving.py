"""A fitted set as the model runtime serves it: the signed set loads whole, each series' model
is unpacked on first use and kept (least recently used first out); a global model several series
share is unpacked on the first of them and kept while the set is loaded; an ensemble's members
forecast as the series' own models do, and their forecasts are combined (ADR 0044)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from nexus.common.errors import InvalidArgument, NotFound
from nexus.common.runtime import Model, ModelSource
from nexus.forecast.forecasting import (
    FittedSeries,
    FittedSet,
    Forecast,
    ModelKind,
    SharedModel,
    ensembles,
    future_matrix,
)

FRAMEWORK = "nexus-forecast"
"""The registry framework of the fitted sets the service registers."""

Futures = Mapping[str, Mapping[str, np.ndarray]]
Request = tuple[Sequence[str], int, Sequence[float], Futures]
"""Series ids, horizon, levels, future exogenous values per series."""
Result = tuple[str, ModelKind, pd.DatetimeIndex, Forecast]


class ServedSet(Model[Request, list[Result]]):
    """One registered fitted set.

    Args:
        source: The registry version to load.
        cache_size: Most series models kept unpacked.
    """

    def __init__(self, source: ModelSource, cache_size: int) -> None:
        super().__init__(source)
        self._cache_size = cache_size
        self._set: FittedSet | None = None
        self._unpacked: OrderedDict[str, FittedSeries] = OrderedDict()
        self._shared: dict[str, SharedModel] = {}
        self._lock = threading.Lock()

    async def load(self) -> None:
        """Fetches and verifies the signed set; series stay packed until asked for.

        Raises:
            InvalidArgument: The artifact is not a fitted set.
        """
        fitted = await self.source.signed_object()
        if not isinstance(fitted, FittedSet):
            raise InvalidArgument(
                f"model {self.source.name} version {self.source.version} is not a fitted set"
            )
        self._set = fitted

    @property
    def horizon(self) -> int:
        """The horizon the set was fitted for."""
        return self._fitted().horizon

    def series(self, series_id: str) -> FittedSeries:
        """One series' model, unpacked on first use (blocking).

        Raises:
            NotFound: The set holds no such series.
        """
        with self._lock:
            if (found := self._unpacked.get(series_id)) is not None:
                self._unpacked.move_to_end(series_id)
                return found
        fitted = self._fitted()
        if series_id not in fitted.packed:
            raise NotFound(
                f"model {self.source.name} version {self.source.version} has no series "
                f"{series_id!r}"
            )
        unpacked = fitted.unpack(series_id)
        with self._lock:
            self._unpacked[series_id] = unpacked
            while len(self._unpacked) > self._cache_size:
                self._unpacked.popitem(last=False)
        return unpacked

    def shared(self, key: str) -> SharedModel:
        """A global model of the set, unpacked on first use (blocking)."""
        with self._lock:
            if (found := self._shared.get(key)) is not None:
                return found
        model = self._fitted().unpack_shared(key)
        with self._lock:
            return self._shared.setdefault(key, model)

    def predict(self, inputs: Request) -> list[Result]:
        """Forecasts the series asked for, in order (those of one global model in one call, an
        ensemble's global members among them)."""
        series_ids, horizon, levels, futures = inputs
        fitted = [self.series(series_id) for series_id in series_ids]
        wheres = [_where(series_id, i, futures) for i, series_id in enumerate(series_ids)]
        shared = [
            (p, w)
            for f, w in zip(fitted, wheres, strict=True)
            for p in f.members or (f,)
            if p.shared
        ]
        pooled = self._pooled(shared, horizon, levels, futures)
        results = []
        for series_id, one, where in zip(series_ids, fitted, wheres, strict=True):
            future = futures.get(series_id, {})
            found = [
                pooled.get((p.shared, series_id)) or p.forecast(horizon, levels, future, where)[1]
                for p in one.members or (one,)
            ]
            forecast = ensembles.combine(found) if one.members else found[0]
            results.append((series_id, one.kind, one.horizon_index(horizon), forecast))
        return results

    def _pooled(
        self,
        fitted: Sequence[tuple[FittedSeries, str]],
        horizon: int,
        levels: Sequence[float],
        futures: Futures,
    ) -> dict[tuple[str, str], Forecast]:
        """Forecasts of series of global models (an ensemble's members among them) by (model,
        series id), one call per model; each series' future exogenous values checked first
        (`where`: its field in the request)."""
        by_key: dict[str, dict[str, np.ndarray | None]] = {}
        for f, where in fitted:
            given = futures.get(f.series_id, {})
            x = future_matrix(f.exogenous, given, horizon, where, f.kind)
            by_key.setdefault(f.shared, {})[f.series_id] = x
        found: dict[tuple[str, str], Forecast] = {}
        for key, xs in by_key.items():
            known = {i: x for i, x in xs.items() if x is not None}
            forecasts = self.shared(key).forecast(list(xs), horizon, levels, known)
            found.update({(key, series_id): f for series_id, f in forecasts.items()})
        return found

    def count(self, inputs: Request) -> int:
        """One prediction per series."""
        return len(inputs[0])

    def unload(self) -> None:
        """Lets go of the set and the unpacked series."""
        with self._lock:
            self._unpacked.clear()
            self._shared.clear()
        self._set = None

    def _fitted(self) -> FittedSet:
        assert self._set is not None, "load() first"
        return self._set


def _where(series_id: str, position: int, futures: Futures) -> str:
    """The request field a series' future exogenous values are checked under."""
    return f"futures[{series_id}]" if series_id in futures else f"series_ids[{position}]"
