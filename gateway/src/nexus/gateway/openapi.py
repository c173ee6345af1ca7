"""The OpenAPI 3.1 document, generated from the same bindings that route requests.

Messages become `components/schemas` (recursively, by full proto name), following proto3 JSON:
64-bit integers are strings, bytes are base64 strings, enums are string enums, Timestamps are
date-time strings, maps are objects with `additionalProperties`. Property names are the proto
names, as responses use them (requests accept the lowerCamel JSON names too).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from nexus.api.common.v1 import common_pb2
from nexus.common import rules
from nexus.common.idempotency import KEY_FIELD, MAX_KEY_LENGTH, takes_idempotency_key
from nexus.gateway.descriptors import HttpBinding, flat_fields, resolve_field
from nexus.gateway.multipart import FORM_DATA
from nexus.gateway.paths import openapi_parameter

Schema = dict[str, Any]

_ERROR_TEXT = {
    "400": (
        "Invalid request: bad JSON, a bad field (see field_violations), a failed precondition, "
        "a malformed Idempotency-Key or one sent before with another request."
    ),
    "401": "Missing or invalid API key.",
    "403": "The API key lacks the scope this operation needs.",
    "404": "No such route, resource or service.",
    "409": "Conflict: the resource exists already, or a concurrent change won (retry).",
    "413": (
        "Request body (or a batch in it, or a part of a form) too large, or a form with too "
        "many parts."
    ),
    "414": "The URL is longer than the gateway accepts.",
    "415": (
        "The body is declared as something other than JSON (or multipart/form-data, where the "
        "operation takes it)."
    ),
    "429": "Rate limit exceeded; see the Retry-After header.",
    "431": "The request headers are larger than the gateway accepts.",
    "500": "Internal error.",
    "501": "The backend does not implement this operation.",
    "503": "Backend unavailable or not ready.",
    "504": "The backend did not answer within the deadline.",
}
IDEMPOTENCY_KEY_REF = {"$ref": "#/components/parameters/IdempotencyKey"}
_VISIBLE, _PRINTABLE, _NOT_QUOTE = "[!-~]", "[ -~]", "[!#-~]"
_KEY_FORMS = (
    _VISIBLE,  # one character
    f'{_NOT_QUOTE}{_VISIBLE}|"{_NOT_QUOTE}',  # two, but not ""
    f"{_VISIBLE}{_PRINTABLE}{{1,{MAX_KEY_LENGTH - 2}}}{_VISIBLE}",  # three to 255
)
IDEMPOTENCY_KEY_PATTERN = f"^({'|'.join(_KEY_FORMS)})$"
"""What `check_idempotency_key` accepts: 1 to 255 printable ASCII characters (HTTP trims the
spaces around a header value); `""` is the empty structured-field string, so no key."""
_BODY_ONLY = {"415"}  # only an operation that takes a body can get these

_T = FieldDescriptor
_BINARY: Schema = {"type": "string", "format": "binary"}
_SCALARS: dict[int, Schema] = {
    _T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _T.TYPE_FLOAT: {"type": "number", "format": "float"},
    _T.TYPE_INT64: {"type": "string", "format": "int64"},
    _T.TYPE_SINT64: {"type": "string", "format": "int64"},
    _T.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    _T.TYPE_UINT64: {"type": "string", "format": "uint64"},
    _T.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    _T.TYPE_INT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _T.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _T.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    _T.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}

_WRAPPERS = {
    "google.protobuf.DoubleValue": _T.TYPE_DOUBLE,
    "google.protobuf.FloatValue": _T.TYPE_FLOAT,
    "google.protobuf.Int64Value": _T.TYPE_INT64,
    "google.protobuf.UInt64Value": _T.TYPE_UINT64,
    "google.protobuf.Int32Value": _T.TYPE_INT32,
    "google.protobuf.UInt32Value": _T.TYPE_UINT32,
    "google.protobuf.BoolValue": _T.TYPE_BOOL,
    "google.protobuf.StringValue": _T.TYPE_STRING,
    "google.protobuf.BytesValue": _T.TYPE_BYTES,
}
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated paths."},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}


class Schemas:
    """Builds `components/schemas`: a named schema per message and enum reached."""

    def __init__(self, path_bound: dict[str, set[str]] | None = None) -> None:
        self.components: dict[str, Schema] = {}
        self._path_bound = path_bound or {}

    def message(self, message: Descriptor) -> Schema:
        """The schema of a message: inline for well-known types, else a `$ref`."""
        if inline := _well_known(message):
            return inline
        name = message.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder first: messages may be recursive
            self.components[name] = self._object(message)
        return {"$ref": f"#/components/schemas/{name}"}

    def _object(self, message: Descriptor) -> Schema:
        properties = {f.name: self.field(f) for f in message.fields}
        # Unknown fields are refused (the lowerCamel JSON names are accepted too).
        schema = {
            "type": "object",
            "title": message.name,
            "properties": properties,
            "additionalProperties": False,
        }
        # A field a path variable fills is not required in the body.
        bound = self._path_bound.get(message.full_name, set())
        if required := [name for name in rules.required_fields(message) if name not in bound]:
            schema["required"] = required
        return schema

    def field(self, field: FieldDescriptor) -> Schema:
        """The schema of a field: repeated fields are arrays, maps are objects; with the field's
        declared rules (`nexus.common.rules`)."""
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        each, whole = rules.keywords(field)
        if field.is_repeated:
            return {"type": "array", "items": self.single(field) | each, **whole}
        return self.single(field) | each

    def single(self, field: FieldDescriptor) -> Schema:
        """The schema of one value of a field."""
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def enum(self, enum: EnumDescriptor) -> Schema:
        """A string enum of the value names (as responses print them)."""
        name = enum.full_name
        if name not in self.components:
            values = [v.name for v in enum.values]
            self.components[name] = {"type": "string", "title": enum.name, "enum": values}
        return {"$ref": f"#/components/schemas/{name}"}


def _well_known(message: Descriptor) -> Schema | None:
    if message.full_name in _WRAPPERS:
        scalar = dict(_SCALARS[_WRAPPERS[message.full_name]])
        scalar["type"] = [scalar["type"], "null"]
        return scalar
    schema = _WELL_KNOWN.get(message.full_name)
    return dict(schema) if schema is not None else None


def build_openapi(
    bindings: Iterable[HttpBinding],
    *,
    secured: bool = True,
    title: str = "Nexus API",
    version: str = "1.0.0",
    backends: Collection[str] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the bindings (plus the gateway's own health endpoints).

    Args:
        bindings: The routes.
        secured: Whether operations need an API key (auth on).
        title: The document's title.
        version: The API's version.
        backends: The backends this gateway routes to: the values a `route_by_field` path
            variable may take (any name when empty).
    """
    bindings = list(bindings)
    schemas = Schemas(_path_bound(bindings))
    error_ref = schemas.message(common_pb2.ErrorResponse.DESCRIPTOR)
    paths: dict[str, dict[str, Any]] = _health_paths()
    for binding in bindings:
        item = paths.setdefault(binding.template.openapi_path(), {})
        operation = item[binding.http_method.lower()] = _operation(binding, schemas)
        if binding.route_field and backends:
            _route_choices(operation, binding, sorted(backends))
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": _DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "responses": {
                _error_name(code): _error_response(error_ref, text)
                for code, text in _ERROR_TEXT.items()
            },
            "parameters": {"IdempotencyKey": _idempotency_parameter()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Nexus API key."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}] if secured else [],
    }


