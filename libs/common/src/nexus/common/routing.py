"""Which deployable serves an RPC, for whoever calls services by method name (the gateway, the
orchestrator): the area of the method's package (`nexus.anomaly.v1` -> `anomaly`), or, for the
services every deployable mounts (the model registry, operations), the value of the request
field that their `nexus.common.v1.route_by_field` option names: a service's name ("anomaly"),
or a resource name that starts with it ("anomaly/operations/<id>").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor


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


def route_field(service: ServiceDescriptor) -> str:
    """The request field (dotted path) whose value names the backend; "" when the package does."""
    from nexus.api.common.v1 import options_pb2

    return str(service.GetOptions().Extensions[options_pb2.route_by_field])


def backend_of_request(service: ServiceDescriptor, request: Mapping[str, Any]) -> str:
    """The backend of a call of one of `service`'s methods with `request` (as JSON)."""
    field = route_field(service)
    if not field:
        return backend_of_package(service.file.package)
    value: Any = request
    for part in field.split("."):
        value = value.get(part, "") if isinstance(value, Mapping) else ""
    return backend_named(str(value))
