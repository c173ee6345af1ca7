"""HTTP request -> protobuf request, protobuf response -> JSON, per `google.api.http` rules.

- `body: "*"`: the JSON body is the whole request; path variables then fill (override) fields.
- `body: "field"`: the JSON body is that field; query parameters fill the others.
- no body: query parameters fill fields; repeated fields by repeating the key (`?tag=a&tag=b`),
  nested fields by dots (`?page.size=10`).

JSON goes through `google.protobuf.json_format`, so proto3 JSON rules hold: unknown fields are
errors, bytes are base64, 64-bit integers are strings on output. Responses keep the proto field
names (snake_case) and print fields that hold their zero value.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from nexus.gateway.descriptors import (
    CONTENT_TYPE_SUFFIX,
    FILENAME_SUFFIX,
    QUERY_WELL_KNOWN,
    HttpBinding,
    file_of,
    flat_fields,
)
from nexus.gateway.errors import GatewayError
from nexus.gateway.jsonload import IncrementalLoader
from nexus.gateway.multipart import Part
from nexus.gateway.plainjson import parse_plain

_TRUE, _FALSE = {"true", "1"}, {"false", "0"}
_AT_PATH = re.compile(r" at [A-Za-z_]\w*\.(?P<path>[\w.\[\]]+?)\.*$")
_NO_FIELD = re.compile(
    r'has no field named "(?P<name>[^"]+)"(?: at "[A-Za-z_]\w*\.?(?P<at>[^"]*)")?'
)
_FAILED_FIELD = re.compile(r"^Failed to parse (?P<path>\w+) field")
# Integers this long may be beyond a double's range (2**1024); shorter ones never are.
_HUGE_INT_BITS = 1024

PathValues = dict[tuple[str, ...], str]


def build_request(
    binding: HttpBinding,
    path: PathValues,
    query: Iterable[tuple[str, str]],
    body: bytes,
    *,
    yielding: bool = False,
) -> Message:
    """The request message of one HTTP request.

    Args:
        binding: The route.
        path: Values of the path variables, by field path.
        query: Query parameters, in order (a key may repeat).
        body: The raw request body.
        yielding: Parse the JSON so that other threads run meanwhile (`nexus.gateway.jsonload`:
            slower, for large bodies on a worker thread).

    Raises:
        GatewayError: INVALID_ARGUMENT, naming the bad field, for bad JSON or a bad value.
    """
    query = list(query)
    if binding.body == "*":
        _reject_query(query)
        tree = _load_json(body, object_required=True, yielding=yielding)
        request = _parse_body(binding.request_class, tree)
    else:
        request = binding.request_class()
        if binding.body:
            value = _load_json(body, object_required=False, yielding=yielding)
            _parse_into(request, {binding.body: value})
        elif body.strip():
            raise GatewayError.bad_field(
                "", f"{binding.http_method} {binding.template.template} takes no body"
            )
    if query:
        _parse_into(request, _query_tree(binding.method.input_type, query), query_names=True)
    _parse_into(request, _nest(path))
    return request


def build_form_request(
    binding: HttpBinding, path: PathValues, query: Iterable[tuple[str, str]], parts: list[Part]
) -> Message:
    """The request message of a multipart/form-data request (ADR 0030).

    Each part fills the field its name gives, dotted, relative to the body (as a JSON body
    would): a part into a bytes field gives its raw bytes (a repeated one takes several parts),
    and its filename and content type go to `<field>_filename` / `<field>_content_type` where
    the message has them; any other part is text, read as a query value would be.

    Raises:
        GatewayError: INVALID_ARGUMENT naming the part for an unknown name, a file into a
            field that is not bytes, a second file into a singular field, or a bad value.
    """
    query = list(query)
    if binding.body == "*":
        _reject_query(query)
    prefix = "" if binding.body == "*" else f"{binding.body}."
    request = binding.request_class()
    texts: list[tuple[str, str]] = []
    files: list[tuple[str, FieldDescriptor, Part]] = []
    for part in parts:
        field = binding.form_fields.get(part.name)
        if field is None:
            raise GatewayError.bad_field(part.name, _not_a_part(binding, part.name))
        if field.type == FieldDescriptor.TYPE_BYTES and field.message_type is None:
            files.append((prefix + part.name, field, part))
        elif part.is_file:
            raise GatewayError.bad_field(part.name, "a file can only fill a bytes field")
        else:
            texts.append((prefix + part.name, part.text()))
    if texts:
        _parse_into(request, _query_tree(binding.method.input_type, texts), query_names=True)
    filled: set[str] = set()
    for key, field, part in files:
        if not field.is_repeated and key in filled:
            raise GatewayError.bad_field(key, "takes one file (the field is not repeated)")
        filled.add(key)
        _put_file(request, key, field, part)
    if query:
        _parse_into(request, _query_tree(binding.method.input_type, query), query_names=True)
    _parse_into(request, _nest(path))
    return request


def _not_a_part(binding: HttpBinding, name: str) -> str:
    """Why a form part's name fills no field."""
    assert binding.body_message is not None  # a route that takes forms has a body message
    field = dict(flat_fields(binding.body_message)).get(name)
    if field is not None and (owner := file_of(field)) is not None:
        return f"filled from the file part {owner.name!r}, not sent as a part of its own"
    return f"{binding.body_message.full_name} has no field {name!r} that a form part can fill"


