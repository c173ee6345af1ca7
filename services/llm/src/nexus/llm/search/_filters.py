"""Metadata filters: conditions on a document's top-level metadata keys, all of which must hold.

`{"lang": "en"}` is equality; `{"year": {"$gte": 2020, "$lt": 2024}}` applies operators (all of
them): `$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte`, `$in`, `$nin`. As in MongoDB, `$ne` and `$nin`
also match documents without the key, and the others never do. Equality is strict about types:
`true` is not `1`, though `2020` is `2020.0` (protobuf's Struct has only doubles). The ordering
operators compare numbers with numbers and strings with strings; a document whose value is of
another kind does not match.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from typing import Any

from nexus.common.errors import InvalidArgument, ResourceExhausted

Predicate = Callable[[Mapping[str, Any]], bool]
"""Whether a document's metadata satisfies a filter."""

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
_MISSING = object()


def compile_filter(conditions: Mapping[str, Any] | None, max_bytes: int) -> Predicate | None:
    """The predicate of a filter, or None when there are no conditions.

    Args:
        conditions: The filter, as a client sent it.
        max_bytes: Largest filter, as JSON.

    Raises:
        InvalidArgument: A malformed filter (`filter.<key>` names the bad condition).
        ResourceExhausted: A filter larger than `max_bytes`.
    """
    if conditions is None:
        return None
    if not isinstance(conditions, Mapping):
        raise InvalidArgument.for_field("filter", "must be an object of metadata conditions")
    try:
        size = len(json.dumps(conditions, allow_nan=False).encode())
    except (TypeError, ValueError) as err:
        raise InvalidArgument.for_field(
            "filter", f"must be JSON with finite numbers: {err}"
        ) from err
    if size > max_bytes:
        raise ResourceExhausted.too_large("filter (bytes)", size, max_bytes)
    tests = [_condition(key, spec) for key, spec in conditions.items()]
    return _all(tests) if tests else None


def _condition(key: object, spec: Any) -> Predicate:
    """The test of one metadata key: a plain value (equality) or an object of operators."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument.for_field("filter", "metadata keys must be non-empty strings")
    field_path = f"filter.{key}"
    if key.startswith("$"):
        raise InvalidArgument.for_field(
            field_path, "top-level operators are not supported: conditions on keys all apply"
        )
    if not isinstance(spec, Mapping):
        return _operator(key, "$eq", spec)
    if not spec:
        raise InvalidArgument.for_field(field_path, "needs at least one operator")
    return _all([_operator(key, str(op), operand) for op, operand in spec.items()])


def _operator(key: str, op: str, operand: Any) -> Predicate:
    """The test of `op` on metadata key `key` (after checking its operand)."""
    field_path = f"filter.{key}"
    if op in ("$eq", "$ne"):
        matches = _matcher(key, lambda value: equal(value, operand))
        return matches if op == "$eq" else _negated(matches)
    if op in _ORDERINGS:
        if not _orderable(operand):
            raise InvalidArgument.for_field(field_path, f"{op} takes a number or a string")
        compare = _ORDERINGS[op]
        return _matcher(key, lambda value: _same_kind(value, operand) and compare(value, operand))
    if op in ("$in", "$nin"):
        if not isinstance(operand, list | tuple):
            raise InvalidArgument.for_field(field_path, f"{op} takes a list of values")
        options = tuple(operand)
        matches = _matcher(key, lambda value: any(equal(value, o) for o in options))
        return matches if op == "$in" else _negated(matches)
    if not op.startswith("$"):
        raise InvalidArgument.for_field(
            field_path,
            f'an object holds operators, not {op!r}; match an object with {{"$eq": ...}}',
        )
    raise InvalidArgument.for_field(
        field_path, f"unknown operator {op!r} (known: {', '.join(OPERATORS)})"
    )


def _matcher(key: str, test: Callable[[Any], bool]) -> Predicate:
    """Applies `test` to the value of `key`; a document without the key does not match."""

    def matches(metadata: Mapping[str, Any]) -> bool:
        value = metadata.get(key, _MISSING)
        return value is not _MISSING and test(value)

    return matches


def _all(tests: list[Predicate]) -> Predicate:
    """A predicate that holds when all of `tests` hold."""
    if len(tests) == 1:
        return tests[0]
    return lambda metadata: all(test(metadata) for test in tests)


def _negated(predicate: Predicate) -> Predicate:
    return lambda metadata: not predicate(metadata)


def equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans equal only booleans, numbers compare by value, lists and objects
    element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if _number(a) and _number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _orderable(value: Any) -> bool:
    return _number(value) or isinstance(value, str)


def _same_kind(value: Any, operand: Any) -> bool:
    return (_number(value) and _number(operand)) or (
        isinstance(value, str) and isinstance(operand, str)
    )