_DESCRIPTION = (
    "Generated from the protos' google.api.http annotations. Errors share one body "
    "(ErrorResponse). Send `X-Nexus-Timeout: <seconds>` to shorten a call's deadline."
)


def _route_choices(operation: dict[str, Any], binding: HttpBinding, backends: list[str]) -> None:
    """The backend-naming path variable takes the configured backends only (others are 404):
    the backend itself, or a resource name that starts with it."""
    multi = {v.name for v in binding.template.variables if v.multi_segment}
    name = openapi_parameter(binding.route_field)
    for parameter in operation["parameters"]:
        if parameter.get("in") == "path" and parameter["name"] == name:
            if binding.route_field in multi:
                choices = "|".join(re.escape(b) for b in backends)
                parameter["schema"] = {"type": "string", "pattern": f"^({choices})/.+$"}
            else:
                parameter["schema"] = {"type": "string", "enum": backends}


def _path_bound(bindings: Iterable[HttpBinding]) -> dict[str, set[str]]:
    """Per request message: the fields that a path variable of some route fills."""
    bound: dict[str, set[str]] = {}
    for binding in bindings:
        names = {v.field_path[0] for v in binding.template.variables}
        bound.setdefault(binding.method.input_type.full_name, set()).update(names)
    return bound


def _error_name(code: str) -> str:
    return f"Error{code}"