def _put_file(request: Message, key: str, field: FieldDescriptor, part: Part) -> None:
    """Puts a file part's bytes into its field, and its filename and content type into the
    sibling fields that the naming rule gives (when the message has them)."""
    holder: Any = request
    for name in key.split(".")[:-1]:
        holder = getattr(holder, name)
    _put(holder, field, part.data)
    metadata = ((FILENAME_SUFFIX, part.filename or ""), (CONTENT_TYPE_SUFFIX, part.content_type))
    for suffix, value in metadata:
        sibling = holder.DESCRIPTOR.fields_by_name.get(field.name + suffix)
        if sibling is not None and file_of(sibling) is field:
            _put(holder, sibling, value)


def _put(holder: Any, field: FieldDescriptor, value: Any) -> None:
    if field.is_repeated:
        getattr(holder, field.name).append(value)
    else:
        setattr(holder, field.name, value)


def field_value(message: Message, path: tuple[str, ...]) -> Any:
    """The value of a (possibly nested) field: `("model", "name")`."""
    value: Any = message
    for name in path:
        value = getattr(value, name)
    return value


def response_json(binding: HttpBinding, response: Message) -> Any:
    """The JSON-ready form of a response (or of its `response_body` field)."""
    rendered = message_dict(response)
    return rendered[binding.response_body] if binding.response_body else rendered


def message_dict(message: Message) -> dict[str, Any]:
    """Proto3 JSON of a message with snake_case names and zero values shown."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def dumps(value: Any) -> str:
    """Compact JSON on one line (as SSE `data:` needs)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


def _load_json(body: bytes, *, object_required: bool, yielding: bool) -> Any:
    if not body.strip():
        return {}
    try:
        loads = _YIELDING.loads if yielding else _LOADS
        value = loads(body)
    except (ValueError, RecursionError) as err:
        raise GatewayError.bad_field("", f"the body is not valid JSON: {err}") from err
    if object_required and not isinstance(value, dict):
        raise GatewayError.bad_field("", "the body must be a JSON object")
    return value


def _not_json(text: str) -> Any:
    """Python's json reads NaN and Infinity, which JSON does not have."""
    raise ValueError(f"{text} is not JSON (proto3 JSON writes it as the string {text!r})")


_YIELDING = IncrementalLoader(_not_json)
_LOADS = functools.partial(json.loads, parse_constant=_not_json)


def _parse_body(message_class: type[Message], tree: dict[str, Any]) -> Message:
    """The whole request from its JSON body: plain bodies directly, the rest by json_format."""
    request = parse_plain(message_class, tree)
    if request is None:
        request = message_class()
        _parse_into(request, tree)
    return request


def _reject_query(query: list[tuple[str, str]]) -> None:
    if query:
        names = ", ".join(sorted({k for k, _ in query}))
        raise GatewayError.bad_field(
            query[0][0], f"query parameters ({names}) are not accepted: the body is the request"
        )


