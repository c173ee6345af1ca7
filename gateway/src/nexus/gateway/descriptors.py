"""Discovery: the HTTP bindings of every annotated RPC in the generated `nexus.api` package.

Importing a generated module registers its descriptors in the default pool; this module walks
`nexus.api`, reads each method's `google.api.http` rule and the `nexus.common.v1` options, and
returns one `HttpBinding` per route. Nothing here is specific to an endpoint: adding an annotated
RPC to a proto exposes it.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType

# googleapis-common-protos ships no py.typed (until google.api.* joins the mypy overrides).
from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from nexus.api.common.v1 import options_pb2
from nexus.common import routing
from nexus.gateway.paths import PathTemplate

log = logging.getLogger(__name__)

_VERBS = ("get", "put", "post", "delete", "patch")
HTTP_BODY = "google.api.HttpBody"
"""A response of this type is sent as its raw `data` with its `content_type` (ADR 0030)."""
# Well-known types whose JSON form is a string or a scalar, so a query parameter can carry them.
QUERY_WELL_KNOWN = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.BoolValue",
}
FILENAME_SUFFIX, CONTENT_TYPE_SUFFIX = "_filename", "_content_type"
"""A string field `<f>_filename` / `<f>_content_type` beside a bytes field `<f>` (repeated when
`<f>` is) receives the filename / media type of the file uploaded into `<f>` (ADR 0030)."""
_MAX_FLAT_DEPTH = 3


@dataclass(frozen=True)
class HttpBinding:
    """One HTTP route of one RPC.

    Attributes:
        method: The RPC.
        http_method: "GET", "POST", ...
        template: The compiled path template.
        body: "" (no body), "*" (the whole request) or the name of the request field it fills.
        response_body: "" (the whole response) or the response field sent as the body.
        backend: The backend serving the RPC, "" when `route_field` names it per request.
        route_field: The request field whose value names the backend (`route_by_field`: the
            backend, or a resource name whose first segment it is), or "".
        scope: The API-key scope a caller needs (`required_scope`), "" when the RPC has none.
    """

    method: MethodDescriptor
    http_method: str
    template: PathTemplate
    body: str
    response_body: str
    backend: str
    route_field: str
    scope: str

    @property
    def full_method(self) -> str:
        """The gRPC path: "/nexus.anomaly.v1.AnomalyService/ScorePoints"."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def operation_id(self) -> str:
        """OpenAPI operation id: "AnomalyService_ScorePoints"."""
        return f"{self.method.containing_service.name}_{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        """Whether the RPC streams responses (served as Server-Sent Events)."""
        return bool(self.method.server_streaming)

    @cached_property
    def http_body(self) -> bool:
        """Whether the response (or its `response_body` field) is a `google.api.HttpBody`,
        served as raw bytes with its own content type."""
        output: Descriptor | None = self.method.output_type
        if self.response_body:
            output = self.method.output_type.fields_by_name[self.response_body].message_type
        return output is not None and output.full_name == HTTP_BODY

    @property
    def media_types(self) -> tuple[str, ...]:
        """The media types an HttpBody response declares (`response_media_types`), else
        ("*/*",)."""
        declared = self.method.GetOptions().Extensions[options_pb2.response_media_types]
        return tuple(declared) or ("*/*",)

    @cached_property
    def form_fields(self) -> dict[str, FieldDescriptor]:
        """The fields a multipart/form-data part may fill, by dotted name relative to the body
        (the request, or the message field `body` names); empty when the route takes no form:
        its body holds no bytes field. File metadata fields (`<f>_filename`,
        `<f>_content_type`) are left out: the file part fills them."""
        target = self.body_message
        if target is None:
            return {}
        fields = dict(flat_fields(target))
        if not any(f.type == FieldDescriptor.TYPE_BYTES for f in fields.values()):
            return {}
        return {name: f for name, f in fields.items() if file_of(f) is None}

    @property
    def body_message(self) -> Descriptor | None:
        """The message the body fills: the request (`*`), the named field's message, or None
        (no body, or a body field that is not a message)."""
        if self.body == "*":
            return self.method.input_type
        if self.body:
            return self.method.input_type.fields_by_name[self.body].message_type
        return None

    @cached_property
    def request_class(self) -> type[Message]:
        """The request message class."""
        return GetMessageClass(self.method.input_type)

    @cached_property
    def response_class(self) -> type[Message]:
        """The response message class."""
        return GetMessageClass(self.method.output_type)


def import_all(package: str = "nexus.api") -> list[ModuleType]:
    """Imports every module under `package`, which registers their descriptors.

    Raises:
        ImportError: When a module cannot be imported (a broken generated file must not be
            served silently as a smaller API).
    """
    root = importlib.import_module(package)
    modules = [root]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        modules.append(importlib.import_module(info.name))
    return modules


def discover(package: str = "nexus.api") -> list[HttpBinding]:
    """Every HTTP binding of the services under `package`."""
    return [b for s in _services(import_all(package)) for b in service_bindings(s)]


def _services(modules: Iterable[ModuleType]) -> Iterator[ServiceDescriptor]:
    seen: set[str] = set()
    for module in modules:
        file = getattr(module, "DESCRIPTOR", None)
        if not isinstance(file, FileDescriptor) or file.name in seen:
            continue
        seen.add(file.name)
        yield from file.services_by_name.values()


def service_bindings(service: ServiceDescriptor) -> list[HttpBinding]:
    """The bindings of one service's annotated RPCs (client-streaming RPCs are skipped)."""
    route_field = routing.route_field(service)
    backend = "" if route_field else routing.backend_of_package(service.file.package)
    bindings: list[HttpBinding] = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        if method.client_streaming:
            log.warning("%s is client-streaming: not exposed over HTTP", method.full_name)
            continue
        rule = options.Extensions[annotations_pb2.http]
        scope = options.Extensions[options_pb2.required_scope]
        for one in (rule, *rule.additional_bindings):
            bindings.append(_binding(method, one, backend, route_field, scope))
    return bindings


