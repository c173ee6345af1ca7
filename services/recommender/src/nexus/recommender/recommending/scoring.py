"""Serving a trained model: a user's scores (folded in when their history changed after
training), an item's neighbours, the seen item behind each recommendation, and the top-N under
exclusions and filters."""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np

from nexus.recommender.recommending.embedded import Embedded, blend, user_weight
from nexus.recommender.recommending.fitting import Algorithm, Trained
from nexus.recommender.recommending.segments import segment_first

Allowed = Callable[[str], bool]
"""Whether an item may be returned (its attribute filters)."""
_CANDIDATE_FACTOR = 4
"""Candidates looked at per result before sorting every item (filters drop some)."""
_POOL_FACTOR = 4
"""Diversity chooses among this many times the items asked for, the best by score."""


_NO_ITEM_MODEL = frozenset({Algorithm.POPULARITY, Algorithm.CONTENT})
"""Models without item factors or weights: their collaborative side is popularity."""


class Why(enum.Enum):
    """Why an item is in a result."""

    SIMILAR_TO_SEEN = "similar_to_seen"
    POPULAR = "popular"
    SIMILAR_TO_ITEM = "similar_to_item"
    SEGMENT_POPULAR = "segment_popular"
    BOOSTED = "boosted"
    BURIED = "buried"
    PINNED = "pinned"


@dataclass(frozen=True)
class Ranked:
    """One result: the item, its score, why the model chose it, the item behind it ("" for
    none); and when a business rule moved it, the rule and how it moved it (`placed`: BOOSTED,
    BURIED or PINNED)."""

    item: str
    score: float
    why: Why
    because: str = ""
    rule: str = ""
    placed: Why | None = None


@dataclass(frozen=True)
class UserQuery:
    """A user's top-N.

    Attributes:
        user: The user.
        history: Their items and summed weights (the live log's, so new ones count).
        changed: The stream sequence of their last interaction.
        count: How many items.
        include_seen: Whether items in `history` may be returned.
        exclude: Items never to return.
        allowed: The attribute filters (None: every item).
        diversity: 0 ranks by score; up to 1 trades score for unlikeness to the items before.
        embedded: The catalog's item text embeddings (None: no content scores).
        content_weight: The hybrid's content share for this request (None: the model's).
        segment: For a user with no history: users per item among the users who share their
            attributes (None or empty: no segment; popular items).
    """

    user: str
    history: Mapping[str, float]
    changed: int
    count: int
    include_seen: bool = False
    exclude: frozenset[str] = frozenset()
    allowed: Allowed | None = None
    diversity: float = 0.0
    embedded: Embedded | None = None
    content_weight: float | None = None
    segment: Mapping[str, int] | None = None

    def cold_why(self, item: str) -> Why:
        """Why a user with no history gets `item`: popular in their segment, or overall."""
        return Why.SEGMENT_POPULAR if self.segment and item in self.segment else Why.POPULAR


@dataclass(frozen=True)
class ItemQuery:
    """An item's neighbours: `count` of them, `exclude` and `allowed` as in `UserQuery`."""

    item: str
    count: int
    exclude: frozenset[str] = frozenset()
    allowed: Allowed | None = None


