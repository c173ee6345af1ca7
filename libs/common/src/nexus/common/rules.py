"""Field rules: what a request field accepts, declared once on the proto field.

`(nexus.common.v1.rules)` on a field (protos/nexus/common/v1/options.proto) says that it is
required, holds a name or a version number (`nexus.common.names`), lies in a range, or has at
most so many items or characters. From that one declaration:

- every service checks each request before its handler runs (`RulesInterceptor`, installed by
  `ServiceHost`), answering INVALID_ARGUMENT with one violation per bad field;
- the gateway's OpenAPI document shows the same rules as JSON-schema keywords (`keywords`,
  `required_fields`), so the document says what the API enforces and cannot drift from it.

Limits that a deployment sets (batch sizes, text lengths) stay in the services' settings; a
rule here is the API's own contract, which a setting may only tighten.
"""

from __future__ import annotations

# grpc ships no type stubs: its classes are `Any` to mypy, so subclassing them is allowed here.
# mypy: allow-subclassing-any
import functools
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from nexus.api.common.v1 import options_pb2
from nexus.common.errors import FieldViolation, InvalidArgument
from nexus.common.grpc_handlers import WrappingInterceptor, checking_requests
from nexus.common.names import NAME_PATTERN, NAME_RULE, VERSION_PATTERN

Schema = dict[str, Any]

