"""Checks of a catalog's business rules that the field rules of the proto cannot express: each
error names the rule's field (`rules[2].end_time`)."""

from __future__ import annotations

from collections.abc import Sequence

from nexus.common.errors import InvalidArgument, ResourceExhausted
from nexus.recommender.recommending import Boost, Cap, Exclude, Match, Rule


def check_rules(rules: Sequence[Rule], max_rules: int, max_chars: int) -> None:
    """Raises for more than `max_rules` rules, a name used twice, a window that ends before
    it starts, or a matched attribute name or value longer than `max_chars`.

    Raises:
        ResourceExhausted: Too many rules.
        InvalidArgument: A bad rule, naming its field.
    """
    if len(rules) > max_rules:
        raise ResourceExhausted.too_large("rules", len(rules), max_rules)
    names: set[str] = set()
    for i, rule in enumerate(rules):
        where = f"rules[{i}]"
        if rule.name in names:
            raise InvalidArgument.for_field(f"{where}.name", f"{rule.name!r} is used twice")
        names.add(rule.name)
        window = rule.window
        if window.start is not None and window.end is not None and window.end <= window.start:
            raise InvalidArgument.for_field(f"{where}.end_time", "must be after start_time")
        _check_effect(rule, where, max_chars)


def _check_effect(rule: Rule, where: str, max_chars: int) -> None:
    effect = rule.effect
    if isinstance(effect, Boost | Exclude):
        kind = "boost" if isinstance(effect, Boost) else "exclude"
        _check_match(effect.match, f"{where}.{kind}.match", max_chars)
    elif isinstance(effect, Cap) and len(effect.key) > max_chars:
        raise InvalidArgument.for_field(f"{where}.cap.key", f"at most {max_chars} characters")


def _check_match(match: Match, where: str, max_chars: int) -> None:
    if len(match.key) > max_chars:
        raise InvalidArgument.for_field(f"{where}.key", f"at most {max_chars} characters")
    for value in match.values:
        if not value or len(value) > max_chars:
            raise InvalidArgument.for_field(
                f"{where}.values", f"values of 1-{max_chars} characters"
            )
