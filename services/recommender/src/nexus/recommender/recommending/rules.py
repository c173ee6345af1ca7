"""A catalog's business rules, applied to a ranking after scoring.

Order, per request: exclude rules join the filters before the model picks its best items (so a
full page still comes back); then boosts and buries move items by places of the model's ranking
(the shifts of matching rules add up; ties keep the model's order); then caps drop the items
over their attribute value's allowance, the next ones moving up; then pins put their items at
their positions; then the list is cut to the number asked for.

Shifts are places, not score multipliers: the models' scores live on different scales (dot
products, EASE weights, z-scores, counts) and may be negative, so a multiplier would mean
something else for every algorithm. A shift means the same for all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from nexus.recommender.recommending.scoring import Ranked, Why

Attributes = Callable[[str], Mapping[str, str] | None]
"""An item's stored attributes (None: the item has none)."""
Eligible = Callable[[str], bool]
"""Whether an item may be returned at all (filters, exclusions, seen items): pins ask it."""
_POOL_FACTOR = 4
"""With ranking rules, the model is asked for this many times the items asked for (plus the
largest boost), so that boosted items and items behind capped ones can come up."""


@dataclass(frozen=True)
class Match:
    """Items whose attribute `key` is one of `values`."""

    key: str
    values: frozenset[str]

    def holds(self, attributes: Mapping[str, str] | None) -> bool:
        """Whether an item with these attributes matches."""
        return attributes is not None and attributes.get(self.key) in self.values


@dataclass(frozen=True)
class Window:
    """When a rule applies, in seconds since the epoch (None: no bound)."""

    start: float | None = None
    end: float | None = None

    def holds(self, now: float) -> bool:
        """Whether `now` is inside: start <= now < end."""
        return (self.start is None or self.start <= now) and (self.end is None or now < self.end)


@dataclass(frozen=True)
class Boost:
    """Moves matching items up (shift > 0) or down (shift < 0) by `shift` places."""

    match: Match
    shift: int


@dataclass(frozen=True)
class Pin:
    """Puts `item` at `position` (from 1)."""

    item: str
    position: int


@dataclass(frozen=True)
class Cap:
    """At most `limit` results share one value of attribute `key`."""

    key: str
    limit: int


@dataclass(frozen=True)
class Exclude:
    """Never returns matching items."""

    match: Match


Effect = Boost | Pin | Cap | Exclude
E = TypeVar("E", Boost, Pin, Cap, Exclude)


@dataclass(frozen=True)
class Rule:
    """A named rule: one effect, within a time window."""

    name: str
    effect: Effect
    window: Window = Window()


@dataclass(frozen=True)
class RuleSet:
    """A catalog's rules, in the order they were given."""

    rules: tuple[Rule, ...] = ()

    def at(self, now: float, *, ranking: bool = True) -> RuleSet:
        """The rules that apply at `now`; without the ranking ones (boost, pin, cap) unless
        `ranking`."""
        return RuleSet(
            tuple(
                r
                for r in self.rules
                if r.window.holds(now) and (ranking or isinstance(r.effect, Exclude))
            )
        )

    def _of(self, kind: type[E]) -> list[tuple[str, E]]:
        return [(r.name, r.effect) for r in self.rules if isinstance(r.effect, kind)]

    @property
    def ranks(self) -> bool:
        """Whether any rule changes the ranking (not only exclusions)."""
        return any(not isinstance(r.effect, Exclude) for r in self.rules)

    def excluded(self, attributes: Mapping[str, str] | None) -> bool:
        """Whether an exclude rule leaves an item with these attributes out."""
        return any(e.match.holds(attributes) for _, e in self._of(Exclude))

    def pool(self, count: int) -> int:
        """How many items of the model's ranking the rules need to fill `count` places."""
        if not self.ranks:
            return count
        boosts = [e.shift for _, e in self._of(Boost)]
        return count * _POOL_FACTOR + max([0, *boosts])

    def apply(
        self, ranked: Sequence[Ranked], count: int, attributes: Attributes, eligible: Eligible
    ) -> list[Ranked]:
        """The model's ranking (best first, already filtered) after the boosts, caps and pins,
        cut to `count`; an item a rule moved carries the rule in its reason."""
        marks: dict[str, tuple[Why, str]] = {}
        moved = self._boosted(ranked, attributes, marks)
        capped = self._capped(moved, attributes)
        shown = self._pinned(capped, ranked, eligible)[:count]
        return [_marked(r, marks) for r in shown]  # marked last: only the items shown

    def _boosted(
        self, ranked: Sequence[Ranked], attributes: Attributes, marks: dict[str, tuple[Why, str]]
    ) -> list[Ranked]:
        """The ranking after the boosts; `marks` gets how and by which rule each moved item
        moved (several: the rule with the largest shift)."""
        by_key: dict[str, dict[str, list[tuple[str, int]]]] = {}  # key -> value -> rules
        for name, boost in self._of(Boost):
            values = by_key.setdefault(boost.match.key, {})
            for value in boost.match.values:
                values.setdefault(value, []).append((name, boost.shift))
        if not by_key:
            return list(ranked)
        order = []
        for place, item in enumerate(ranked):
            found = attributes(item.item) or {}
            hits = [h for k, table in by_key.items() for h in table.get(found.get(k, ""), ())]
            shift = sum(s for _, s in hits)
            if shift:
                strongest = max(hits, key=lambda h: abs(h[1]))[0]
                marks[item.item] = (Why.BOOSTED if shift > 0 else Why.BURIED, strongest)
            order.append((place - shift, place, item))
        return [item for _, _, item in sorted(order, key=lambda p: (p[0], p[1]))]

    def _capped(self, ranked: Sequence[Ranked], attributes: Attributes) -> list[Ranked]:
        caps = self._of(Cap)
        if not caps:
            return list(ranked)
        used: dict[tuple[int, str], int] = {}
        kept = []
        for item in ranked:
            found = attributes(item.item) or {}
            keys = [(i, found[c.key]) for i, (_, c) in enumerate(caps) if c.key in found]
            if any(used.get(k, 0) >= caps[k[0]][1].limit for k in keys):
                continue
            for k in keys:
                used[k] = used.get(k, 0) + 1
            kept.append(item)
        return kept

    def _pinned(
        self, ranked: list[Ranked], scored: Sequence[Ranked], eligible: Eligible
    ) -> list[Ranked]:
        pins = self._of(Pin)
        if not pins:
            return ranked
        pinned = {p.item for _, p in pins}
        out = [r for r in ranked if r.item not in pinned]
        by_item = {r.item: r for r in scored}
        for name, pin in sorted(pins, key=lambda p: p[1].position):
            if any(r.item == pin.item for r in out) or not eligible(pin.item):
                continue  # an item pinned twice keeps its first position
            at = min(pin.position - 1, len(out))
            base = by_item.get(pin.item) or Ranked(pin.item, _score_at(out, at), Why.PINNED)
            out.insert(at, dataclasses.replace(base, placed=Why.PINNED, rule=name))
        return out


def _marked(ranked: Ranked, marks: Mapping[str, tuple[Why, str]]) -> Ranked:
    """An item with the boost that moved it (a pinned item keeps its pin)."""
    mark = marks.get(ranked.item)
    if mark is None or ranked.placed is not None:
        return ranked
    return dataclasses.replace(ranked, placed=mark[0], rule=mark[1])


def _score_at(ranked: Sequence[Ranked], at: int) -> float:
    """A pinned item the model did not rank takes the score of the place it takes."""
    if not ranked:
        return 0.0
    return ranked[min(at, len(ranked) - 1)].score
