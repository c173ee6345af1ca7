"""The ensemble: several detectors, each calibrated on its own training scores, weighed by how
much it agrees with the others, then combined.

Raw scores of different detectors live on unrelated scales (a path length, a density ratio, a
squared error). Each member's score is therefore turned into a *surprise*: minus the log of the
share of training scores at or above it. Below the top `TAIL_SHARE` of the training scores that
share is read off the training scores themselves; beyond it an exponential tail fitted to the
training scores above that level extends it, so a point far outside the training range keeps
counting as more surprising the further out it is. No labels are involved, and every member's
surprise means the same thing: 2.3 (-log 0.1) is where the top tenth of training scores starts.

The members fail in different places, and no single one is best everywhere. Each member's weight
is its agreement with the rest, measured on the training rows: its loading in a one-factor model
of the members' rank correlations (each member's ranking = a common anomalousness + its own
error), divided by the largest loading, so the most agreeing member weighs 1. A member that sees
what the others see keeps its voice; one whose ranking of the training rows is noise, or
unrelated to the others', is turned down or silenced (weight 0 at no correlation).

The default combination is the weighted maximum of the surprises: a point is as anomalous as
the member that finds it most surprising, and a member with weight 0.5 must be twice as
surprised to speak for it. See docs/adr/0022-ensemble-weights.md and bench/anomaly_odds.py for
what this gains and where it still trails its best member.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from scipy.stats import rankdata

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
"""Every single detector: each is the best one on some ODDS sets (see the ADRs)."""

COMBINATIONS = ("max", "mean")
WEIGHTINGS = ("agreement", "equal")
TAIL_SHARE = 0.1
"""The share of the highest training scores whose spread sets the exponential tail."""

_LEVELS = 257
_MIN_STD = 1e-12
_FACTOR_ITERATIONS = 200
_FACTOR_TOLERANCE = 1e-9


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


class TailSurprise:
    """A member's raw scores as surprise, -log P(training score >= s), calibrated on the
    member's own training scores.

    Up to the (1 - `TAIL_SHARE`) quantile the probability is the training scores' empirical
    one, read from 257 quantiles (so the stored model stays small whatever the training size);
    beyond it the tail is exponential with the mean excess of the training scores above that
    quantile as its scale, so the surprise grows linearly with the score and never saturates.

    Args:
        train: The member's scores of its training rows.
    """

    def __init__(self, train: FloatArray) -> None:
        shares = np.linspace(0.0, 1.0 - TAIL_SHARE, _LEVELS)
        levels = np.quantile(train, shares)
        last_of_ties = np.r_[levels[1:] > levels[:-1], True]
        self.levels = levels[last_of_ties]
        self.shares = shares[last_of_ties]
        self.start = float(self.levels[-1])
        self.scale = _tail_scale(train, self.start)

    def __call__(self, raw: FloatArray) -> FloatArray:
        """The surprise of each raw score: 0 at or below the training minimum, -log
        `TAIL_SHARE` at the tail's start, then one more per `scale` of score."""
        below = np.interp(raw, self.levels, self.shares, left=0.0, right=1.0 - TAIL_SHARE)
        tail = -np.log(TAIL_SHARE) + (raw - self.start) / self.scale
        return as_scores(np.where(raw > self.start, tail, -np.log1p(-below)))


class ZScore:
    """A member's raw scores in deviations from its training mean: how ensembles trained
    before the tail calibration normalised (kept so that their stored models score as before).
    """

    def __init__(self, mean: float, std: float) -> None:
        self.mean = mean
        self.std = std

    def __call__(self, raw: FloatArray) -> FloatArray:
        """`(raw - mean) / std`."""
        return as_scores((raw - self.mean) / self.std)


def agreement_weights(train_scores: FloatArray) -> FloatArray:
    """Each member's weight from its training scores alone (one row per member).

    The members' rankings of the training rows are modelled as one common factor, how
    anomalous a row is, plus each member's own independent error (a one-factor model of their
    Spearman correlations, fitted by principal axes on the off-diagonal correlations). A
    member's loading on the factor is its estimated correlation with that common
    anomalousness; weights are the loadings over the largest, with a loading of zero or less
    weighing 0. Unlike a correlation with the other members' mean, a member that ranks rows
    backwards cannot drag the others down: it just loads negatively. With fewer than three
    members the model cannot tell members apart, and each weighs 1.
    """
    count = train_scores.shape[0]
    if count < 3:
        return np.ones(count)
    ranks = np.vstack([rankdata(row) for row in train_scores])
    loadings = _one_factor(_correlations(ranks))
    best = float(loadings.max())
    if best <= 0:
        return np.ones(count)
    return np.asarray(np.clip(loadings, 0.0, None) / best)


