"""Offline evaluation as Microsoft Recommenders does it: a random split of each user's
interactions (stratified by user), top-k of unseen items from the training part, and MAP,
nDCG@k, precision@k and recall@k against the held-out items (binary relevance), averaged over
the users that have items on both sides."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from nexus.recommender.recommending.embedded import Embedded
from nexus.recommender.recommending.fitting import Config, Fitter, Trained
from nexus.recommender.recommending.log import Snapshot
from nexus.recommender.recommending.scoring import Scorer, UserQuery, top_n


@dataclass(frozen=True)
class Metrics:
    """Ranking metrics at k, averaged over users."""

    map: float
    ndcg: float
    precision: float
    recall: float


@dataclass(frozen=True)
class Scored:
    """One configuration's evaluation."""

    config: Config
    metrics: Metrics
    fit_seconds: float


@dataclass(frozen=True)
class Report:
    """An evaluation: one entry per configuration, and the split's sizes."""

    scored: list[Scored]
    k: int
    users: int
    train_interactions: int
    test_interactions: int


def stratified_split(snapshot: Snapshot, test_fraction: float, seed: int) -> np.ndarray:
    """Which interactions train (True) and which are held out: per user, their distinct items
    in a random order, the first round((1 - test_fraction) * n) for training (Microsoft
    Recommenders' python_stratified_split). Repeated user-item interactions stay together."""
    pairs = snapshot.rows.astype(np.int64) * len(snapshot.items) + snapshot.cols
    unique, inverse = np.unique(pairs, return_inverse=True)
    users = unique // len(snapshot.items)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(unique)), users))  # by user, random within a user
    starts = np.searchsorted(users[order], users[order], side="left")
    counts = np.bincount(users, minlength=len(snapshot.users))[users[order]]
    position = np.arange(len(unique)) - starts
    train_pair = np.empty(len(unique), dtype=bool)
    train_pair[order] = position < np.round((1.0 - test_fraction) * counts)
    return train_pair[inverse]


def ranking_metrics(
    recommended: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int
) -> Metrics:
    """Mean metrics over users: `recommended[u]` is u's top-k (best first), `relevant[u]`
    their held-out items. MAP sums precision at each hit over all held-out items (Microsoft
    Recommenders' `map`); nDCG's ideal ranking has min(|relevant|, k) hits."""
    sums = np.zeros(4)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for top, truth in zip(recommended, relevant, strict=True):
        hits = np.array([item in truth for item in top[:k]], dtype=np.float64)
        ranks = np.flatnonzero(hits) + 1
        ideal = discounts[: min(len(truth), k)].sum()
        sums += (
            (np.arange(1, len(ranks) + 1) / ranks).sum() / len(truth),
            (hits * discounts[: len(hits)]).sum() / ideal,
            hits.sum() / k,
            hits.sum() / len(truth),
        )
    mean = sums / max(1, len(relevant))
    return Metrics(*(float(v) for v in mean))


def evaluate(
    snapshot: Snapshot,
    configs: Sequence[Config],
    *,
    k: int = 10,
    test_fraction: float = 0.25,
    seed: int = 42,
    threads: int = 1,
    on_fitted: Callable[[int], None] | None = None,
    embedded: Embedded | None = None,
) -> Report:
    """Trains each configuration on the training part and scores its top-k (blocking);
    `embedded` (the catalog's item text embeddings) gives hybrid and content models their
    content scores."""
    train = stratified_split(snapshot, test_fraction, seed)
    train_data = _subset(snapshot, train)
    truth = snapshot.matrix(~train, binary=True).tolil().rows
    seen = train_data.matrix()
    users = [
        u for u in range(len(snapshot.users)) if truth[u] and seen.indptr[u + 1] > seen.indptr[u]
    ]
    relevant = [set(truth[u]) for u in users]
    scored = []
    for i, config in enumerate(configs):
        began = time.perf_counter()
        trained = Fitter(config, train_data, threads).run()
        fit_seconds = time.perf_counter() - began
        recommended = _recommend(trained, users, seen, k, embedded)
        scored.append(
            Scored(trained.config, ranking_metrics(recommended, relevant, k), fit_seconds)
        )
        if on_fitted is not None:
            on_fitted(i + 1)
    test_count = int((~train).sum())
    return Report(scored, k, len(users), len(snapshot) - test_count, test_count)


def _subset(snapshot: Snapshot, mask: np.ndarray) -> Snapshot:
    return replace(
        snapshot, rows=snapshot.rows[mask], cols=snapshot.cols[mask], weights=snapshot.weights[mask]
    )


def _recommend(
    trained: Trained, users: list[int], seen: sp.csr_matrix, k: int, embedded: Embedded | None
) -> list[list[int]]:
    """Each user's top-k unseen items by their trained vector, blended with content scores
    for a hybrid (users and items keep the snapshot's indices: the model was trained on all
    of them; items only the embeddings know come after them)."""
    scorer = Scorer(trained)
    out = []
    for u in users:
        span = slice(seen.indptr[u], seen.indptr[u + 1])
        items, weights = seen.indices[span], seen.data[span]
        history = {trained.items[i]: float(w) for i, w in zip(items, weights, strict=True)}
        query = UserQuery(trained.users[u], history, 0, k, embedded=embedded)
        hybrid = scorer.hybrid_scores(query)
        ids, scores = (
            (trained.items, scorer.user_scores(trained.users[u], history, 0))
            if hybrid is None
            else (hybrid[0], hybrid[2])
        )
        out.append([i for i, _ in top_n(scores, ids, k, excluded=items.tolist())])
    return out
