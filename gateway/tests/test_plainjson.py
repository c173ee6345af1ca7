"""The plain-JSON fast path fills every request exactly as json_format does, or steps aside."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.gateway.descriptors import discover
from nexus.gateway.plainjson import parse_plain

ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    7,
    1.5,
    2.0,
    2**70,
    10**400,
    float("nan"),
    float("inf"),
    "",
    "x",
    "1",
    "NaN",
    "é",
    "\ud800",
    [],
    [None],
    [1, "a"],
    {},
    {"unknown": 1},
]
REQUEST_CLASSES = sorted(
    {b.request_class for b in discover() if b.body == "*"}, key=lambda c: c.DESCRIPTOR.full_name
)


def _plain_value(field: FieldDescriptor, depth: int) -> Any:
    """A value json_format accepts for one element of the field."""
    if field.message_type is not None:
        return _plain_tree(field.message_type, depth + 1) if depth < 3 else {}
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].name
    if field.type == FieldDescriptor.TYPE_BYTES:
        return "aGk="
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return True
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        return "välue"
    if field.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return 0.25
    return 3


def _plain_tree(descriptor: Descriptor, depth: int = 0) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    if descriptor.full_name.startswith("google.protobuf."):
        return tree
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        value = _plain_value(field, depth)
        tree[field.name] = [value, value] if field.is_repeated else value
    return tree


def _cases(message_class: type[Message]) -> Iterator[dict[str, Any]]:
    """The plain tree, then each field in turn set to each odd value, named by its JSON name,
    and named twice."""
    descriptor = message_class.DESCRIPTOR
    base = _plain_tree(descriptor)
    yield base
    yield {}
    for field in descriptor.fields:
        for odd in ODD_VALUES:
            yield {**base, field.name: odd}
            yield {**base, field.name: [odd]}
        if field.name in base:
            value = base.pop(field.name)
            yield {**base, field.json_name: value}
            yield {**base, field.json_name: value, field.name: value}
            base[field.name] = value
        if field.message_type is not None and not field.is_repeated:
            for odd in ODD_VALUES:
                yield {**base, field.name: {sub.name: odd for sub in field.message_type.fields}}


def _json_format(message_class: type[Message], tree: dict[str, Any]) -> Message | None:
    message = message_class()
    try:
        json_format.ParseDict(tree, message, ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError, AttributeError, RecursionError):
        return None
    return message


@pytest.mark.parametrize("message_class", REQUEST_CLASSES, ids=lambda c: c.DESCRIPTOR.name)
def test_same_message_as_json_format_or_none(message_class: type[Message]) -> None:
    fast_cases = 0
    for tree in _cases(message_class):
        fast = parse_plain(message_class, tree)
        if fast is None:
            continue
        fast_cases += 1
        expected = _json_format(message_class, tree)
        assert expected is not None, f"fast path accepted what json_format refuses: {tree!r}"
        assert fast == expected, tree
        assert fast.SerializeToString(deterministic=True) == expected.SerializeToString(
            deterministic=True
        )
    assert fast_cases > 0


def test_a_score_request_takes_the_fast_path() -> None:
    tree = json.loads('{"points": [{"values": [1, 2.5e-3], "id": "a"}, {"values": []}]}')

    fast = parse_plain(pb.ScorePointsRequest, tree)

    assert fast == _json_format(pb.ScorePointsRequest, tree)
    assert fast is not None
    assert list(fast.points[0].values) == [1.0, 0.0025]


@pytest.mark.parametrize(
    "tree",
    [
        {"points": [{"values": [float("nan")]}]},  # json_format's error names the field
        {"points": [{"values": [True]}]},
        {"points": [None]},
        {"points": {"values": [1]}},
        {"algorithm": "ALGORITHM_ISOLATION_FOREST"},  # enums: json_format
        {"unknown": 1},
        {"name": "\ud800"},
    ],
)
def test_anything_else_is_left_to_json_format(tree: dict[str, Any]) -> None:
    assert parse_plain(pb.TrainDetectorRequest, tree) is None