class EnsembleDetector(Detector):
    """Combines fitted-together member detectors through their weighted training-calibrated
    surprises.

    Build it with `make_detector(Algorithm.ENSEMBLE, params)`, which parses `members`,
    `combination`, `weighting` and the members' own parameters (`"<member>.<param>"`).

    Args:
        members: The member detectors, unfitted, by algorithm.
        params: The ensemble's own parameters (`combination`, `weighting`; `members` is
            informational).
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
        ParamSpec(
            "combination",
            "max",
            choice(*COMBINATIONS),
            "how weighted surprises combine: max, mean",
        ),
        ParamSpec(
            "weighting",
            "agreement",
            choice(*WEIGHTINGS),
            "member weights: agreement (loading in a one-factor model of the members' rank "
            "correlations on the training rows) or equal",
        ),
    )

    def __init__(
        self, members: Mapping[Algorithm, Detector], params: Params | None = None, *, seed: int = 0
    ) -> None:
        super().__init__(params, seed=seed)
        self.members = dict(members)
        self.weights: dict[Algorithm, float] = {}
        self._normalisers: dict[Algorithm, TailSurprise | ZScore] = {}

    @property
    def params(self) -> dict[str, ParamValue]:
        """The ensemble's parameters and every member's, as `"<member>.<param>"`."""
        own = {**self._params, "members": ",".join(a.value for a in self.members)}
        for algorithm, member in self.members.items():
            own |= {f"{algorithm.value}.{k}": v for k, v in member.params.items()}
        return own

    def fit(self, x: FloatArray) -> None:
        """Fits every member on `x`, calibrates its scores and sets its weight."""
        self.fit_score(x)

    def fit_score(self, x: FloatArray) -> FloatArray:
        """Fits the members; returns the combined training scores."""
        raw = np.vstack([member.fit_score(x) for member in self.members.values()])
        self._normalisers = {a: TailSurprise(r) for a, r in zip(self.members, raw, strict=True)}
        agreeing = self._params["weighting"] == "agreement"
        weights = agreement_weights(raw) if agreeing else np.ones(len(raw))
        self.weights = {a: float(w) for a, w in zip(self.members, weights, strict=True)}
        surprises = [self._normalisers[a](r) for a, r in zip(self.members, raw, strict=True)]
        return self._combine(list(self.members), np.vstack(surprises))

    def score(self, x: FloatArray) -> FloatArray:
        """The weighted combination of the members' surprises; members of weight 0 are not
        asked."""
        speaking = [a for a, w in self.weights.items() if w > 0]
        surprises = [self._normalisers[a](self.members[a].score(x)) for a in speaking]
        return self._combine(speaking, np.vstack(surprises))

    def training_metrics(self) -> dict[str, float]:
        """Each member's weight, as `weight.<member>`."""
        return {f"weight.{a.value}": w for a, w in self.weights.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Loads the pickle of this or an earlier version: ensembles stored before the
        weights existed kept one `(mean, std)` per member and took the plain maximum (or
        mean) of z-scores, and score exactly so still."""
        if "_stats" in state:
            stats = state.pop("_stats")
            state["_normalisers"] = {a: ZScore(*s) for a, s in stats.items()}
            state["weights"] = dict.fromkeys(stats, 1.0)
        self.__dict__.update(state)

    def _combine(self, algorithms: list[Algorithm], normalised: FloatArray) -> FloatArray:
        weights = np.array([self.weights[a] for a in algorithms])[:, np.newaxis]
        if self._params["combination"] == "mean":
            return as_scores((weights * normalised).sum(axis=0) / weights.sum())
        return as_scores((weights * normalised).max(axis=0))


def _tail_scale(train: FloatArray, start: float) -> float:
    """The mean excess of training scores above `start`; their deviation (or 1) when nothing
    lies above it or it is too small to divide by."""
    excess = train[train > start] - start
    for scale in (float(excess.mean()) if excess.size else 0.0, float(train.std())):
        if scale > _MIN_STD * max(1.0, abs(start)):
            return scale
    return 1.0


def _correlations(rows: FloatArray) -> FloatArray:
    """Pearson correlations of the rows; a constant row correlates 0 with every other."""
    centred = rows - rows.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred * centred).sum(axis=1))
    unit = centred / np.where(norms > 0, norms, 1.0)[:, np.newaxis]
    return np.asarray(unit @ unit.T)


def _one_factor(correlations: FloatArray) -> FloatArray:
    """Loadings of a one-factor model by iterated principal axes: the diagonal (each member's
    share of common variance) is re-estimated from the loadings until it settles, so only the
    correlations between members shape the factor. The sign is chosen to load positively on
    the whole."""
    off_diagonal = correlations - np.diag(np.diag(correlations))
    shared = np.abs(off_diagonal).max(axis=1)
    for _ in range(_FACTOR_ITERATIONS):
        values, vectors = np.linalg.eigh(off_diagonal + np.diag(shared))
        loadings = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
        settled = np.clip(loadings**2, 0.0, 1.0)
        if np.abs(settled - shared).max() < _FACTOR_TOLERANCE:
            break
        shared = settled
    return np.asarray(loadings if loadings.sum() >= 0 else -loadings)
