"""Business rules on a ranking worked by hand (the domain, no network): shifts add up and ties
keep the model's order, caps count per value, pins go to their place or last, and a segment's
items come before the catalog's popular ones."""

from __future__ import annotations

import numpy as np

from nexus.recommender.recommending import (
    Boost,
    Cap,
    Exclude,
    Match,
    Pin,
    Ranked,
    Rule,
    RuleSet,
    Why,
    Window,
    segment_first,
    segment_of,
)

BRANDS = {"i0": "x", "i1": "y", "i2": "x", "i3": "z", "i4": "x", "i5": "y"}


def _ranked() -> list[Ranked]:
    return [Ranked(item, 10.0 - k, Why.POPULAR) for k, item in enumerate(BRANDS)]


def _apply(*rules: Rule, count: int = 6) -> list[Ranked]:
    def attributes(item: str) -> dict[str, str]:
        return {"brand": BRANDS[item]}

    return RuleSet(rules).apply(_ranked(), count, attributes, lambda item: item != "i5")


def _boost(name: str, brand: str, shift: int) -> Rule:
    return Rule(name, Boost(Match("brand", frozenset({brand})), shift))


def test_shifts_add_up_and_ties_keep_the_models_order() -> None:
    ranked = _apply(_boost("up", "z", 2), _boost("more", "z", 1), _boost("down", "x", -1))

    # places: i0 0 -> 1, i1 1, i2 2 -> 3, i3 3 -> 0, i4 4 -> 5, i5 5; ties by the model's order
    assert [r.item for r in ranked] == ["i3", "i0", "i1", "i2", "i4", "i5"]
    assert (ranked[0].placed, ranked[0].rule) == (Why.BOOSTED, "up")  # the larger shift
    assert (ranked[1].placed, ranked[1].rule) == (Why.BURIED, "down")
    assert ranked[2].placed is None


def test_caps_count_per_value_and_pins_go_to_their_place_or_last() -> None:
    capped = _apply(Rule("two", Cap("brand", 2)), count=4)
    pinned = _apply(
        Rule("late", Pin("i4", 9)),
        Rule("first", Pin("i2", 1)),
        Rule("not-allowed", Pin("i5", 2)),
        Rule("unknown", Pin("new", 2)),
    )

    assert [r.item for r in capped] == ["i0", "i1", "i2", "i3"]  # i4 would be the third x
    assert [r.item for r in pinned] == ["i2", "new", "i0", "i1", "i3", "i4"]
    assert [r.placed for r in pinned] == [Why.PINNED, Why.PINNED, None, None, None, Why.PINNED]
    assert pinned[1].score == 10.0  # an item the model did not rank: the place's score


def test_windows_and_ignoring_rules_keep_exclusions() -> None:
    rules = RuleSet(
        (
            Rule("old", _boost("b", "x", 1).effect, Window(0.0, 10.0)),
            Rule("soon", _boost("b", "y", 1).effect, Window(start=100.0)),
            Rule("gone", Exclude(Match("brand", frozenset({"z"})))),
        )
    )

    assert [r.name for r in rules.at(50.0).rules] == ["gone"]
    assert [r.name for r in rules.at(5.0, ranking=False).rules] == ["gone"]
    assert rules.at(5.0).ranks
    assert rules.excluded({"brand": "z"})
    assert not rules.excluded(None)


def test_a_segments_items_come_before_the_popular_ones() -> None:
    users = {"a": {"country": "DE", "age": "30"}, "b": {"country": "FR"}, "c": {"country": "DE"}}

    members = segment_of({"country": "DE"}, users)
    scores = segment_first(["p", "q", "r"], {"r": 1}, np.array([5.0, 9.0, 0.0]))

    assert members == ["a", "c"]
    assert segment_of({}, users) == []
    assert list(np.argsort(-scores)) == [2, 1, 0]  # r (segment), then q and p by popularity
