"""Rule violations in OpenAI's words: the message, the parameter's path and OpenAI's error code.

The code travels as the error's reason (UPPER_SNAKE; the OpenAI surface answers it lower-cased
as `code`), the path as its field violation (the surface's `param`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jsonschema

from nexus.common.errors import FieldViolation, InvalidArgument

INVALID_TYPE = "INVALID_TYPE"
INVALID_VALUE = "INVALID_VALUE"
MISSING_REQUIRED_PARAMETER = "MISSING_REQUIRED_PARAMETER"
UNKNOWN_PARAMETER = "UNKNOWN_PARAMETER"
UNSUPPORTED_PARAMETER = "UNSUPPORTED_PARAMETER"
EMPTY_ARRAY = "EMPTY_ARRAY"

_JSON_TYPES = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}
_SHOWN_CHARS = 40


def violation(path: str, message: str, reason: str = INVALID_VALUE) -> InvalidArgument:
    """INVALID_ARGUMENT for the parameter at `path`, with OpenAI's code as the reason."""
    return InvalidArgument(message, reason=reason, violations=[FieldViolation(path, message)])


def unsupported(path: str, why: str) -> InvalidArgument:
    """A valid OpenAI parameter (or value) that Nexus does not serve."""
    return violation(path, f"Unsupported parameter: '{path}'. {why}", UNSUPPORTED_PARAMETER)


def missing(path: str) -> InvalidArgument:
    """A required parameter that is absent."""
    return violation(path, f"Missing required parameter: '{path}'.", MISSING_REQUIRED_PARAMETER)


def unknown(path: str) -> InvalidArgument:
    """A parameter OpenAI's request does not have."""
    return violation(path, f"Unrecognized request argument supplied: {path}", UNKNOWN_PARAMETER)


def validators(schemas: Mapping[str, Any]) -> dict[str, jsonschema.Validator]:
    """A validator per parameter."""
    return {name: jsonschema.Draft202012Validator(schema) for name, schema in schemas.items()}


def check_parameter(known: Mapping[str, jsonschema.Validator], name: str, value: Any) -> None:
    """Raises InvalidArgument in OpenAI's words for a parameter outside its schema (or unknown).

    Args:
        known: The validators of the request's parameters, by name.
        name: The parameter's name.
        value: Its value, as JSON.
    """
    validator = known.get(name)
    if validator is None:
        raise unknown(name)
    check_finite(name, value)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        raise _from_schema_error(name, error)