class Scorer:
    """A trained model, indexed for serving (read-only after construction: safe on workers).

    Args:
        trained: The model.
    """

    def __init__(self, trained: Trained) -> None:
        self.trained = trained
        self.algorithm = trained.config.algorithm
        self.items = trained.items
        self.item_index = {item: i for i, item in enumerate(trained.items)}
        self.user_index = {user: u for u, user in enumerate(trained.users)}
        self.popularity = trained.popularity.astype(np.float64)
        none = np.empty((0, 0), dtype=np.float32)
        self._similarity = trained.similarity if trained.similarity is not None else none
        self._factors = trained.item_factors if trained.item_factors is not None else none
        latent = self._factors[:, :-1] if self.algorithm is Algorithm.BPR else self._factors
        norms = np.linalg.norm(latent, axis=1, keepdims=True)
        self._unit: np.ndarray = latent / np.maximum(norms, 1e-12)
        self._gram: np.ndarray = latent.T.astype(np.float64) @ latent.astype(np.float64)

    # Users.

    def user_scores(self, user: str, history: Mapping[str, float], changed: int) -> np.ndarray:
        """Scores of every item for a user with `history` (item -> summed weight), whose last
        interaction has stream sequence `changed`. A user the model knows whose history did not
        change since training keeps their trained vector; otherwise the vector is folded in
        from the history. Empty history: popularity."""
        known = self._known(history)
        if not known:
            return self.popularity.copy()
        if self.algorithm in _NO_ITEM_MODEL:
            return self.popularity.copy()
        if self.algorithm is Algorithm.EASE:  # x B over the seen rows only
            seen, weights = self._seen(known)
            return np.asarray(weights @ self._similarity[seen], dtype=np.float64)
        vector = self._user_vector(user, known, changed)
        return np.asarray(self._factors @ vector, dtype=np.float64)

    def _known(self, history: Mapping[str, float]) -> dict[int, float]:
        index = self.item_index
        return {index[i]: w for i, w in history.items() if i in index}

    def _seen(self, known: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
        """The seen items' indices and their weights (1 for a binary model)."""
        seen = np.fromiter(known, dtype=np.int64, count=len(known))
        if self.trained.config.binary:
            return seen, np.ones(len(seen), dtype=np.float32)
        return seen, np.fromiter(known.values(), dtype=np.float32, count=len(known))

    def _user_vector(self, user: str, known: Mapping[int, float], changed: int) -> np.ndarray:
        u = self.user_index.get(user)
        factors = self.trained.user_factors
        if u is not None and factors is not None and changed <= self.trained.sequence:
            vector: np.ndarray = factors[u]
            return vector
        return self.fold_in(known)

    def fold_in(self, known: Mapping[int, float]) -> np.ndarray:
        """A user vector from their items, the item factors fixed: implicit's ALS user step
        (confidence c = alpha * weight; x = (Y'Y + Y_u'(C_u - I)Y_u + reg I)^-1 Y_u' c_u).
        For BPR the same least squares over the factors without the bias column, then 1 for the
        bias (an approximation: BPR has no closed-form user step)."""
        config = self.trained.config
        bpr = self.algorithm is Algorithm.BPR
        items, weights = self._seen(known)
        confidence = (config.alpha if not bpr else 1.0) * weights.astype(np.float64)
        latent = self._factors[items, :-1] if bpr else self._factors[items]
        y = latent.astype(np.float64)
        a = self._gram + (y.T * (confidence - 1.0)) @ y
        a[np.diag_indices_from(a)] += config.regularization
        x = np.linalg.solve(a, y.T @ confidence)
        if bpr:
            x = np.append(x, 1.0)
        return x.astype(np.float32)

    def because(self, item: int, known: Mapping[int, float]) -> int | None:
        """The seen item that most explains `item` (None: no history, or popularity)."""
        if not known or self.algorithm in _NO_ITEM_MODEL:
            return None
        seen, weights = self._seen(known)
        if self.algorithm is Algorithm.EASE:
            contributions = weights * self._similarity[seen, item]
        else:
            contributions = self._unit[seen] @ self._unit[item]
        return int(seen[int(np.argmax(contributions))])

    def content_weight(self, query: UserQuery) -> float:
        """The content share a request asks for (its own, else the model's)."""
        if query.content_weight is not None:
            return query.content_weight
        return self.trained.config.content_weight

    def hybrid_scores(
        self, query: UserQuery
    ) -> tuple[list[str], dict[str, int], np.ndarray] | None:
        """The blend of collaborative and content scores over the model's items and then the
        embedded items it does not know (their collaborative score: the average); None when
        the blend does not apply (no content share, no embeddings, or no seen item with text:
        a new user gets the collaborative answer, popular items)."""
        weight, embedded = self.content_weight(query), query.embedded
        if weight <= 0 or embedded is None:
            return None
        profile = embedded.profile(query.history)
        if profile is None:
            return None
        union, positions, rows = embedded.align(self.items)
        known = self._known(query.history)
        collaborative = np.full(len(union), np.nan)
        user = self.user_scores(query.user, query.history, query.changed)
        collaborative[: len(self.items)] = user
        share = user_weight(weight, self.trained.config.content_shrinkage, len(known))
        return union, positions, blend(collaborative, embedded.scores(profile, rows), share)

    def recommend(self, query: UserQuery) -> list[Ranked]:
        """A user's top-N, each with the seen item that explains it (popular items for a user
        with no history the model knows); blended with content scores for a hybrid."""
        hybrid = self.hybrid_scores(query)
        if hybrid is not None:
            return self._recommend_hybrid(query, *hybrid)
        known = self._known(query.history)
        scores = self.user_scores(query.user, query.history, query.changed)
        if not known and query.segment:
            scores = segment_first(self.items, query.segment, scores)
        excluded = self._indices(query.exclude)
        if not query.include_seen:
            excluded |= set(known)
        diverse = query.diversity > 0 and self.algorithm not in _NO_ITEM_MODEL
        pool = query.count * _POOL_FACTOR if diverse else query.count
        best = top_n(scores, self.items, pool, excluded, query.allowed)
        if diverse:
            best = self._diversified(best, query.count, query.diversity)
        out = []
        for i, score in best:
            seen = self.because(i, known)
            why = query.cold_why(self.items[i]) if seen is None else Why.SIMILAR_TO_SEEN
            out.append(Ranked(self.items[i], score, why, "" if seen is None else self.items[seen]))
        return out

    def _recommend_hybrid(
        self, query: UserQuery, union: list[str], positions: dict[str, int], scores: np.ndarray
    ) -> list[Ranked]:
        """The hybrid's top-N; diversity by the cosine of the text embeddings; the reason: the
        model's seen item for an item it knows, else the seen item closest by text."""
        assert query.embedded is not None
        excluded = {positions[i] for i in query.exclude if i in positions}
        if not query.include_seen:
            excluded |= {positions[i] for i in query.history if i in positions}
        pool = query.count * _POOL_FACTOR if query.diversity > 0 else query.count
        best = top_n(scores, union, pool, excluded, query.allowed)
        if query.diversity > 0:
            vectors = query.embedded.unit_vectors([union[i] for i, _ in best])
            best = _mmr(best, vectors, query.count, query.diversity)
        known = self._known(query.history)
        out = []
        for i, score in best:
            seen = self.because(i, known) if i < len(self.items) else None
            because = self.items[seen] if seen is not None else None
            because = because or query.embedded.closest_seen(union[i], list(query.history))
            out.append(Ranked(union[i], score, Why.SIMILAR_TO_SEEN, because or ""))
        return out

    def _diversified(
        self, pool: list[tuple[int, float]], count: int, diversity: float
    ) -> list[tuple[int, float]]:
        """Maximal marginal relevance: greedily the item with the best (1 - diversity) x its
        score (scaled to [0, 1] within the pool) - diversity x its largest similarity to the
        items already chosen."""
        if len(pool) <= 1:
            return pool[:count]
        return _mmr(pool, self._item_vectors(np.array([i for i, _ in pool])), count, diversity)

    def _item_vectors(self, items: np.ndarray) -> np.ndarray:
        """Unit vectors of items whose dot products are their similarities: the factors, or
        for EASE each item's column of B (how the other items predict it)."""
        if self.algorithm is Algorithm.EASE:
            columns = self._similarity[:, items].T.astype(np.float64)
            norms = np.linalg.norm(columns, axis=1, keepdims=True)
            return np.asarray(columns / np.maximum(norms, 1e-12))
        return np.asarray(self._unit[items], dtype=np.float64)

    def similar(self, query: ItemQuery) -> list[Ranked] | None:
        """An item's neighbours (None: the model does not know the item)."""
        index = self.item_index.get(query.item)
        if index is None:
            return None
        excluded = self._indices(query.exclude) | {index}
        scores = self.item_scores(index)
        best = top_n(scores, self.items, query.count, excluded, query.allowed)
        why = Why.POPULAR if self.algorithm in _NO_ITEM_MODEL else Why.SIMILAR_TO_ITEM
        return [Ranked(self.items[i], s, why, query.item) for i, s in best]

    def _indices(self, items: Collection[str]) -> set[int]:
        return {self.item_index[i] for i in items if i in self.item_index}

    # Items.

    def item_scores(self, item: int) -> np.ndarray:
        """Scores of every item as neighbours of `item` (popularity for the popularity model)."""
        if self.algorithm is Algorithm.EASE:
            return np.asarray(self._similarity[item], dtype=np.float64)
        if self.algorithm in _NO_ITEM_MODEL:
            return self.popularity.copy()
        return np.asarray(self._unit @ self._unit[item], dtype=np.float64)


def _mmr(
    pool: list[tuple[int, float]], vectors: np.ndarray, count: int, diversity: float
) -> list[tuple[int, float]]:
    """Maximal marginal relevance over `pool` (best first) with unit `vectors`, a row each."""
    if len(pool) <= 1:
        return pool[:count]
    scores = np.array([s for _, s in pool])
    relevance = (scores - scores.min()) / max(float(np.ptp(scores)), 1e-12)
    similarity = vectors @ vectors.T
    chosen = [0]
    closest = similarity[0].copy()
    while len(chosen) < min(count, len(pool)):
        value = (1 - diversity) * relevance - diversity * closest
        value[chosen] = -np.inf
        pick = int(np.argmax(value))
        chosen.append(pick)
        closest = np.maximum(closest, similarity[pick])
    return [pool[c] for c in chosen]


def top_n(
    scores: np.ndarray,
    items: list[str],
    n: int,
    excluded: Collection[int] = (),
    allowed: Allowed | None = None,
) -> list[tuple[int, float]]:
    """The `n` best (index, score) pairs, best first, leaving out `excluded` indices, items
    `allowed` refuses and scores that are not finite."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    if excluded:
        scores[np.fromiter(excluded, dtype=np.int64)] = -np.inf
    scores[~np.isfinite(scores)] = -np.inf
    want = n if allowed is None else n * _CANDIDATE_FACTOR
    order = _best(scores, want + len(excluded))
    picked = _pick(order, scores, items, n, allowed)
    if len(picked) < n and len(order) < len(scores):  # filters dropped many: look at all
        picked = _pick(np.argsort(-scores, kind="stable"), scores, items, n, allowed)
    return picked


def _best(scores: np.ndarray, want: int) -> np.ndarray:
    if want >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, want)[:want]
    return part[np.argsort(-scores[part], kind="stable")]


def _pick(
    order: np.ndarray, scores: np.ndarray, items: list[str], n: int, allowed: Allowed | None
) -> list[tuple[int, float]]:
    picked: list[tuple[int, float]] = []
    for i in order:
        if len(picked) == n or scores[i] == -np.inf:
            break
        if allowed is None or allowed(items[i]):
            picked.append((int(i), float(scores[i])))
    return picked


def popular(counts: Mapping[str, int], query: UserQuery) -> list[Ranked]:
    """The most popular items by live counts (a catalog with no trained model yet); for a user
    with a segment, its popular items first."""
    items = list(counts)
    scores = np.fromiter(counts.values(), dtype=np.float64, count=len(items))
    if query.segment:
        scores = segment_first(items, query.segment, scores)
    skip = set(query.exclude) if query.include_seen else set(query.exclude) | set(query.history)
    excluded = [i for i, item in enumerate(items) if item in skip]
    best = top_n(scores, items, query.count, excluded, query.allowed)
    return [Ranked(items[i], s, query.cold_why(items[i])) for i, s in best]
