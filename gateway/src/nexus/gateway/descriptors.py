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
    FileDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from nexus.api.common.v1 import options_pb2
from nexus.gateway.paths import PathTemplate

log = logging.getLogger(__name__)

_VERBS = ("get", "put", "post", "delete", "patch")


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
    route_field = service.GetOptions().Extensions[options_pb2.route_by_field]
    backend = "" if route_field else backend_of_package(service.file.package)
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


def backend_of_package(package: str) -> str:
    """The backend of a proto package: "nexus.anomaly.v1" -> "anomaly"."""
    parts = package.split(".")
    if len(parts) != 3 or parts[0] != "nexus":
        raise ValueError(f"package {package!r} is not nexus.<area>.<version>")
    return parts[1]


def backend_named(value: str) -> str:
    """The backend a `route_by_field` value names: the value ("anomaly"), or the first segment
    of a resource name that starts with it ("anomaly/operations/<id>")."""
    return value.split("/", 1)[0]


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