def _error_response(error_ref: Schema, text: str) -> Schema:
    return {
        "description": f"{text} The one error body.",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying (429, sometimes 503).",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
        "content": {"application/json": {"schema": error_ref}},
    }


def _idempotency_parameter() -> dict[str, Any]:
    return {
        "name": KEY_FIELD,
        "in": "header",
        "required": False,
        "description": (
            "Makes the call idempotent (ADR 0019): a retry with the same key and request gets "
            "the first call's outcome without running it again; the same key with another "
            "request is 400. A new UUID per call is best. Scoped to the API key."
        ),
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_KEY_LENGTH,
            "pattern": IDEMPOTENCY_KEY_PATTERN,
        },
    }


def _operation(binding: HttpBinding, schemas: Schemas) -> dict[str, Any]:
    service = binding.method.containing_service
    parameters = _path_parameters(binding, schemas) + _query_parameters(binding, schemas)
    # The services make every unary call that is not a read idempotent with the key.
    if not binding.server_streaming and takes_idempotency_key(binding.full_method):
        parameters.append(IDEMPOTENCY_KEY_REF)
    operation: dict[str, Any] = {
        "operationId": binding.operation_id,
        "summary": f"{service.name}.{binding.method.name}",
        "tags": [service.full_name],
        "parameters": parameters,
        "responses": _responses(binding, schemas),
    }
    if binding.scope:
        operation["description"] = f"Needs an API key with the scope `{binding.scope}`."
        operation["x-nexus-scope"] = binding.scope
    if binding.body:
        operation["requestBody"] = _request_body(binding, schemas)
    return operation


def _request_body(binding: HttpBinding, schemas: Schemas) -> dict[str, Any]:
    request = binding.method.input_type
    if binding.body == "*":
        schema = schemas.message(request)
        note = "The request; path parameters override the fields of the same name."
    else:
        schema = schemas.field(request.fields_by_name[binding.body])
        note = f"The request's `{binding.body}` field."
    content = {"application/json": {"schema": schema}}
    if binding.form_fields:
        content[FORM_DATA] = {"schema": _form_schema(binding, schemas)}
        note += (
            " Or a multipart/form-data form: a part per field, by dotted name; files into the "
            "bytes fields."
        )
    return {"required": True, "description": note, "content": content}


def _form_schema(binding: HttpBinding, schemas: Schemas) -> Schema:
    """The multipart/form-data form of a body: a property per field a part can fill, binary for
    the bytes fields (an array of them for a repeated one)."""
    properties: dict[str, Schema] = {}
    for name, field in binding.form_fields.items():
        if field.type == FieldDescriptor.TYPE_BYTES:
            properties[name] = (
                _BINARY if not field.is_repeated else {"type": "array", "items": _BINARY}
            )
        else:
            properties[name] = schemas.field(field)
    prefix = "" if binding.body == "*" else f"{binding.body}."
    bound = {v.name.removeprefix(prefix) for v in binding.template.variables}
    assert binding.body_message is not None  # a route that takes forms has one
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required := [
        n for n in rules.required_fields(binding.body_message) if n in properties and n not in bound
    ]:
        schema["required"] = required
    return schema


