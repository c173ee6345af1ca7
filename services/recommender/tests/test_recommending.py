"""The domain without a network: fold-in against implicit's own user step, the metrics on a
ranking worked by hand, the stratified split, top-N under exclusions and filters, and the
hybrid's blend rule and user profile worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares

from nexus.recommender.recommending import (
    Algorithm,
    CatalogLog,
    Config,
    Embedded,
    Fitter,
    Interaction,
    Scorer,
    blend,
    ranking_metrics,
    stratified_split,
    top_n,
    user_weight,
)


def _log(seed: int = 0, users: int = 30, items: int = 20) -> CatalogLog:
    rng = np.random.default_rng(seed)
    log = CatalogLog()
    for u in range(users):
        chosen = rng.choice(items, size=6, replace=False)
        weights = rng.integers(1, 5, size=6)
        log.add(
            (Interaction(f"u{u}", f"i{i}", float(w)) for i, w in zip(chosen, weights, strict=True)),
            u + 1,
        )
    return log


def test_fold_in_is_implicits_als_user_step() -> None:
    snapshot = _log().snapshot()
    config = Config(Algorithm.ALS, factors=6, iterations=3, regularization=0.1, alpha=2.0)
    trained = Fitter(config, snapshot).run()
    als = AlternatingLeastSquares(factors=6, regularization=0.1, alpha=2.0)
    als.item_factors = trained.item_factors
    history = {"i1": 3.0, "i4": 1.0, "i7": 2.0}
    index = {item: i for i, item in enumerate(trained.items)}
    row = np.zeros((1, len(trained.items)), dtype=np.float32)
    for item, weight in history.items():
        row[0, index[item]] = weight

    expected = als.recalculate_user(0, sp.csr_matrix(row))
    folded = Scorer(trained).fold_in({index[i]: w for i, w in history.items()})

    np.testing.assert_allclose(folded, expected, rtol=1e-3, atol=1e-5)


def test_a_user_whose_history_changed_after_training_is_folded_in() -> None:
    log = _log()
    trained = Fitter(Config(Algorithm.ALS, factors=6, iterations=3), log.snapshot()).run()
    scorer = Scorer(trained)
    history, changed = log.history("u0")

    unchanged = scorer.user_scores("u0", history, changed)
    log.add([Interaction("u0", "i19", 4.0)], log.sequence + 1)
    history, changed = log.history("u0")
    moved = scorer.user_scores("u0", history, changed)

    u = trained.users.index("u0")
    np.testing.assert_allclose(unchanged, trained.item_factors @ trained.user_factors[u])
    assert not np.allclose(moved, unchanged)


def test_metrics_of_a_ranking_worked_by_hand() -> None:
    # User 1: hits at ranks 1 and 3 of 3 relevant; user 2: no hit of 1 relevant.
    metrics = ranking_metrics([[10, 11, 12], [20, 21, 22]], [{10, 12, 99}, {98}], k=3)

    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.map == pytest.approx(((1 / 1 + 2 / 3) / 3 + 0) / 2)
    assert metrics.ndcg == pytest.approx((dcg / idcg + 0) / 2)
    assert metrics.precision == pytest.approx((2 / 3 + 0) / 2)
    assert metrics.recall == pytest.approx((2 / 3 + 0) / 2)


def test_the_split_holds_out_a_quarter_of_each_users_items_together() -> None:
    log = CatalogLog()
    for u in range(10):
        pairs = [Interaction(f"u{u}", f"i{i}") for i in range(8)]
        log.add([*pairs, Interaction(f"u{u}", "i0")], u + 1)  # i0 twice: one pair
    snapshot = log.snapshot()

    train = stratified_split(snapshot, 0.25, seed=3)

    for u in range(10):
        mine = snapshot.rows == u
        held = set(snapshot.cols[mine & ~train])
        assert len(held) == 2
        assert held.isdisjoint(snapshot.cols[mine & train])
    assert not np.array_equal(train, stratified_split(snapshot, 0.25, seed=4))


def test_top_n_leaves_out_excluded_refused_and_impossible_items() -> None:
    scores = np.array([5.0, 4.0, np.nan, 3.0, 2.0, 1.0])
    items = ["a", "b", "c", "d", "e", "f"]

    best = top_n(scores, items, 3, excluded=[0], allowed=lambda item: item != "d")

    assert best == [(1, 4.0), (4, 2.0), (5, 1.0)]
    assert top_n(scores, items, 10, excluded=[0, 1, 3, 4, 5]) == []


def test_the_blend_rule_worked_by_hand() -> None:
    # w_u = w + (1 - w) s / (s + n_u): content alone with no known items, w in the limit.
    assert user_weight(0.5, 3.0, 0) == 1.0
    assert user_weight(0.5, 3.0, 1) == pytest.approx(0.875)
    assert user_weight(0.5, 3.0, 3000) == pytest.approx(0.5, abs=1e-3)
    collaborative = np.array([3.0, 1.0, 2.0, np.nan])  # z: 1.2247, -1.2247, 0, 0 (unscored)
    content = np.array([0.0, 1.0, 0.5, 1.0])  # z: -1.5075, 0.9045, -0.3015, 0.9045
    mixed = blend(collaborative, content, 0.25)
    z = np.sqrt(1.5)
    expected = [0.75 * z - 0.25 * 1.5075567, -0.75 * z + 0.25 * 0.9045340, -0.25 * 0.3015113]
    assert mixed[:3] == pytest.approx(expected, abs=1e-6)
    assert mixed[3] == pytest.approx(0.25 * 0.9045340, abs=1e-6)  # a new item: content only


def test_a_profile_is_the_weighted_mean_of_the_items_embeddings() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    embedded = Embedded(["x", "y", "z"], vectors)

    profile = embedded.profile({"x": 3.0, "y": 1.0, "unknown": 5.0})
    _, _, rows = embedded.align(["y", "w"])  # a model's items, then the embedded rest

    assert profile == pytest.approx([0.75, 0.25])
    assert list(rows) == [1, -1, 0, 2]
    scores = embedded.scores(np.array([0.75, 0.25]), rows)
    assert math.isnan(scores[1])  # "w" has no text
    assert scores[[0, 2, 3]] == pytest.approx(np.array([0.25, 0.75, 0.65]) / np.sqrt(0.625))
