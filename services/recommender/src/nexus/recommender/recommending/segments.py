"""Segments: the users who share a user's attributes, and what is popular among them (what a
user with no history gets before the catalog's popular items)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def segment_of(attributes: Mapping[str, str], users: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The users whose attributes include every one of `attributes` (none when it is empty)."""
    if not attributes:
        return []
    wanted = attributes.items()
    return [user for user, theirs in users.items() if wanted <= theirs.items()]


def segment_first(items: Sequence[str], segment: Mapping[str, int], base: np.ndarray) -> np.ndarray:
    """Scores that rank the items the segment interacted with first, by how many of its users
    did, then the others by `base` (popularity, >= 0): the count plus `base` scaled into
    [0, 1)."""
    counts = np.fromiter((segment.get(i, 0) for i in items), dtype=np.float64, count=len(items))
    top = float(base.max()) if len(base) else 0.0
    return counts + np.asarray(base, dtype=np.float64) / (top + 1.0)
