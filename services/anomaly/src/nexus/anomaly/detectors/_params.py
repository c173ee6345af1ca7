"""Detector parameters: declared once per detector, parsed and validated from request values.

Requests carry parameters as text (a proto `map<string, string>`), Python callers as numbers; each
parser accepts both and returns the typed value, or raises `ValueError` with a message that says
what was expected. `parse_params` turns those into `InvalidArgument` naming the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nexus.anomaly.detectors._types import Params, ParamValue
from nexus.common.errors import InvalidArgument

Parser = Callable[[ParamValue], ParamValue]
"""Parses one raw value; raises ValueError saying what was expected."""

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter a detector accepts.

    Attributes:
        name: The parameter's name in `params`.
        default: The value used when `params` does not set it.
        parse: Turns a raw value into the typed value, or raises ValueError.
        description: One line for users: what it does, and its range.
    """

    name: str
    default: ParamValue
    parse: Parser
    description: str


def parse_params(
    specs: Sequence[ParamSpec], params: Params | None, *, field: str = "params"
) -> dict[str, ParamValue]:
    """Every declared parameter: its default, or the parsed value that `params` gives.

    Raises:
        InvalidArgument: An unknown parameter, or a value its parser rejects.
    """
    known = {spec.name: spec for spec in specs}
    resolved = {spec.name: spec.default for spec in specs}
    for name, raw in (params or {}).items():
        if name not in known:
            expected = ", ".join(sorted(known)) or "none"
            raise InvalidArgument.for_field(
                f"{field}.{name}", f"unknown parameter; this detector accepts: {expected}"
            )
        try:
            resolved[name] = known[name].parse(raw)
        except ValueError as err:
            raise InvalidArgument.for_field(f"{field}.{name}", f"{err}, got {raw!r}") from None
    return resolved


def integer(minimum: int, maximum: int | None = None) -> Parser:
    """An integer in [minimum, maximum] (maximum None: unbounded)."""
    expected = (
        f"an integer >= {minimum}" if maximum is None else (f"an integer in [{minimum}, {maximum}]")
    )

    def parse(raw: ParamValue) -> ParamValue:
        value = _to_int(raw, expected)
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(f"must be {expected}")
        return value

    return parse


def number(minimum: float, maximum: float | None = None, *, open_below: bool = False) -> Parser:
    """A finite number in [minimum, maximum], or (minimum, maximum] when `open_below`."""
    low = "(" if open_below else "["
    expected = f"a number in {low}{minimum}, {'inf)' if maximum is None else f'{maximum}]'}"

    def parse(raw: ParamValue) -> ParamValue:
        value = _to_float(raw, expected)
        too_low = value <= minimum if open_below else value < minimum
        if too_low or (maximum is not None and value > maximum):
            raise ValueError(f"must be {expected}")
        return value

    return parse


def choice(*options: str) -> Parser:
    """One of `options` (case-insensitive); returns it in lower case."""
    expected = "one of " + ", ".join(repr(o) for o in options)

    def parse(raw: ParamValue) -> ParamValue:
        value = str(raw).strip().lower()
        if value not in options:
            raise ValueError(f"must be {expected}")
        return value

    return parse


def boolean() -> Parser:
    """A flag: true/false, yes/no, on/off or 1/0."""

    def parse(raw: ParamValue) -> ParamValue:
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError("must be true or false")

    return parse


def either(*parsers: Parser, expected: str) -> Parser:
    """The first of `parsers` that accepts the value; `expected` says what all of them allow."""

    def parse(raw: ParamValue) -> ParamValue:
        for parser in parsers:
            try:
                return parser(raw)
            except ValueError:
                continue
        raise ValueError(f"must be {expected}")

    return parse


def _to_int(raw: ParamValue, expected: str) -> int:
    # A float is refused even when integral: for `max_samples` 1.0 means "all rows", not 1 row.
    if isinstance(raw, bool | float):
        raise ValueError(f"must be {expected}")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"must be {expected}") from None


def _to_float(raw: ParamValue, expected: str) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"must be {expected}")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be {expected}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be {expected}")
    return value
