"""The windowed Gaussian: NAB's simplest baseline, kept as a cheap, well-understood choice.

A value's likelihood is how far into a normal distribution's tails it lies, the distribution
being the mean and standard deviation of a window of recent values (re-estimated every `step`
values once the window is full). It knows nothing of seasonality or level shifts; it is here to be
beaten, and as a check of the NAB scorer (its published score is reproducible exactly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from nexus.anomaly.detectors._params import ParamSpec, integer
from nexus.anomaly.detectors._types import Params
from nexus.anomaly.detectors.online._base import OnlineDetector, State, state_bytes

_STD_FLOOR = 1e-6


class WindowedGaussian(OnlineDetector):
    """Likelihood = 1 - two-sided tail probability of a value under the window's normal."""

    KIND = "windowed_gaussian"
    DEFAULT_THRESHOLD = 0.9999
    DESCRIPTION = "Normal tail probability against a sliding window's mean and deviation"
    PARAMS = (
        ParamSpec("window", 6400, integer(2, 100_000), "Values the distribution is estimated on"),
        ParamSpec("step", 100, integer(1, 100_000), "Values between re-estimates once full"),
    )

    def __init__(
        self,
        params: Params | None = None,
        *,
        field: str = "params",
        state_budget: int | None = None,
    ) -> None:
        super().__init__(params, field=field, state_budget=state_budget)
        self._window_size = int(self.params["window"])
        self._step = int(self.params["step"])
        self._check_budget(f"{field}.window")
        self._window: list[float] = []
        self._pending: list[float] = []
        self._mean = 0.0
        self._std = 1.0

    def update(self, value: float) -> float:
        likelihood = 0.0
        if self._window:
            z = abs(value - self._mean) / self._std
            likelihood = 1.0 - 0.5 * math.erfc(z / math.sqrt(2.0))
        if len(self._window) < self._window_size:
            self._window.append(value)
            self._estimate()
        else:
            self._pending.append(value)
            if len(self._pending) >= self._step:
                self._window = self._window[len(self._pending) :] + self._pending
                self._pending = []
                self._estimate()
        return likelihood

    def _estimate(self) -> None:
        window = np.asarray(self._window)
        self._mean = float(window.mean())
        self._std = float(window.std()) or _STD_FLOOR

    def state_bound(self) -> int:
        return state_bytes(8 * self._window_size, 8 * (self._step - 1))  # window, pending

    def get_state(self) -> State:
        return {"window": np.asarray(self._window), "pending": np.asarray(self._pending)}

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        try:
            window = [float(v) for v in np.asarray(state["window"], dtype=np.float64).ravel()]
            pending = [float(v) for v in np.asarray(state["pending"], dtype=np.float64).ravel()]
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"not a windowed Gaussian's state: {err}") from None
        if len(window) > self._window_size or len(pending) >= self._step:
            raise ValueError("state larger than this detector's window")
        self._window, self._pending = window, pending
        if window:
            self._estimate()
