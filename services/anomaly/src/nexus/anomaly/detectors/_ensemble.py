"""The ensemble: several detectors, each normalised by its own training scores, then combined.

Raw scores of different detectors live on unrelated scales (a path length, a density ratio, a
squared error), so each member's scores are z-scored with the mean and standard deviation of that
member's scores on the training data; no labels are involved. The default combination is the
maximum: a point is as anomalous as the member that finds it most unusual. Detectors fail in
different places (LOF on global outliers, Isolation Forest and the SVM on local ones), and on the
ODDS benchmark the maximum of z-scores beat their mean, ECDF ranks and median/IQR scaling
(see docs/adr/0003-anomaly-detectors.md and bench/anomaly_odds.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from nexus.anomaly.detectors._algorithm import Algorithm
from nexus.anomaly.detectors._base import Detector, as_scores
from nexus.anomaly.detectors._params import ParamSpec, choice
from nexus.anomaly.detectors._types import FloatArray, Params, ParamValue

DEFAULT_MEMBERS: tuple[Algorithm, ...] = (
    Algorithm.ISOLATION_FOREST,
    Algorithm.LOCAL_OUTLIER_FACTOR,
    Algorithm.ONE_CLASS_SVM,
    Algorithm.AUTOENCODER,
)
"""Every single detector: on ODDS each one helps the maximum somewhere (see the ADR)."""

COMBINATIONS = ("max", "mean")
_MIN_STD = 1e-12


def parse_members(raw: ParamValue) -> list[Algorithm]:
    """The member algorithms named in a comma-separated list.

    Raises:
        ValueError: The list is empty, repeats a member, or names no single detector.
    """
    names = [name.strip().lower() for name in str(raw).split(",") if name.strip()]
    singles = [a.value for a in Algorithm if a is not Algorithm.ENSEMBLE]
    if not names or len(set(names)) != len(names):
        raise ValueError("must list distinct member algorithms")
    unknown = [name for name in names if name not in singles]
    if unknown:
        raise ValueError(f"has unknown member {unknown[0]!r}; members are {', '.join(singles)}")
    return [Algorithm(name) for name in names]


class EnsembleDetector(Detector):
    """Combines fitted-together member detectors through z-scores of their training scores.

    Build it with `make_detector(Algorithm.ENSEMBLE, params)`, which parses `members`,
    `combination` and the members' own parameters (`"<member>.<param>"`).

    Args:
        members: The member detectors, unfitted, by algorithm.
        params: The ensemble's own parameters (`combination`; `members` is informational).
        seed: Recorded for metadata; the members carry their own seeds.
    """

    algorithm: ClassVar[Algorithm] = Algorithm.ENSEMBLE
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec(
            "members",
            ",".join(a.value for a in DEFAULT_MEMBERS),
            lambda raw: ",".join(a.value for a in parse_members(raw)),
            "comma-separated member algorithms; '<member>.<param>' sets a member's parameter",
        ),
        ParamSpec("combination", "max", choice(*COMBINATIONS), "how z-scores combine: max, mean"),
    )

    def __init__(
        self, members: Mapping[Algorithm, Detector], params: Params | None = None, *, seed: int = 0
    ) -> None:
        super().__init__(params, seed=seed)
        self.members = dict(members)

    @property
    def params(self) -> dict[str, ParamValue]:
        """The ensemble's parameters and every member's, as `"<member>.<param>"`."""
        own = {**self._params, "members": ",".join(a.value for a in self.members)}
        for algorithm, member in self.members.items():
            own |= {f"{algorithm.value}.{k}": v for k, v in member.params.items()}
        return own

    def fit(self, x: FloatArray) -> None:
        """Fits every member on `x` and records its training-score mean and deviation."""
        self.fit_score(x)

    def fit_score(self, x: FloatArray) -> FloatArray:
        """Fits the members; returns the combined training scores."""
        self._stats: dict[Algorithm, tuple[float, float]] = {}
        normalised = []
        for algorithm, member in self.members.items():
            raw = member.fit_score(x)
            std = float(raw.std())
            self._stats[algorithm] = (float(raw.mean()), std if std > _MIN_STD else 1.0)
            normalised.append(self._normalise(algorithm, raw))
        return self._combine(np.vstack(normalised))

    def score(self, x: FloatArray) -> FloatArray:
        """The combination of the members' z-scores."""
        normalised = [self._normalise(a, m.score(x)) for a, m in self.members.items()]
        return self._combine(np.vstack(normalised))

    def _normalise(self, algorithm: Algorithm, raw: FloatArray) -> FloatArray:
        mean, std = self._stats[algorithm]
        return (raw - mean) / std

    def _combine(self, normalised: FloatArray) -> FloatArray:
        if self._params["combination"] == "mean":
            return as_scores(normalised.mean(axis=0))
        return as_scores(normalised.max(axis=0))