def check_finite(name: str, value: Any) -> None:
    """JSON has neither NaN nor infinities: an infinite number was a finite JSON number too
    large for a double (the OpenAI surface sends it so), NaN came from proto3 JSON's "NaN"."""
    pending: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while pending:
        item, parts = pending.pop()
        if isinstance(item, dict):
            pending.extend((child, (*parts, key)) for key, child in item.items())
        elif isinstance(item, list):
            pending.extend((child, (*parts, i)) for i, child in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            path = path_of(name, parts)
            problem = "not a number" if math.isnan(item) else "the number is out of range"
            raise violation(path, f"Invalid '{path}': {problem}.")


def path_of(name: str, parts: Iterable[Any]) -> str:
    """`tools[0].function.name` from the parameter's name and the parts below it."""
    return name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def json_type(value: Any) -> str:
    """The JSON type of a value, in words ("a string", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def shown(value: Any) -> str:
    """A value quoted for a message, cut short."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        value = int(value)  # a whole number, as the client wrote it (JSON has one number type)
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _from_schema_error(name: str, error: jsonschema.ValidationError) -> InvalidArgument:
    path = path_of(name, error.absolute_path)
    value, kind, rule = error.instance, str(error.validator), error.validator_value
    if "propertyNames" in error.relative_schema_path:
        return violation(path, f"Invalid key {shown(value)} in '{path}'.", INVALID_VALUE)
    if kind == "additionalProperties":
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = next(key for key in value if key not in known)
        return violation(
            f"{path}.{extra}", f"Unknown parameter: '{path}.{extra}'.", UNKNOWN_PARAMETER
        )
    if kind in ("minimum", "maximum"):
        types = error.schema.get("type", ()) if isinstance(error.schema, dict) else ()
        integer = "integer" in types  # by the rule: a Struct carries every number as a double
        return _out_of_bounds(path, value, rule, above=kind == "maximum", integer=integer)
    handler = _HANDLERS.get(kind)
    if handler is not None:
        return handler(path, value, rule)
    return violation(path, f"Invalid '{path}': {error.message}.", INVALID_VALUE)


def _type(path: str, value: Any, rule: Any) -> InvalidArgument:
    names = [rule] if isinstance(rule, str) else list(rule)
    expected = " or ".join(_JSON_TYPES[n] for n in names)
    message = f"Invalid type for '{path}': expected {expected}, but got {json_type(value)} instead."
    return violation(path, message, INVALID_TYPE)


def _enum(path: str, value: Any, rule: Any) -> InvalidArgument:
    allowed = ", ".join(shown(v) if v is not None else "null" for v in rule)
    message = f"Invalid value for '{path}': {shown(value)}. Supported values are: {allowed}."
    return violation(path, message, INVALID_VALUE)


def _const(path: str, value: Any, rule: Any) -> InvalidArgument:
    return _enum(path, value, [rule])


def _required(path: str, value: Any, rule: Any) -> InvalidArgument:
    absent = next(key for key in rule if key not in value)
    return missing(f"{path}.{absent}")


def _out_of_bounds(
    path: str, value: Any, rule: Any, *, above: bool, integer: bool
) -> InvalidArgument:
    kind = "integer" if integer else "decimal"
    side, sign = ("above maximum", "<=") if above else ("below minimum", ">=")
    message = (
        f"Invalid '{path}': {kind} {side} value. "
        f"Expected a value {sign} {shown(rule)}, but got {shown(value)} instead."
    )
    reason = f"{kind}_{'above_max' if above else 'below_min'}_value".upper()
    return violation(path, message, reason)


def _size(what: str, unit: str, too_long: bool) -> Callable[[str, Any, Any], InvalidArgument]:
    def check(path: str, value: Any, rule: Any) -> InvalidArgument:
        if what == "array" and not too_long and not value:
            message = (
                f"Invalid '{path}': empty array. Expected an array with minimum length {rule}, "
                "but got an empty array instead."
            )
            return violation(path, message, EMPTY_ARRAY)
        bound = "maximum" if too_long else "minimum"
        message = (
            f"Invalid '{path}': {what} too {'long' if too_long else 'short'}. Expected "
            f"{_article(what)} with {bound} {unit} {rule}, but got {_article(what)} with "
            f"{unit} {len(value)} instead."
        )
        reason = f"{what}_{'above_max' if too_long else 'below_min'}_length".upper()
        return violation(path, message, reason)

    return check


def _properties(path: str, value: Any, rule: Any) -> InvalidArgument:
    message = (
        f"Invalid '{path}': too many properties. Expected an object with at most {rule} "
        f"properties, but got an object with {len(value)} properties instead."
    )
    return violation(path, message, "OBJECT_ABOVE_MAX_PROPERTIES")


def _pattern(path: str, value: Any, rule: Any) -> InvalidArgument:
    message = f"Invalid '{path}': {shown(value)} does not match the pattern {rule!r}."
    return violation(path, message, INVALID_VALUE)


def _article(what: str) -> str:
    return f"an {what}" if what[0] in "aeiou" else f"a {what}"


_HANDLERS: dict[str, Callable[[str, Any, Any], InvalidArgument]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "required": _required,
    "maxLength": _size("string", "length", too_long=True),
    "minLength": _size("string", "length", too_long=False),
    "maxItems": _size("array", "length", too_long=True),
    "minItems": _size("array", "length", too_long=False),
    "maxProperties": _properties,
    "pattern": _pattern,
}
