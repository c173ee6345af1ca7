"""CEL expressions: conditions and request mapping, sandboxed, with limits (never `eval`).

CEL (the `common-expression-language` package, Rust bindings of the `cel` crate) has no loops
beyond bounded macros over given lists, no I/O and no access to the host: an expression can only
read the variables it is given. Its cost is bounded by its length and the size of those
variables, which both have limits. A value is `${expr}`: a string that is exactly one `${...}`
becomes the expression's value (any type); `${...}` inside a longer string is replaced by the
value's text.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import cel

from nexus.common.errors import InvalidArgument

MAX_EXPRESSION_CHARS = 2_000
"""Longest expression."""
VARIABLES = frozenset({"inputs", "steps", "run", "item", "event", "tick"})
"""The names an expression may read."""

_WHOLE = re.compile(r"^\$\{(.+)\}$", re.DOTALL)
_PART = re.compile(r"\$\{(.+?)\}", re.DOTALL)
_MACRO = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


class ExpressionError(ValueError):
    """An expression that does not compile or could not be evaluated."""


@functools.lru_cache(maxsize=4096)
def compiled(source: str) -> Any:
    """The compiled program of `source` (cached).

    Raises:
        ExpressionError: Too long, a syntax error, or a variable that is not one of `VARIABLES`.
    """
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        program = cel.compile(source)
    except ValueError as err:
        raise ExpressionError(_first_line(str(err))) from err
    unknown = sorted({_root(name) for name in program.variables()} - VARIABLES - _bound(source))
    if unknown:
        raise ExpressionError(
            f"unknown variable {unknown[0]!r} (known: {', '.join(sorted(VARIABLES))})"
        )
    return program


def roots(source: str) -> frozenset[str]:
    """The variables a (compiled) expression reads (not those its macros bind)."""
    return frozenset(_root(n) for n in compiled(source).variables()) - _bound(source)


def _bound(source: str) -> frozenset[str]:
    """The names that comprehension macros bind (`versions.filter(v, ...)` binds `v`): local to
    the expression, not variables it reads."""
    return frozenset(_MACRO.findall(source))


def evaluate(source: str, context: Mapping[str, Any]) -> Any:
    """The value of one expression over `context`.

    Raises:
        ExpressionError: It does not compile, or fails (a missing field, a division by zero).
    """
    try:
        return compiled(source).execute(dict(context))
    except ExpressionError:
        raise
    except Exception as err:  # the binding raises KeyError, TypeError, ZeroDivisionError...
        raise ExpressionError(f"{source!r}: {_first_line(str(err)) or type(err).__name__}") from err


def condition(source: str, context: Mapping[str, Any]) -> bool:
    """A condition's value, which must be a boolean.

    Raises:
        ExpressionError: As `evaluate`, or a value that is not a boolean.
    """
    value = evaluate(source, context)
    if not isinstance(value, bool):
        raise ExpressionError(f"{source!r} is {type(value).__name__}, not a boolean")
    return value


def render(template: Any, context: Mapping[str, Any]) -> Any:
    """A value with its `${...}` expressions replaced, in strings at any depth."""
    if isinstance(template, str):
        return _render_string(template, context)
    if isinstance(template, list):
        return [render(item, context) for item in template]
    if isinstance(template, dict):
        return {key: render(value, context) for key, value in template.items()}
    return template


def expressions_in(template: Any) -> list[str]:
    """Every `${...}` expression of a value, to compile them before anything runs."""
    if isinstance(template, str):
        return [match.group(1) for match in _PART.finditer(template)]
    if isinstance(template, list):
        return [source for item in template for source in expressions_in(item)]
    if isinstance(template, dict):
        return [source for value in template.values() for source in expressions_in(value)]
    return []


def reads(template: Any, variable: str) -> bool:
    """Whether an expression of a value reads `variable` (a value with none reads nothing)."""
    return any(variable in roots(source) for source in expressions_in(template))


def _render_string(text: str, context: Mapping[str, Any]) -> Any:
    whole = _WHOLE.match(text)
    if whole and "${" not in whole.group(1):
        return _plain(evaluate(whole.group(1), context))
    return _PART.sub(lambda match: _text(evaluate(match.group(1), context)), text)


def _plain(value: Any) -> Any:
    """CEL's values as JSON values (bytes, timestamps and durations as text)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _text(value: Any) -> str:
    plain = _plain(value)
    return plain if isinstance(plain, str) else json.dumps(plain)


def _root(name: str) -> str:
    return name.split(".", 1)[0]


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else ""


def check_expression(source: str, field: str) -> None:
    """Compiles `source`, as an InvalidArgument on `field` when it does not.

    Raises:
        InvalidArgument: With one violation on `field`.
    """
    try:
        compiled(source)
    except ExpressionError as err:
        raise InvalidArgument.for_field(field, str(err)) from err
