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
from nexus.anomaly.detectors.online._jit import compiled


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
        """Negated sklearn `score_samples` (shorter average path, higher score), computed over
        the trees' arrays (`PathLengths`)."""
        return as_scores(self._paths.anomaly_scores(x))

    def __getstate__(self) -> dict[str, Any]:
        """The pickled state leaves out the tables: they are rebuilt when it is loaded."""
        return {k: v for k, v in self.__dict__.items() if k != "_paths"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a pickled detector and builds its tables once, as the model loads."""
        self.__dict__.update(state)
        if "_forest" in state:
            self._paths = PathLengths(self._forest)


class PathLengths:
    """The anomaly scores of a fitted `IsolationForest`, as sklearn's `score_samples` computes
    them (the same sums in the same order: equal scores), from its trees' arrays laid out once
    for one compiled loop that releases the GIL. sklearn's `score_samples` runs each tree
    through its joblib wrapper and `apply`, holding the GIL: 8 us a point in batches of 1,024
    (docs/adr/0050-anomaly-detector-cpu.md).

    Each tree's nodes are renumbered breadth first, so that a node's children are neighbours
    (the right one after the left), and a leaf leads to itself: a row walks every tree for the
    tree's depth without a branch to mispredict (`_path_sums`).

    Args:
        forest: A fitted forest.
    """

    def __init__(self, forest: IsolationForest) -> None:
        n_features = forest.n_features_in_
        layouts = []
        offset = 0
        for estimator, features in zip(
            forest.estimators_, forest.estimators_features_, strict=True
        ):
            columns = None if len(features) == n_features else np.asarray(features)
            layouts.append(_TreeLayout.of(estimator.tree_, columns, offset))
            offset += estimator.tree_.node_count
        self._roots = np.array([layout.root for layout in layouts], dtype=np.int64)
        self._depths = np.array([layout.depth for layout in layouts], dtype=np.int64)
        self._feature, self._threshold, self._child, self._missing_right, self._lengths = (
            np.concatenate(parts)
            for parts in zip(*(layout.arrays for layout in layouts), strict=True)
        )
        self._norm = len(layouts) * _average_path_length(np.array([forest.max_samples_]))[0]
        self.anomaly_scores(np.zeros((1, n_features)))  # compiles the loop now, not on a request

    def anomaly_scores(self, x: FloatArray) -> FloatArray:
        """2 ** (-mean path length / c(max_samples)): sklearn's `-score_samples(x)`."""
        rows = np.ascontiguousarray(x, dtype=np.float32)  # what sklearn's trees compare
        depths = np.empty(len(rows))
        _path_sums(
            rows, self._roots, self._depths, self._feature, self._threshold, self._child,
            self._missing_right, self._lengths, depths,
        )  # fmt: skip
        if self._norm == 0:  # one sample a tree: sklearn takes the ratio as 1
            return np.full(len(rows), 0.5)
        return np.asarray(2.0 ** (-depths / self._norm))


class _TreeLayout:
    """One tree's nodes, breadth first, placed from `offset` among all trees' nodes.

    Attributes:
        root: The root's place.
        depth: The most splits from the root to a leaf.
        arrays: Per node: the column of the row it splits on, its threshold (+inf at a leaf,
            so that a leaf leads to itself), its left child (the right one follows it; itself
            at a leaf), whether a missing value goes right, and its path length with the leaf
            correction.
    """

    def __init__(self, root: int, depth: int, arrays: tuple[np.ndarray, ...]) -> None:
        self.root, self.depth, self.arrays = root, depth, arrays

    @classmethod
    def of(cls, tree: Any, columns: np.ndarray | None, offset: int) -> _TreeLayout:
        """The layout of a fitted sklearn `tree_`; `columns` maps its features to the row's
        (None: the tree was fitted on whole rows)."""
        order, child = _breadth_first(tree)
        n = len(order)
        place = np.empty(n, dtype=np.int64)
        place[order] = np.arange(n)
        leaf = tree.children_left[order] < 0
        feature = np.where(leaf, 0, tree.feature[order]).astype(np.int64)
        if columns is not None:
            feature = columns[feature].astype(np.int64)
        threshold = np.where(leaf, np.inf, tree.threshold[order]).astype(np.float64)
        children = np.where(leaf, np.arange(n), child) + offset
        missing_right = ~leaf & ~_missing_go_to_left(tree)[order]
        lengths, levels = _leaf_path_lengths(tree)
        arrays = (feature, threshold, children, missing_right, lengths[order])
        return cls(offset, int(levels.max()) - 1, arrays)


def _breadth_first(tree: Any) -> tuple[np.ndarray, np.ndarray]:
    """A tree's nodes breadth first (sklearn's indices), and per node in that order its left
    child's place in it (-1 at a leaf)."""
    order = [0]
    child = []
    for node in order:  # grows as it goes
        left = int(tree.children_left[node])
        if left < 0:
            child.append(-1)
            continue
        child.append(len(order))
        order.extend((left, int(tree.children_right[node])))
    return np.array(order, dtype=np.int64), np.array(child, dtype=np.int64)


def _missing_go_to_left(tree: Any) -> np.ndarray:
    """Per node: whether a missing value goes left (sklearn >= 1.3 learns it; before, right)."""
    missing = getattr(tree, "missing_go_to_left", None)
    if missing is None:
        return np.zeros(tree.node_count, dtype=np.bool_)
    return np.asarray(missing, dtype=np.bool_)


def _leaf_path_lengths(tree: Any) -> tuple[FloatArray, np.ndarray]:
    """Per node: its path length with the leaf correction, as sklearn sums it per tree (the
    decision path length, the nodes on the path from the root, plus c(samples left), minus
    one), and that decision path length."""
    nodes = np.ones(tree.node_count, dtype=np.int64)
    for node in range(tree.node_count):  # children come after their parent
        for child in (tree.children_left[node], tree.children_right[node]):
            if child >= 0:
                nodes[child] = nodes[node] + 1
    return nodes + _average_path_length(tree.n_node_samples.astype(np.float64)) - 1.0, nodes


def _average_path_length(n: FloatArray) -> FloatArray:
    """c(n): the average path length of an unsuccessful search in a binary tree of n samples
    (Liu et al. 2008; sklearn's `_average_path_length`, the same operations)."""
    lengths = np.zeros(n.shape)
    lengths[n == 2] = 1.0
    big = n > 2
    m = n[big]
    lengths[big] = 2.0 * (np.log(m - 1.0) + np.euler_gamma) - 2.0 * (m - 1.0) / m
    return lengths


_LANES = 16
"""Rows that walk a tree together: each step of one waits on its loads, several overlap."""


@compiled
def _path_sums(
    rows: np.ndarray,
    roots: np.ndarray,
    depths: np.ndarray,
    feature: np.ndarray,
    threshold: FloatArray,
    child: np.ndarray,
    missing_right: np.ndarray,
    lengths: FloatArray,
    out: FloatArray,
) -> None:  # pragma: no cover - compiled
    """Per row: the sum over the trees, in their order, of the path length of the leaf it
    reaches. A split sends a value above its threshold right, one at or below it left, a
    missing one as it learnt: as sklearn's `apply`."""
    out[:] = 0.0
    n = rows.shape[0]
    nodes = np.empty(_LANES, dtype=np.int64)
    for tree in range(len(roots)):  # a tree at a time through every row: it stays in the cache
        for first in range(0, n, _LANES):
            lanes = min(_LANES, n - first)
            nodes[:] = roots[tree]
            for _ in range(depths[tree]):
                for lane in range(lanes):  # independent walks, overlapped by the processor
                    node = nodes[lane]
                    value = rows[first + lane, feature[node]]
                    right = (value > threshold[node]) | ((value != value) & missing_right[node])
                    nodes[lane] = child[node] + right
            for lane in range(lanes):
                out[first + lane] += lengths[nodes[lane]]


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
