"""Content-based scores from item text embedded by the packaged MiniLM model: a user's profile
is the weighted mean of the embeddings of the items they interacted with, and an item's content
score is its cosine with that profile. The hybrid blend (`blend`) mixes these with a
collaborative model's scores."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Encode = Callable[[list[str]], np.ndarray]
"""Texts to unit vectors, one row each (the packaged MiniLM model's `encode`)."""


def embedding_text(text: str, attributes: Mapping[str, str]) -> str:
    """What the model reads of an item: its "title" attribute, its text, then its other
    attributes as "key: value" phrases (MiniLM reads words, not TF-IDF tokens)."""
    parts = [p for p in (attributes.get("title", ""), text) if p]
    parts += [f"{key}: {value}" for key, value in sorted(attributes.items()) if key != "title"]
    return ". ".join(parts)


class Embedded:
    """A catalog's items with text as unit vectors (read-only once built: safe on workers).

    Args:
        ids: The items.
        vectors: Their unit vectors, a row each, in the same order.
    """

    def __init__(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        self.ids = list(ids)
        self.index = {item: i for i, item in enumerate(self.ids)}
        rows = np.asarray(vectors, dtype=np.float32)
        self.vectors = rows if rows.ndim == 2 else rows.reshape(len(self.ids), -1)
        self._aligned: dict[int, tuple[list[str], dict[str, int], np.ndarray]] = {}

    @classmethod
    def build(
        cls,
        texts: Mapping[str, str],
        encode: Encode,
        previous: Embedded | None = None,
        previous_texts: Mapping[str, str] | None = None,
    ) -> Embedded:
        """Embeds `texts` (item -> text, empty texts left out), reusing the vectors of
        `previous` for items whose text did not change (blocking)."""
        ids = [item for item, text in texts.items() if text.strip()]
        old = previous_texts or {}
        kept = previous.index if previous is not None else {}
        fresh = [i for i in ids if not (old.get(i) == texts[i] and i in kept)]
        vectors: dict[str, np.ndarray] = {}
        if fresh:
            vectors = dict(zip(fresh, encode([texts[i] for i in fresh]), strict=True))
        if previous is not None:
            for item in ids:
                if item not in vectors:
                    vectors[item] = previous.vectors[kept[item]]
        dims = next(iter(vectors.values())).shape[0] if vectors else 0
        matrix = np.stack([vectors[i] for i in ids]) if ids else np.zeros((0, dims), np.float32)
        return cls(ids, matrix)

    def profile(self, history: Mapping[str, float]) -> np.ndarray | None:
        """The weighted mean of the embeddings of the user's items (None: none has text)."""
        rows = [(self.index[i], w) for i, w in history.items() if i in self.index and w > 0]
        if not rows:
            return None
        idx = np.array([r for r, _ in rows])
        weights = np.array([w for _, w in rows], dtype=np.float64)
        mean = weights @ self.vectors[idx].astype(np.float64) / weights.sum()
        result: np.ndarray = mean
        return result

    def align(self, items: list[str]) -> tuple[list[str], dict[str, int], np.ndarray]:
        """`items` followed by the embedded items not among them, each one's position, and
        the row of each one's vector (-1: no text). Cached for the last `items` list (a
        model's item list, which the model keeps)."""
        cached = self._aligned.get(id(items))
        if cached is not None and cached[0][: len(items)] == items:
            return cached
        known = set(items)
        union = items + [i for i in self.ids if i not in known]
        rows = np.array([self.index.get(i, -1) for i in union], dtype=np.int64)
        result = (union, {item: i for i, item in enumerate(union)}, rows)
        self._aligned = {id(items): result}
        return result

    def unit_vectors(self, items: Sequence[str]) -> np.ndarray:
        """The items' vectors, a row each (zeros for an item without text)."""
        out = np.zeros((len(items), self.vectors.shape[1]))
        for r, item in enumerate(items):
            i = self.index.get(item)
            if i is not None:
                out[r] = self.vectors[i]
        return out

    def scores(self, profile: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosine of each aligned item with the profile (NaN: no text)."""
        norm = float(np.linalg.norm(profile)) or 1.0
        cosine = self.vectors.astype(np.float64) @ (profile / norm)
        out = np.full(len(rows), np.nan)
        has = rows >= 0
        out[has] = cosine[rows[has]]
        return out

    def closest_seen(self, item: str, seen: Sequence[str]) -> str | None:
        """The seen item whose text is closest to `item`'s (None: either has no text)."""
        i = self.index.get(item)
        rows = [(s, self.index[s]) for s in seen if s in self.index]
        if i is None or not rows:
            return None
        sims = self.vectors[[r for _, r in rows]] @ self.vectors[i]
        return rows[int(np.argmax(sims))][0]


def user_weight(weight: float, shrinkage: float, known: int) -> float:
    """The content share for a user with `known` items the collaborative model knows:
    w_u = w + (1 - w) * s / (s + n_u), so a user with no known items gets content alone and
    the share falls to `weight` as their history grows."""
    if shrinkage <= 0:
        return weight if known else 1.0
    return weight + (1.0 - weight) * shrinkage / (shrinkage + known)


def standardised(scores: np.ndarray) -> np.ndarray:
    """Scores as z-scores over their finite values; NaN and infinite ones become 0 (the
    average item)."""
    finite = np.isfinite(scores)
    out = np.zeros(len(scores))
    if finite.sum() > 1:
        values = scores[finite]
        spread = float(values.std()) or 1.0
        out[finite] = (values - values.mean()) / spread
    return out


def blend(collaborative: np.ndarray, content: np.ndarray, share: float) -> np.ndarray:
    """The hybrid rule: (1 - share) x z(collaborative) + share x z(content), each standardised
    over the items it scores; an item one side does not score counts as that side's average."""
    return (1.0 - share) * standardised(collaborative) + share * standardised(content)
