"""What one catalog's interactions add up to, in memory: per user the items and their summed
weights, per item how many users interacted with it, and every interaction in arrival order
(for training and evaluation)."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Interaction:
    """One interaction, as stored.

    Attributes:
        user: The user id.
        item: The item id.
        weight: How much it counts (> 0).
        time: When it happened, in seconds since the epoch.
        type: What happened ("view", "purchase"); recorded, not interpreted.
    """

    user: str
    item: str
    weight: float = 1.0
    time: float = 0.0
    type: str = ""


@dataclass(frozen=True)
class Snapshot:
    """A catalog's interactions at one point, as arrays (one row per interaction).

    Attributes:
        users: User ids; `rows` index it.
        items: Item ids; `cols` index it.
        rows: User index of each interaction.
        cols: Item index of each interaction.
        weights: Weight of each interaction.
        sequence: The last stream sequence it includes.
    """

    users: list[str]
    items: list[str]
    rows: np.ndarray
    cols: np.ndarray
    weights: np.ndarray
    sequence: int

    def __len__(self) -> int:
        return len(self.rows)

    def matrix(self, mask: np.ndarray | None = None, *, binary: bool = False) -> sp.csr_matrix:
        """Users x items, weights of a user-item pair summed (or 1 when `binary`); `mask`
        keeps some interactions only."""
        rows, cols, weights = self.rows, self.cols, self.weights
        if mask is not None:
            rows, cols, weights = rows[mask], cols[mask], weights[mask]
        shape = (len(self.users), len(self.items))
        matrix = sp.csr_matrix((weights.astype(np.float32), (rows, cols)), shape=shape)
        matrix.sum_duplicates()
        if binary:
            matrix.data[:] = 1.0
        return matrix


class CatalogLog:
    """One catalog's interactions, applied in stream order (not thread-safe: the event loop
    applies them; `snapshot` copies what training needs)."""

    def __init__(self) -> None:
        self._users: dict[str, int] = {}
        self._items: dict[str, int] = {}
        self._user_ids: list[str] = []
        self._item_ids: list[str] = []
        self._rows = array("i")
        self._cols = array("i")
        self._weights = array("f")
        self._histories: list[dict[int, float]] = []
        self._changed: list[int] = []  # per user: the stream sequence of their last interaction
        self._popularity: list[int] = []  # per item: users who interacted with it
        self.sequence = 0
        """The last stream sequence applied."""

    @property
    def users(self) -> int:
        """Users with at least one interaction."""
        return len(self._user_ids)

    @property
    def items(self) -> int:
        """Distinct items interacted with."""
        return len(self._item_ids)

    @property
    def interactions(self) -> int:
        """Interactions applied."""
        return len(self._rows)

    def add(self, interactions: Iterable[Interaction], sequence: int) -> None:
        """Applies the interactions of stream message `sequence`."""
        for interaction in interactions:
            user = self._index_user(interaction.user)
            item = self._index_item(interaction.item)
            history = self._histories[user]
            if item not in history:
                self._popularity[item] += 1
            history[item] = history.get(item, 0.0) + interaction.weight
            self._changed[user] = sequence
            self._rows.append(user)
            self._cols.append(item)
            self._weights.append(interaction.weight)
        self.sequence = max(self.sequence, sequence)

    def history(self, user: str) -> tuple[dict[str, float], int]:
        """A user's items with their summed weights, and the stream sequence of their last
        interaction (an unknown user: nothing, 0)."""
        index = self._users.get(user)
        if index is None:
            return {}, 0
        ids = self._item_ids
        return {ids[i]: w for i, w in self._histories[index].items()}, self._changed[index]

    def popular(self) -> Mapping[str, int]:
        """Users per item."""
        return dict(zip(self._item_ids, self._popularity, strict=True))

    def users_per_item(self, users: Iterable[str]) -> dict[str, int]:
        """How many of `users` interacted with each item (items none of them did: absent)."""
        counts: dict[int, int] = {}
        for user in users:
            index = self._users.get(user)
            for item in self._histories[index] if index is not None else ():
                counts[item] = counts.get(item, 0) + 1
        return {self._item_ids[i]: n for i, n in counts.items()}

    def snapshot(self) -> Snapshot:
        """Copies of everything applied so far (cheap: flat arrays)."""
        return Snapshot(
            users=list(self._user_ids),
            items=list(self._item_ids),
            rows=np.frombuffer(self._rows, dtype=np.int32).copy(),
            cols=np.frombuffer(self._cols, dtype=np.int32).copy(),
            weights=np.frombuffer(self._weights, dtype=np.float32).copy(),
            sequence=self.sequence,
        )

    def _index_user(self, user: str) -> int:
        index = self._users.get(user)
        if index is None:
            index = self._users[user] = len(self._user_ids)
            self._user_ids.append(user)
            self._histories.append({})
            self._changed.append(0)
        return index

    def _index_item(self, item: str) -> int:
        index = self._items.get(item)
        if index is None:
            index = self._items[item] = len(self._item_ids)
            self._item_ids.append(item)
            self._popularity.append(0)
        return index
