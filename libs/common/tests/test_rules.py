"""Field rules: the check every service runs and the JSON schema the OpenAPI document shows come
from one declaration, and agree on every declared field for values on and around each bound."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

import nexus.api
from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.common import rules
from nexus.common.errors import InvalidArgument

_T = FieldDescriptor
_JSON_TYPES = {
    _T.CPPTYPE_DOUBLE: "number",
    _T.CPPTYPE_FLOAT: "number",
    _T.CPPTYPE_INT32: "integer",
    _T.CPPTYPE_INT64: "integer",
    _T.CPPTYPE_UINT32: "integer",
    _T.CPPTYPE_UINT64: "integer",
    _T.CPPTYPE_STRING: "string",
}
STRINGS = ["", "a", "A-1_b", "-", "_a", "a.b", "0", "01", "12", "x" * 64, "x" * 65, "y" * 257]


def _messages() -> Iterator[Descriptor]:
    for info in pkgutil.walk_packages(nexus.api.__path__, prefix="nexus.api."):
        module = importlib.import_module(info.name)
        file = getattr(module, "DESCRIPTOR", None)
        for message in getattr(file, "message_types_by_name", {}).values():
            yield message
            yield from message.nested_types


def _ruled_fields() -> list[Any]:
    found = []
    for message in _messages():
        for field in message.fields:
            if rules.rules_of(field) is not None:
                found.append(pytest.param(message, field, id=f"{message.name}.{field.name}"))
    return found


FIELDS = _ruled_fields()


def _candidates(field: FieldDescriptor) -> list[Any]:
    if field.cpp_type == _T.CPPTYPE_STRING:
        return STRINGS
    if field.cpp_type in _JSON_TYPES:
        bounds = [b for b in rules.keywords(field)[0].values() if isinstance(b, int | float)]
        near = [b + d for b in bounds for d in (-1, -0.5, -1e-9, 0, 1e-9, 0.5, 1)]
        values = [0, 1, -1, 7, *near]
        if field.cpp_type != _T.CPPTYPE_DOUBLE:
            values = [int(v) for v in values if float(v).is_integer()]
        if field.cpp_type in (_T.CPPTYPE_UINT32, _T.CPPTYPE_UINT64):
            values = [v for v in values if v >= 0]
        return values
    return []


def _schema_accepts(field: FieldDescriptor, value: Any) -> bool:
    each, whole = rules.keywords(field)
    schema = {"type": _JSON_TYPES[field.cpp_type], **each}
    if field.is_repeated:
        schema, value = {"type": "array", "items": schema, **whole}, [value]
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def _check_accepts(message: Descriptor, field: FieldDescriptor, value: Any) -> bool:
    request: Message = GetMessageClass(message)()
    if field.is_repeated:
        getattr(request, field.name).append(value)
    else:
        setattr(request, field.name, value)
    return not [v for v in rules.violations(request) if v.field.split("[")[0] == field.name]


def test_the_protos_declare_rules() -> None:
    assert len(FIELDS) >= 40


@pytest.mark.parametrize(("message", "field"), FIELDS)
def test_the_check_and_the_schema_agree(message: Descriptor, field: FieldDescriptor) -> None:
    if field.cpp_type not in _JSON_TYPES or field.type == _T.TYPE_BYTES:
        pytest.skip("a message or bytes field: only `required`, compared below")
    for value in _candidates(field):
        if field.type == _T.TYPE_STRING and value == "" and not field.is_repeated:
            continue  # an empty string is "not set": compared below, as `required`
        assert _schema_accepts(field, value) == _check_accepts(message, field, value), value


@pytest.mark.parametrize(("message", "field"), FIELDS)
def test_required_means_the_same_to_both(message: Descriptor, field: FieldDescriptor) -> None:
    declared = rules.rules_of(field)
    assert declared is not None
    request: Message = GetMessageClass(message)()
    left_out = [v.field for v in rules.violations(request)]

    assert (field.name in left_out) == declared.required
    assert (field.name in rules.required_fields(message)) == declared.required


def test_violations_name_every_bad_field_with_its_path() -> None:
    request = pb.ScorePointsRequest(name="-", version="01", alias="ok")

    with pytest.raises(InvalidArgument) as raised:
        rules.check_request(request)

    assert [v.field for v in raised.value.violations] == ["name", "points", "version"]
    assert raised.value.message.startswith("name: must be 1-64 letters")


def test_nested_and_optional_fields() -> None:
    from nexus.api.llm.v1 import llm_service_pb2 as llm
    from nexus.api.models.v1 import model_registry_pb2 as reg

    upsert = llm.UpsertDocumentsRequest(
        collection="c", documents=[llm.Document(id="a", text="t"), llm.Document(id="", text="t")]
    )
    split = reg.SetTrafficSplitRequest(
        name="m", alias="a", splits=[reg.TrafficSplit(version="2"), reg.TrafficSplit(version="x")]
    )
    train = pb.TrainDetectorRequest(name="d")  # validation_fraction left out: not checked
    fraction = pb.TrainDetectorRequest(name="d", validation_fraction=float("nan"))

    assert [v.field for v in rules.violations(upsert)] == ["documents[1].id"]
    assert [v.field for v in rules.violations(split)] == ["splits[1].version"]
    assert rules.violations(train) == []
    assert [v.description for v in rules.violations(fraction)] == [
        "must be a finite number, got nan"
    ]