def _responses(binding: HttpBinding, schemas: Schemas) -> dict[str, Any]:
    codes = [c for c in _ERROR_TEXT if binding.body or c not in _BODY_ONLY]
    errors = {c: {"$ref": f"#/components/responses/{_error_name(c)}"} for c in codes}
    if binding.http_body:
        return {"200": _http_body(binding), **errors}
    output = binding.method.output_type
    if binding.response_body:
        schema = schemas.field(output.fields_by_name[binding.response_body])
    else:
        schema = schemas.message(output)
    ok: dict[str, Any] = {
        "description": "Success.",
        "content": {"application/json": {"schema": schema}},
    }
    if binding.server_streaming:
        ok = _event_stream(schema, schemas.message(common_pb2.ErrorResponse.DESCRIPTOR))
    return {"200": ok, **errors}


def _http_body(binding: HttpBinding) -> dict[str, Any]:
    """A `google.api.HttpBody` answer: raw bytes of the media types the RPC declares
    (`response_media_types`), or of any ("*/*")."""
    described = "The raw body, with its media type as the Content-Type (not JSON)."
    if binding.server_streaming:
        described += (
            " Streamed in chunks; an error after the first chunk cuts the body short (no final "
            "chunk), so the transfer reads as incomplete."
        )
    return {
        "description": described,
        "content": {media: {"schema": dict(_BINARY)} for media in binding.media_types},
    }


def _event_stream(message: Schema, error: Schema) -> dict[str, Any]:
    """Server-Sent Events. Before Open API 3.2 (`itemSchema`), the `schema` of an event stream
    describes one event: `{event, data}`, with `data` JSON text of the message or, for the
    `error` event that ends a stream, of an ErrorResponse."""
    return {
        "description": (
            "Server-Sent Events: each message is `data: <JSON of the message>`; an error after the "
            "first event ends the stream with `event: error` and `data: <ErrorResponse JSON>` (an "
            "error before it is answered with its own HTTP status)."
        ),
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "event": {"type": "string", "enum": ["message", "error"]},
                        "data": {"type": "string"},
                    },
                    "oneOf": [_event("message", message), _event("error", error)],
                }
            }
        },
    }


def _event(name: str, payload: Schema) -> Schema:
    """One kind of event: its name and the schema of the JSON in its `data`."""
    data = {"type": "string", "contentMediaType": "application/json", "contentSchema": payload}
    return {"properties": {"event": {"const": name}, "data": data}}


def _path_parameters(binding: HttpBinding, schemas: Schemas) -> list[dict[str, Any]]:
    request = binding.method.input_type
    parameters = []
    for variable in binding.template.variables:
        holders = resolve_field(request, variable.field_path)
        field = holders[-1].fields_by_name[variable.field_path[-1]]
        parameters.append(
            {
                "name": variable.openapi_name,
                "in": "path",
                "required": True,
                "schema": schemas.field(field),
            }
        )
    return parameters


def _query_parameters(binding: HttpBinding, schemas: Schemas) -> list[dict[str, Any]]:
    """Fields bound neither by the path nor by the body, flattened with dotted names."""
    if binding.body == "*":
        return []
    bound = {v.name for v in binding.template.variables} | {binding.body}
    fields = flat_fields(binding.method.input_type)
    return [
        {
            "name": name,
            "in": "query",
            "required": "." not in name
            and name in rules.required_fields(binding.method.input_type),
            "schema": schemas.field(field),
        }
        for name, field in fields
        if name not in bound and name.split(".")[0] not in bound
    ]


def _health_paths() -> dict[str, dict[str, Any]]:
    def probe(summary: str, ok: str) -> dict[str, Any]:
        return {
            "get": {
                "operationId": summary.replace(" ", "_"),
                "summary": summary,
                "tags": ["gateway"],
                "security": [],
                "responses": {
                    "200": {"description": ok},
                    "503": {"$ref": f"#/components/responses/{_error_name('503')}"},
                },
            }
        }

    return {
        "/healthz": probe("Gateway liveness", "The gateway process is alive."),
        "/readyz": probe(
            "Gateway readiness",
            "Every backend answers its health check SERVING and (auth on) NATS is connected.",
        ),
    }