def _binding(
    method: MethodDescriptor, rule: http_pb2.HttpRule, backend: str, route_field: str, scope: str
) -> HttpBinding:
    http_method, path = _verb_and_path(rule)
    binding = HttpBinding(
        method=method,
        http_method=http_method,
        template=PathTemplate.parse(path),
        body=rule.body,
        response_body=rule.response_body,
        backend=backend,
        route_field=route_field,
        scope=scope,
    )
    _check_fields(binding)
    return binding


def _verb_and_path(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind in _VERBS:
        return kind.upper(), str(getattr(rule, kind))
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    raise ValueError(f"http rule without a pattern: {rule}")


def _check_fields(binding: HttpBinding) -> None:
    """Fails at start-up, not per request, when a rule names a field the messages lack."""
    request = binding.method.input_type
    paths = [v.field_path for v in binding.template.variables]
    if binding.body not in ("", "*"):
        paths.append((binding.body,))
    if binding.route_field:
        paths.append(tuple(binding.route_field.split(".")))
    for path in paths:
        resolve_field(request, path)
    if binding.response_body:
        resolve_field(binding.method.output_type, (binding.response_body,))


def resolve_field(message: Descriptor, path: tuple[str, ...]) -> list[Descriptor]:
    """The message types along a dotted field path, checking that every field exists.

    Returns:
        The descriptor of each message holding the next field: `[message, ...]`.

    Raises:
        ValueError: When a field does not exist, or a non-message field is not the last.
    """
    holders = [message]
    for index, name in enumerate(path):
        field = holders[-1].fields_by_name.get(name)
        if field is None:
            raise ValueError(f"{holders[-1].full_name} has no field {name!r}")
        if index < len(path) - 1:
            if field.message_type is None:
                raise ValueError(f"{'.'.join(path)}: {name!r} is not a message field")
            holders.append(field.message_type)
    return holders


def flat_fields(
    message: Descriptor, prefix: str = "", depth: int = 0
) -> list[tuple[str, FieldDescriptor]]:
    """The fields that a flat name (a query parameter, a form part) can fill: scalars, enums,
    repeated scalars and the well-known types written as strings, with dotted names through
    singular message fields (at most three deep). Maps and repeated messages are JSON-only."""
    found: list[tuple[str, FieldDescriptor]] = []
    for field in message.fields:
        name = f"{prefix}{field.name}"
        nested = field.message_type
        if nested is None or nested.full_name in QUERY_WELL_KNOWN:
            found.append((name, field))
        elif (
            not nested.GetOptions().map_entry and not field.is_repeated and depth < _MAX_FLAT_DEPTH
        ):
            found += flat_fields(nested, f"{name}.", depth + 1)
    return found


def file_of(field: FieldDescriptor) -> FieldDescriptor | None:
    """The bytes field whose uploaded file's metadata `field` receives (`image_filename` and
    `image_content_type` for `image`), or None."""
    holders = field.containing_type
    if field.type != FieldDescriptor.TYPE_STRING or holders is None:
        return None
    for suffix in (FILENAME_SUFFIX, CONTENT_TYPE_SUFFIX):
        if field.name.endswith(suffix):
            holder = holders.fields_by_name.get(field.name.removesuffix(suffix))
            if (
                holder is not None
                and holder.type == FieldDescriptor.TYPE_BYTES
                and holder.is_repeated == field.is_repeated
            ):
                return holder
    return None
