"""Numbers beyond a double's range are a 400 naming the field, on every route and every numeric
field (in a body, a nested message, a list, a Struct, or the query string), never a 500.

The cases are made from the descriptors, so a new route or field is covered with no change here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from nexus.gateway import discover
from nexus.gateway.descriptors import HttpBinding
from nexus.gateway.transcode import QUERY_WELL_KNOWN

HUGE = "1" + "0" * 309  # a 310-digit integer: float() of it overflows
_T = FieldDescriptor
_NUMBERS = {
    _T.CPPTYPE_DOUBLE,
    _T.CPPTYPE_FLOAT,
    _T.CPPTYPE_INT32,
    _T.CPPTYPE_INT64,
    _T.CPPTYPE_UINT32,
    _T.CPPTYPE_UINT64,
}
_STRUCTS = {"google.protobuf.Struct", "google.protobuf.Value"}
_MAX_DEPTH = 4


def _number_paths(message: Descriptor, depth: int = 0) -> Iterator[list[Any]]:
    """The JSON keys down to each number a request can carry (list items are index 0)."""
    for field in message.fields:
        nested = field.message_type
        step: list[Any] = [field.name, 0] if field.is_repeated else [field.name]
        if nested is None:
            if field.cpp_type in _NUMBERS:
                yield step
        elif nested.GetOptions().map_entry:
            if nested.fields_by_name["value"].cpp_type in _NUMBERS:
                yield [field.name, "k"]
        elif nested.full_name == "google.protobuf.Struct":
            yield [*step, "x"]
        elif nested.full_name == "google.protobuf.Value" or _is_number(field):
            yield step
        elif depth < _MAX_DEPTH and not nested.full_name.startswith("google.protobuf."):
            for keys in _number_paths(nested, depth + 1):
                yield step + keys


def _path(keys: list[Any]) -> str:
    """The field path an error names: "points[0].values[0]"."""
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else f".{key}"
    return text.lstrip(".")


def _tree(keys: list[Any]) -> Any:
    """{"a": [{"b": HUGE}]} for ["a", 0, "b"]: the huge number as a raw JSON literal."""
    if not keys:
        return _Raw()
    if keys[0] == 0:
        return [_tree(keys[1:])]
    return {keys[0]: _tree(keys[1:])}


class _Raw:
    """Stands for the huge literal in the JSON text."""


def _json(value: Any) -> str:
    if isinstance(value, _Raw):
        return HUGE
    if isinstance(value, list):
        return "[" + ",".join(_json(v) for v in value) + "]"
    return "{" + ",".join(f'"{k}":{_json(v)}' for k, v in value.items()) + "}"


def _cases() -> Iterator[Any]:
    for binding in discover():
        bound = {v.field_path[0] for v in binding.template.variables}
        name = binding.operation_id
        if binding.body:
            for keys in _number_paths(binding.method.input_type):
                if keys[0] not in bound and binding.body in ("*", keys[0]):
                    yield pytest.param(binding, "body", keys, id=f"{name}:{_path(keys)}")
            continue
        for field in binding.method.input_type.fields:
            queryable = (
                field.message_type is None or field.message_type.full_name in QUERY_WELL_KNOWN
            )
            if field.name not in bound and queryable and _is_number(field):
                yield pytest.param(binding, "query", [field.name], id=f"{name}:?{field.name}")


def _is_number(field: FieldDescriptor) -> bool:
    if field.message_type is not None:
        value = field.message_type.fields_by_name.get("value")
        return value is not None and value.cpp_type in _NUMBERS
    return field.cpp_type in _NUMBERS


CASES = list(_cases())


def test_every_kind_of_place_is_covered() -> None:
    paths = {_path(case.values[2]) for case in CASES}
    # The walk reaches each kind of place: top level, a list in a list, a Struct, the query.
    assert {"temperature", "points[0].values[0]", "filter.x", "page_size"} <= paths
    assert {"request.temperature", "metrics.k"} <= paths  # `body: "request"`, a map


@pytest.mark.parametrize(("binding", "where", "keys"), CASES)
async def test_a_310_digit_number_is_a_400_naming_the_field(
    client: httpx.AsyncClient, binding: HttpBinding, where: str, keys: list[Any]
) -> None:
    url = re.sub(r"\{[^}]+\}", "x1", binding.template.openapi_path())
    if where == "query":
        reply = await client.request(binding.http_method, url, params={keys[0]: HUGE})
    else:
        body = _json(_tree(keys if binding.body == "*" else keys[1:]))
        headers = {"content-type": "application/json"}
        reply = await client.request(binding.http_method, url, content=body, headers=headers)

    assert reply.status_code == 400, reply.text
    assert [v["field"] for v in reply.json()["error"]["field_violations"]] == [_path(keys)]