def _parse_into(message: Message, tree: dict[str, Any], *, query_names: bool = False) -> None:
    """Merges a JSON tree into `message`, turning parse errors into 400s naming the field."""
    _check_numbers(tree, "")
    try:
        json_format.ParseDict(tree, message, ignore_unknown_fields=False)
    except json_format.ParseError as err:
        text = str(err).split("\n")[0]
        raise GatewayError.bad_field(_field_of(text), text) from err
    except (TypeError, ValueError, AttributeError, RecursionError, OverflowError) as err:
        # json_format lets a few of these through for values of the wrong shape.
        raise GatewayError.bad_field(_first_key(tree) if query_names else "", str(err)) from err


def _check_numbers(value: Any, path: str) -> None:
    """Refuses a number beyond a double's range: json.loads reads `1e999` as infinity and a
    310-digit integer exactly, which json_format would let into a Struct or fail on with an
    OverflowError. (The plain fast path refuses both itself.)"""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            _check_numbers(item, f"{path}.{key}" if path else str(key))
    elif kind is list:
        for index, item in enumerate(value):
            _check_numbers(item, f"{path}[{index}]")
    elif (kind is float and not math.isfinite(value)) or (
        kind is int and value.bit_length() >= _HUGE_INT_BITS and not _fits_double(value)
    ):
        raise GatewayError.bad_field(path, "the number is beyond the range of a double")


def _fits_double(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _field_of(text: str) -> str:
    """The field a json_format error message is about, as precisely as the text says."""
    if unknown := _NO_FIELD.search(text):
        return ".".join(p for p in (unknown["at"], unknown["name"]) if p)
    for pattern in (_AT_PATH, _FAILED_FIELD):
        found = pattern.search(text)
        if found and found["path"]:
            return found["path"].rstrip(".")
    return ""


def _first_key(tree: dict[str, Any]) -> str:
    return next(iter(tree), "")


def _nest(values: PathValues) -> dict[str, Any]:
    """{("a", "b"): v} -> {"a": {"b": v}}."""
    tree: dict[str, Any] = {}
    for path, value in values.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def _query_tree(message: Descriptor, query: list[tuple[str, str]]) -> dict[str, Any]:
    """Query parameters as a JSON tree over proto field names, values typed for json_format."""
    tree: dict[str, Any] = {}
    for key, raw in query:
        holders, field = _query_field(message, key)
        node = tree
        for name in holders:
            node = node.setdefault(name, {})
        value = _query_value(key, field, raw)
        if field.is_repeated:
            node.setdefault(field.name, []).append(value)
        else:
            node[field.name] = value  # the last of repeated keys wins
    return tree


def _query_field(message: Descriptor, key: str) -> tuple[list[str], FieldDescriptor]:
    """The field a query key names (proto or JSON names, dotted), and the names leading to it."""
    holders: list[str] = []
    descriptor = message
    parts = key.split(".")
    for index, part in enumerate(parts):
        field = descriptor.fields_by_name.get(part) or _by_json_name(descriptor, part)
        if field is None:
            raise GatewayError.bad_field(key, f"{descriptor.full_name} has no field {part!r}")
        if index == len(parts) - 1:
            return holders, field
        if field.message_type is None or field.is_repeated:
            raise GatewayError.bad_field(key, f"{part!r} is not a singular message field")
        holders.append(field.name)
        descriptor = field.message_type
    raise GatewayError.bad_field(key, "empty query parameter name")


def _by_json_name(message: Descriptor, name: str) -> FieldDescriptor | None:
    return next((f for f in message.fields if f.json_name == name), None)


def _query_value(key: str, field: FieldDescriptor, raw: str) -> Any:
    """A query string value in the form json_format wants for the field's type."""
    if field.message_type is not None:
        if (
            field.message_type.GetOptions().map_entry
            or field.message_type.full_name not in QUERY_WELL_KNOWN
        ):
            raise GatewayError.bad_field(key, "this field cannot be set from the query string")
        if field.message_type.full_name == "google.protobuf.BoolValue":
            return _bool(key, raw)
        return raw
    if field.type == FieldDescriptor.TYPE_BOOL:
        return _bool(key, raw)
    return raw


def _bool(key: str, raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise GatewayError.bad_field(key, f"expected true or false, got {raw!r}")
