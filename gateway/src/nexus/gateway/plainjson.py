"""A fast path for the commonest request bodies: JSON of plain fields, straight into a message.

`json_format.ParseDict` handles every proto3 JSON rule in pure Python, and costs most of the
transcoding of a small request. Most bodies need few of those rules: strings, finite numbers,
booleans, nested messages and lists of them (a score request is a list of points of numbers).
`parse_plain` fills a message from such a body directly and answers None for anything else
(enums, bytes, maps, well-known types, oneof and optional fields, null, a value of another type,
an unknown or twice-named field, deep nesting), which the caller then parses with json_format:
what the fast path accepts, it fills exactly as json_format would, and every error is still
json_format's.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

MAX_DEPTH = 32
"""Nesting deeper than this is left to json_format (which has its own limit and error)."""

_INTEGERS = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)


class _NotPlain(Exception):
    """The body needs json_format."""


def parse_plain(message_class: type[Message], tree: dict[str, Any]) -> Message | None:
    """The message that `tree` (a parsed JSON object) describes, or None when the fast path does
    not apply (the caller then uses json_format, which gives the same message or the error)."""
    message = message_class()
    try:
        _fill(message, tree, 0)
    except (_NotPlain, ValueError, TypeError, OverflowError):  # setters refuse out-of-range values
        return None
    return message


@functools.cache
def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor] | None:
    """Proto and JSON names -> the fields the fast path can fill; None for a message it leaves
    to json_format (well-known types with a JSON form of their own, map entries)."""
    if descriptor.full_name.startswith("google.protobuf.") or descriptor.GetOptions().map_entry:
        return None
    names: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        # Oneofs and proto3 optionals have presence rules; maps are JSON objects.
        if field.containing_oneof is None and not _is_map(field):
            names[field.name] = field
            names[field.json_name] = field
    return names


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _fill(message: Message, tree: dict[str, Any], depth: int) -> None:
    names = _fields(message.DESCRIPTOR)
    if names is None or depth > MAX_DEPTH:
        raise _NotPlain
    seen: set[int] = set()
    for key, value in tree.items():
        field = names.get(key)
        if field is None or field.number in seen:  # unknown, or named twice: json_format's error
            raise _NotPlain
        seen.add(field.number)
        if field.is_repeated:
            _fill_repeated(message, field, value, depth)
        elif field.message_type is not None:
            if type(value) is not dict:
                raise _NotPlain
            child = getattr(message, field.name)
            child.SetInParent()
            _fill(child, value, depth + 1)
        else:
            setattr(message, field.name, _scalar(field, value))


def _fill_repeated(message: Message, field: FieldDescriptor, value: Any, depth: int) -> None:
    if type(value) is not list:
        raise _NotPlain
    container = getattr(message, field.name)
    if field.message_type is None:
        container.extend([_scalar(field, item) for item in value])
        return
    for item in value:
        if type(item) is not dict:
            raise _NotPlain
        _fill(container.add(), item, depth + 1)


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    """The value as json_format would set it, for the plain cases; _NotPlain otherwise."""
    kind, kind_of_value = field.cpp_type, type(value)
    if kind == FieldDescriptor.CPPTYPE_DOUBLE and (
        kind_of_value is int or (kind_of_value is float and math.isfinite(value))
    ):
        return float(value)
    if (kind in _INTEGERS and kind_of_value is int) or (
        kind == FieldDescriptor.CPPTYPE_BOOL and kind_of_value is bool
    ):
        return value
    if _is_text(field) and kind_of_value is str and (value.isascii() or _encodes(value)):
        # json_format refuses unpaired surrogates, the only strings UTF-8 cannot encode.
        return value
    raise _NotPlain


def _is_text(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_STRING


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
