"""The detector contract: fit on unlabelled points, score new ones, higher is more anomalous."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from nexus.anomaly.detectors._algorithm import Algorithm
from nexus.anomaly.detectors._params import ParamSpec, parse_params
from nexus.anomaly.detectors._types import FloatArray, Params, ParamValue


class Detector(ABC):
    """An unsupervised anomaly detector.

    Subclasses declare `algorithm` and `PARAMS`; the constructor validates `params` against them,
    so a bad parameter fails before any training starts. Inputs are finite float64 matrices
    (rows are points); `AnomalyModel` validates and standardises them before they get here.

    Args:
        params: Overrides of the declared parameters' defaults.
        seed: Seeds every random choice, so equal data and seed give equal scores.
        field: Where `params` sits in the request, for error messages.

    Raises:
        InvalidArgument: An unknown parameter or a value out of its range.
    """

    algorithm: ClassVar[Algorithm]
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = ()

    def __init__(
        self, params: Params | None = None, *, seed: int = 0, field: str = "params"
    ) -> None:
        self._params = parse_params(self.PARAMS, params, field=field)
        self.seed = seed

    @property
    def params(self) -> dict[str, ParamValue]:
        """Every parameter's value in effect (defaults included), for the registry's metadata."""
        return dict(self._params)

    @abstractmethod
    def fit(self, x: FloatArray) -> None:
        """Learns what normal looks like from `x` (n_rows x n_features; may hold outliers)."""

    @abstractmethod
    def score(self, x: FloatArray) -> FloatArray:
        """Anomaly scores of the rows of `x`: a 1-D float64 array, higher is more anomalous."""

    def fit_score(self, x: FloatArray) -> FloatArray:
        """Fits on `x` and returns the training rows' scores.

        Detectors whose in-sample scores are biased (LOF counts a point as its own neighbour)
        override this to return their unbiased training scores.
        """
        self.fit(x)
        return self.score(x)

    def training_metrics(self) -> dict[str, float]:
        """Figures the fit learnt that users may want beside the model's metrics (the
        ensemble's member weights); none by default."""
        return {}

    def _int(self, name: str) -> int:
        return int(self._params[name])

    def _float(self, name: str) -> float:
        return float(self._params[name])

    def _str(self, name: str) -> str:
        return str(self._params[name])


def as_scores(values: object) -> FloatArray:
    """A detector's raw output as a contiguous 1-D float64 score vector."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.float64).reshape(-1))
