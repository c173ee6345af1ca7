"""Isolation Forest, One-Class SVM and LOF on scikit-learn, with PyOD's defaults.

The defaults are those of PyOD's `IForest`, `OCSVM` and `LOF` (the detectors behind the published
ODDS benchmark that `bench/anomaly_odds.py` compares against). Scores are sklearn's, negated so
that higher means more anomalous, as PyOD does.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

from nexus.anomaly.detectors._algorithm import Algorithm
from nexus.anomaly.detectors._base import Detector, as_scores
from nexus.anomaly.detectors._params import ParamSpec, boolean, choice, either, integer, number
from nexus.anomaly.detectors._types import FloatArray


class IsolationForestDetector(Detector):
    """Isolation Forest: anomalies are isolated by fewer random splits (sklearn)."""

    algorithm: ClassVar[Algorithm] = Algorithm.ISOLATION_FOREST
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("n_estimators", 100, integer(1, 10_000), "number of trees"),
        ParamSpec(
            "max_samples",
            "auto",
            either(
                choice("auto"),
                integer(1),
                number(0.0, 1.0, open_below=True),
                expected="'auto', a row count >= 1 or a fraction in (0, 1]",
            ),
            "rows drawn per tree: 'auto' = min(256, n_rows), a count, or a fraction",
        ),
        ParamSpec(
            "max_features", 1.0, number(0.0, 1.0, open_below=True), "fraction of features per tree"
        ),
        ParamSpec("bootstrap", False, boolean(), "draw rows with replacement"),
    )

    def fit(self, x: FloatArray) -> None:
        """Grows the forest on `x`."""
        self._forest = IsolationForest(
            n_estimators=self._int("n_estimators"),
            max_samples=self._params["max_samples"],
            max_features=self._float("max_features"),
            bootstrap=bool(self._params["bootstrap"]),
            random_state=self.seed,
            n_jobs=1,
        ).fit(x)
        self._paths = PathLengths(self._forest)

    def score(self, x: FloatArray) -> FloatArray:
        """Negated sklearn `score_samples` (shorter average path, higher score), computed from
        per-tree path-length tables."""
        if getattr(self, "_paths", None) is None:  # a forest pickled before the tables existed
            self._paths = PathLengths(self._forest)
        return as_scores(self._paths.anomaly_scores(x))

    def __getstate__(self) -> dict[str, Any]:
        """The pickled state leaves out the tables: they are rebuilt on the first score."""
        return {k: v for k, v in self.__dict__.items() if k != "_paths"}


class PathLengths:
    """The average path length of rows in a fitted `IsolationForest`, as sklearn computes it,
    from one table per tree (path length of each node, leaf correction included): a row costs
    one `apply` per tree and one look-up. sklearn's `score_samples` runs each tree through its
    joblib wrapper, which costs about 0.1 ms per tree and call whatever the row count: three
    quarters of scoring a small request.

    Args:
        forest: A fitted forest.
    """

    def __init__(self, forest: IsolationForest) -> None:
        n_features = forest.n_features_in_
        self._trees = [
            (tree.tree_, None if len(features) == n_features else np.asarray(features))
            for tree, features in zip(forest.estimators_, forest.estimators_features_, strict=True)
        ]
        self._lengths = [_node_path_lengths(tree.tree_) for tree in forest.estimators_]
        self._norm = len(self._trees) * float(
            _average_path_length(np.array([forest.max_samples_]))[0]
        )

    def anomaly_scores(self, x: FloatArray) -> FloatArray:
        """2 ** (-mean path length / c(max_samples)): sklearn's `-score_samples(x)`."""
        rows = np.ascontiguousarray(x, dtype=np.float32)
        depths = np.zeros(len(rows))
        for (tree, features), lengths in zip(self._trees, self._lengths, strict=True):
            subset = rows if features is None else np.ascontiguousarray(rows[:, features])
            depths += lengths[tree.apply(subset)]
        if self._norm == 0:
            return np.ones(len(rows))
        return np.asarray(2.0 ** (-depths / self._norm))