_FORMS: dict[int, tuple[str, str]] = {
    options_pb2.IDENTIFIER_NAME: (NAME_PATTERN, f"must be {NAME_RULE}"),
    options_pb2.IDENTIFIER_VERSION: (VERSION_PATTERN, "must be a version number (1, 2, ...)"),
}
_NUMBERS = frozenset(
    {
        FieldDescriptor.CPPTYPE_DOUBLE,
        FieldDescriptor.CPPTYPE_FLOAT,
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)


def rules_of(field: FieldDescriptor) -> options_pb2.FieldRules | None:
    """The field's declared rules, or None."""
    options = field.GetOptions()
    if not options.HasExtension(options_pb2.rules):
        return None
    return options.Extensions[options_pb2.rules]


# Checking.


@dataclass(frozen=True)
class _Rule:
    """A field's rules in plain Python values (protobuf accessors cost more per call)."""

    required: bool
    form: re.Pattern[str] | None
    form_words: str
    max_items: int | None
    max_length: int | None
    min_length: int
    bounds: tuple[tuple[Callable[[float, float], bool], str, float], ...]

    @classmethod
    def of(cls, rules: options_pb2.FieldRules) -> _Rule:
        form, words = _FORMS.get(rules.identifier, ("", ""))
        return cls(
            required=rules.required,
            form=re.compile(form) if form else None,
            form_words=words,
            max_items=rules.max_items if rules.HasField("max_items") else None,
            max_length=rules.max_length if rules.HasField("max_length") else None,
            min_length=rules.min_length,
            bounds=tuple((*_TESTS[k], b) for k, b in _bounds(rules).items()),
        )


@dataclass(frozen=True)
class _Step:
    """One field to look at: its rule, and the plan of its message type if that has rules."""

    name: str
    repeated: bool
    presence: bool  # a scalar with presence (proto3 `optional`), or a message
    number: bool
    rule: _Rule | None
    nested: tuple[_Step, ...]


@functools.cache
def _plan(message: Descriptor) -> tuple[_Step, ...]:
    """The fields of `message` that carry rules, directly or in a nested message."""
    steps = []
    for field in message.fields:
        nested: tuple[_Step, ...] = ()
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            nested = _plan(field.message_type)
        rules = rules_of(field)
        if rules is not None or nested:
            rule = _Rule.of(rules) if rules is not None else None
            presence = field.has_presence and not field.is_repeated
            number = field.cpp_type in _NUMBERS
            steps.append(_Step(field.name, field.is_repeated, presence, number, rule, nested))
    return tuple(steps)


def violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every broken rule of `message` and its nested messages, by field path."""
    found: list[FieldViolation] = []
    for step in _plan(message.DESCRIPTOR):
        value = getattr(message, step.name)
        if step.presence and not message.HasField(step.name):
            if step.rule is not None and step.rule.required:
                found.append(FieldViolation(prefix + step.name, "is required"))
            continue
        if step.rule is not None:
            _check_field(step, step.rule, value, prefix + step.name, found)
        if step.nested:
            if step.repeated:
                for index, item in enumerate(value):
                    found += violations(item, f"{prefix}{step.name}[{index}].")
            else:
                found += violations(value, f"{prefix}{step.name}.")
    return found


def check_request(message: Message) -> None:
    """Raises INVALID_ARGUMENT, with one violation per bad field, unless `message` keeps every
    declared rule."""
    broken = violations(message)
    if broken:
        text = "; ".join(f"{v.field}: {v.description}" for v in broken)
        raise InvalidArgument(text, violations=broken)


def _check_field(
    step: _Step, rule: _Rule, value: Any, path: str, found: list[FieldViolation]
) -> None:
    if rule.required and not step.presence and not value:
        found.append(FieldViolation(path, "is required"))
    elif not step.repeated:
        if value != "":  # an empty string is the field left out: only `required` applies
            _check_value(step, rule, value, path, found)
    else:
        if rule.max_items is not None and len(value) > rule.max_items:
            too_many = f"has {len(value)} items, at most {rule.max_items}"
            found.append(FieldViolation(path, too_many))
        for index, item in enumerate(value):
            _check_value(step, rule, item, f"{path}[{index}]", found)


def _check_value(
    step: _Step, rule: _Rule, value: Any, path: str, found: list[FieldViolation]
) -> None:
    if step.number:
        if rule.bounds and (problem := _out_of_range(rule, value)):
            found.append(FieldViolation(path, problem))
    elif isinstance(value, str):
        if len(value) < rule.min_length:
            short = f"has {len(value)} characters, at least {rule.min_length}"
            found.append(FieldViolation(path, "must not be empty" if not value else short))
        elif rule.form is not None and not rule.form.fullmatch(value):
            found.append(FieldViolation(path, f"{rule.form_words}, got {value!r}"))
        elif rule.max_length is not None and len(value) > rule.max_length:
            found.append(
                FieldViolation(path, f"has {len(value)} characters, at most {rule.max_length}")
            )


def _out_of_range(rule: _Rule, value: float) -> str:
    """What is wrong with a bounded number, or "" (it must be finite, too)."""
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    for holds, words, bound in rule.bounds:
        if not holds(value, bound):
            return f"must be {words} {_number(bound)}, got {value}"
    return ""


def _bounds(rules: options_pb2.FieldRules) -> dict[str, float]:
    """The bounds the rules set, by their JSON-schema keyword."""
    bounds = {}
    if rules.HasField("minimum"):
        bounds["minimum"] = rules.minimum
    if rules.HasField("maximum"):
        bounds["maximum"] = rules.maximum
    if rules.HasField("exclusive_minimum"):
        bounds["exclusiveMinimum"] = rules.exclusive_minimum
    if rules.HasField("exclusive_maximum"):
        bounds["exclusiveMaximum"] = rules.exclusive_maximum
    return bounds


_TESTS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "minimum": (operator.ge, "at least"),
    "maximum": (operator.le, "at most"),
    "exclusiveMinimum": (operator.gt, "greater than"),
    "exclusiveMaximum": (operator.lt, "less than"),
}


def _number(bound: float) -> int | float:
    return int(bound) if bound.is_integer() else bound


# The same rules as JSON schema.


_NUMBER_TYPES = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
        FieldDescriptor.CPPTYPE_FLOAT,
        FieldDescriptor.CPPTYPE_DOUBLE,
    }
)


def keywords(field: FieldDescriptor) -> tuple[Schema, Schema]:
    """JSON-schema keywords of the field's rules: for each value, and for the list (for a
    repeated field; empty otherwise)."""
    rules = rules_of(field)
    if rules is None:
        return {}, {}
    value: Schema = {}
    if rules.identifier in _FORMS:
        pattern = _FORMS[rules.identifier][0]
        # A field that may be left empty accepts "" too.
        optional = field.is_repeated or not rules.required
        value["pattern"] = f"^({pattern})?$" if optional else f"^{pattern}$"
    if rules.required and field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated:
        value["minLength"] = 1
    if rules.required and _is_number(field) and not field.is_repeated:
        value["not"] = {"const": 0}  # a required number's zero is "not set" in proto3
    if rules.HasField("max_length"):
        value["maxLength"] = rules.max_length
    if rules.min_length:
        value["minLength"] = max(rules.min_length, value.get("minLength", 0))
    value.update({keyword: _number(bound) for keyword, bound in _bounds(rules).items()})
    container: Schema = {}
    if field.is_repeated:
        if rules.required:
            container["minItems"] = 1
        if rules.HasField("max_items"):
            container["maxItems"] = rules.max_items
    return value, container


def _is_number(field: FieldDescriptor) -> bool:
    return field.cpp_type in _NUMBER_TYPES


def required_fields(message: Descriptor) -> list[str]:
    """The names of the message's required fields."""
    return [f.name for f in message.fields if (r := rules_of(f)) is not None and r.required]


# The interceptor.


class RulesInterceptor(WrappingInterceptor):
    """Checks every request against its declared rules before the handler runs; install it
    inside the error interceptor (which maps the INVALID_ARGUMENT)."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler, checking its request first."""
        return checking_requests(handler, check_request)
