"""Training: ALS and BPR (implicit), EASE (closed form, numpy), popularity; one `Fitter` runs
each a step at a time (an iteration of ALS or BPR), so a caller can report progress and stop
between steps."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from threadpoolctl import threadpool_limits

from nexus.recommender.recommending.log import Snapshot


class Algorithm(enum.Enum):
    """The algorithms a catalog's model can be trained with."""

    ALS = "als"
    BPR = "bpr"
    EASE = "ease"
    POPULARITY = "popularity"
    CONTENT = "content"
    """Content-based alone: item text embeddings (popular items for a user with no text)."""


FACTOR_MODELS = frozenset({Algorithm.ALS, Algorithm.BPR})
DEFAULT_ITERATIONS = {Algorithm.ALS: 15, Algorithm.BPR: 50}


@dataclass(frozen=True)
class Config:
    """An algorithm and its hyperparameters (0: the default; `resolved` fills them in)."""

    algorithm: Algorithm = Algorithm.ALS
    factors: int = 0
    iterations: int = 0
    regularization: float = 0.0
    alpha: float = 0.0
    learning_rate: float = 0.0
    ease_lambda: float = 0.0
    seed: int = 0
    binary: bool = False
    content_weight: float = 0.0
    """The hybrid: the content score's share in the blend (0: collaborative alone; CONTENT: 1)."""
    content_shrinkage: float = 0.0
    """The hybrid: s in w_u = w + (1 - w) s / (s + n_u), a new user's pull to content (3)."""

    def resolved(self) -> Config:
        """The same with every default filled in."""
        return replace(
            self,
            factors=self.factors or 64,
            iterations=self.iterations or DEFAULT_ITERATIONS.get(self.algorithm, 1),
            regularization=self.regularization or 0.01,
            alpha=self.alpha or 1.0,
            learning_rate=self.learning_rate or 0.01,
            ease_lambda=self.ease_lambda or 250.0,
            seed=self.seed or 42,
            content_weight=1.0 if self.algorithm is Algorithm.CONTENT else self.content_weight,
            content_shrinkage=self.content_shrinkage or 3.0,
        )

    def parameters(self) -> dict[str, str]:
        """What the registry records with the version."""
        c = self.resolved()
        out = {"algorithm": c.algorithm.value, "binary": str(c.binary).lower()}
        if c.algorithm in FACTOR_MODELS:
            out |= {"factors": str(c.factors), "iterations": str(c.iterations)}
            out |= {"regularization": f"{c.regularization:g}", "seed": str(c.seed)}
        if c.algorithm is Algorithm.ALS:
            out["alpha"] = f"{c.alpha:g}"
        if c.algorithm is Algorithm.BPR:
            out["learning_rate"] = f"{c.learning_rate:g}"
        if c.algorithm is Algorithm.EASE:
            out["ease_lambda"] = f"{c.ease_lambda:g}"
        if c.content_weight > 0:
            out["content_weight"] = f"{c.content_weight:g}"
            out["content_shrinkage"] = f"{c.content_shrinkage:g}"
        return out


@dataclass
class Trained:
    """A trained model: what the registry stores (signed pickle: arrays and lists only).

    Attributes:
        config: How it was trained (resolved).
        users: User ids, in the order of `user_factors`' rows.
        items: Item ids, in the order of every per-item array.
        popularity: Users per item in the training data.
        user_factors: ALS, BPR: a row per user (BPR: last column 1, for the item bias).
        item_factors: ALS, BPR: a row per item (BPR: last column the item's bias).
        similarity: EASE: items x items weights (row j: how item j predicts each item).
        sequence: The last interaction stream sequence trained on: a user whose history
            changed after it gets a folded-in vector.
        interactions: Interactions trained on.
    """

    config: Config
    users: list[str]
    items: list[str]
    popularity: np.ndarray
    user_factors: np.ndarray | None = None
    item_factors: np.ndarray | None = None
    similarity: np.ndarray | None = None
    sequence: int = 0
    interactions: int = 0


class Fitter:
    """Trains one model on a snapshot, a step at a time (blocking; run it on a worker).

    Args:
        config: What to train.
        snapshot: The interactions.
        threads: Threads implicit may use.
    """

    def __init__(self, config: Config, snapshot: Snapshot, threads: int = 1) -> None:
        self.config = config.resolved()
        self._snapshot = snapshot
        self._matrix = snapshot.matrix(binary=self.config.binary)
        with threadpool_limits(1, "blas"):  # implicit checks BLAS threads as it is built
            self._model = _implicit_model(self.config, threads)
        self._done = 0
        self._similarity: np.ndarray | None = None

    @property
    def steps(self) -> int:
        """Steps in all (iterations for ALS and BPR, else one)."""
        return self.config.iterations if self._model is not None else 1

    @property
    def done(self) -> int:
        """Steps done."""
        return self._done

    def step(self) -> None:
        """Runs the next step (an ALS or BPR iteration continues from the last one)."""
        if self._model is not None:
            with threadpool_limits(1, "blas"):  # implicit's advice: BLAS threads slow it down
                self._model.fit(self._matrix, show_progress=False)
        elif self.config.algorithm is Algorithm.EASE:
            self._similarity = ease(self._matrix, self.config.ease_lambda)
        self._done += 1

    def result(self) -> Trained:
        """The trained model (after every step)."""
        snapshot, matrix = self._snapshot, self._matrix
        popularity = np.asarray((matrix > 0).sum(axis=0)).ravel().astype(np.float32)
        trained = Trained(
            config=self.config,
            users=snapshot.users,
            items=snapshot.items,
            popularity=popularity,
            similarity=self._similarity,
            sequence=snapshot.sequence,
            interactions=len(snapshot),
        )
        if self._model is not None:
            trained.user_factors = np.ascontiguousarray(self._model.user_factors)
            trained.item_factors = np.ascontiguousarray(self._model.item_factors)
        return trained

    def run(self) -> Trained:
        """Every step, then the result."""
        while self._done < self.steps:
            self.step()
        return self.result()


def _implicit_model(
    config: Config, threads: int
) -> AlternatingLeastSquares | BayesianPersonalizedRanking | None:
    """One iteration per `fit` call: a later call continues from the factors it left. The random
    state is one generator, so each call draws new samples (an int seed would repeat BPR's
    negative samples every iteration)."""
    rng = np.random.default_rng(config.seed)
    if config.algorithm is Algorithm.ALS:
        return AlternatingLeastSquares(
            factors=config.factors,
            regularization=config.regularization,
            alpha=config.alpha,
            iterations=1,
            num_threads=threads,
            random_state=rng,
        )
    if config.algorithm is Algorithm.BPR:
        return BayesianPersonalizedRanking(
            factors=config.factors,
            learning_rate=config.learning_rate,
            regularization=config.regularization,
            iterations=1,
            num_threads=threads,
            random_state=rng,
        )
    return None


def ease(matrix: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's closed form (Steck 2019): B = I - P / diag(P), P = (X'X + lam I)^-1, diag(B) = 0.

    Returns:
        Items x items, float32: a user's scores are their row of X times B.
    """
    gram = (matrix.T @ matrix).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    precision = np.linalg.inv(gram)
    weights = precision / (-np.diag(precision))
    weights[np.diag_indices_from(weights)] = 0.0
    result: np.ndarray = weights.astype(np.float32)
    return result