def _node_path_lengths(tree: Any) -> FloatArray:
    """Per node: its depth plus the expected path length of the samples left in it."""
    depth = np.zeros(tree.node_count)
    for node in range(tree.node_count):  # children come after their parent
        for child in (tree.children_left[node], tree.children_right[node]):
            if child >= 0:
                depth[child] = depth[node] + 1
    return depth + _average_path_length(tree.n_node_samples.astype(np.float64))


def _average_path_length(n: FloatArray) -> FloatArray:
    """c(n): the average path length of an unsuccessful search in a binary tree of n samples
    (Liu et al. 2008; sklearn's `_average_path_length`)."""
    lengths = np.zeros(n.shape)
    lengths[n == 2] = 1.0
    big = n > 2
    m = n[big]
    lengths[big] = 2.0 * (np.log(m - 1.0) + np.euler_gamma) - 2.0 * (m - 1.0) / m
    return lengths


class OneClassSVMDetector(Detector):
    """One-Class SVM: the support of the normal data, learnt with a kernel (libsvm via sklearn)."""

    algorithm: ClassVar[Algorithm] = Algorithm.ONE_CLASS_SVM
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("kernel", "rbf", choice("rbf", "linear", "poly", "sigmoid"), "kernel function"),
        ParamSpec(
            "nu", 0.5, number(0.0, 1.0, open_below=True), "bound on the outside fraction, (0, 1]"
        ),
        ParamSpec(
            "gamma",
            "auto",
            either(
                choice("auto", "scale"),
                number(0.0, open_below=True),
                expected="'auto', 'scale' or a number > 0",
            ),
            "kernel coefficient: 'auto' = 1 / n_features (PyOD's default), 'scale', or a number",
        ),
        ParamSpec("degree", 3, integer(1, 10), "degree of the 'poly' kernel"),
        ParamSpec("coef0", 0.0, number(-1e6, 1e6), "independent term of 'poly' and 'sigmoid'"),
        ParamSpec("tol", 1e-3, number(0.0, open_below=True), "stopping tolerance"),
        ParamSpec("max_iter", -1, integer(-1), "solver iteration limit, -1 for none"),
    )

    def fit(self, x: FloatArray) -> None:
        """Solves the one-class SVM on `x`."""
        self._svm = OneClassSVM(
            kernel=self._str("kernel"),
            nu=self._float("nu"),
            gamma=self._params["gamma"],
            degree=self._int("degree"),
            coef0=self._float("coef0"),
            tol=self._float("tol"),
            max_iter=self._int("max_iter"),
        ).fit(x)

    def score(self, x: FloatArray) -> FloatArray:
        """Negated signed distance to the boundary: outside the support scores higher."""
        return as_scores(-self._svm.decision_function(x))


class LocalOutlierFactorDetector(Detector):
    """Local Outlier Factor: a point's density relative to its neighbours' (sklearn, novelty)."""

    algorithm: ClassVar[Algorithm] = Algorithm.LOCAL_OUTLIER_FACTOR
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("n_neighbors", 20, integer(1, 10_000), "neighbours that define the locality"),
        ParamSpec(
            "algorithm",
            "auto",
            choice("auto", "ball_tree", "kd_tree", "brute"),
            "nearest-neighbour search",
        ),
        ParamSpec("leaf_size", 30, integer(1, 10_000), "leaf size of the search tree"),
        ParamSpec("p", 2, integer(1, 100), "Minkowski power: 1 Manhattan, 2 Euclidean"),
    )

    def fit(self, x: FloatArray) -> None:
        """Indexes `x`; with fewer rows than neighbours, every other row is a neighbour."""
        self._lof = LocalOutlierFactor(
            # sklearn would clip this itself, with a warning per fit.
            n_neighbors=max(1, min(self._int("n_neighbors"), x.shape[0] - 1)),
            algorithm=self._str("algorithm"),
            leaf_size=self._int("leaf_size"),
            p=self._int("p"),
            novelty=True,
            n_jobs=1,
        ).fit(x)

    def score(self, x: FloatArray) -> FloatArray:
        """The LOF of each row against the training points (about 1 inside, larger outside)."""
        return as_scores(-self._lof.score_samples(x))

    def fit_score(self, x: FloatArray) -> FloatArray:
        """Fits and returns the training rows' own LOF, each computed without itself."""
        self.fit(x)
        return as_scores(-self._lof.negative_outlier_factor_)
