"""Content-based neighbours: TF-IDF of each item's text and attributes (words of two letters or
more, English stop words left out), cosine similarity. It serves items that no trained model
knows yet (a new item with text: cold start)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from nexus.recommender.recommending.scoring import ItemQuery, Ranked, Why, top_n


def item_text(text: str, attributes: Mapping[str, str]) -> str:
    """What an item is described by: its text, then each attribute as one token-ish phrase
    ("genre_comedy"), so that shared attribute values count as shared words."""
    tags = " ".join(f"{key}_{value}".replace(" ", "_") for key, value in sorted(attributes.items()))
    return f"{text} {tags}".strip()


class ContentIndex:
    """TF-IDF vectors of a catalog's items (blocking to build: run it on a worker).

    Args:
        ids: The items.
        texts: Their descriptions (`item_text`), in the same order.
    """

    def __init__(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        self.ids = list(ids)
        self._index = {item: i for i, item in enumerate(self.ids)}
        self._vectors = None
        if any(t.strip() for t in texts):
            vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english")
            self._vectors = vectorizer.fit_transform(texts)  # rows L2-normalised

    def similar(self, query: ItemQuery) -> list[Ranked] | None:
        """The items whose descriptions are closest to the item's (None: no such item, or
        nothing to compare)."""
        i = self._index.get(query.item)
        if i is None or self._vectors is None:
            return None
        scores = np.asarray((self._vectors @ self._vectors[i].T).todense()).ravel()
        scores[scores <= 0] = -np.inf  # nothing in common: not similar
        excluded = {i} | {self._index[x] for x in query.exclude if x in self._index}
        best = top_n(scores, self.ids, query.count, excluded, query.allowed)
        return [Ranked(self.ids[j], s, Why.SIMILAR_TO_ITEM, query.item) for j, s in best]
