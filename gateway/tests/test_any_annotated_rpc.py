"""Any annotated RPC is exposed, with no code of its own: a service made at run time (not in
nexus.api) exercises what the real protos do not use yet: nested and multi-segment path
variables, repeated and nested query parameters, `body: "field"`, `response_body`, custom verbs
and additional bindings."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from nexus.gateway import GatewayServer, GatewaySettings, build_app, discover
from nexus.gateway.descriptors import service_bindings

assert timestamp_pb2  # imported so that the default pool knows google/protobuf/timestamp.proto
_F = descriptor_pb2.FieldDescriptorProto


def _message(name: str, *fields: tuple[str, int, int, str, bool]) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=name)
    for field_name, number, kind, type_name, repeated in fields:
        added = message.field.add(
            name=field_name,
            number=number,
            type=kind,
            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            json_name=field_name,
        )
        if type_name:
            added.type_name = type_name
    return message


def _method(name: str, rule: http_pb2.HttpRule) -> descriptor_pb2.MethodDescriptorProto:
    method = descriptor_pb2.MethodDescriptorProto(
        name=name,
        input_type=".nexus.echo.v1.EchoRequest",
        output_type=".nexus.echo.v1.EchoResponse",
    )
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    return method


@functools.cache
def echo_service() -> ServiceDescriptor:
    """nexus.echo.v1.EchoService, added to the default pool once."""
    file = descriptor_pb2.FileDescriptorProto(
        name="nexus/echo/v1/echo.proto",
        package="nexus.echo.v1",
        syntax="proto3",
        dependency=["google/api/annotations.proto", "google/protobuf/timestamp.proto"],
    )
    file.message_type.extend(
        [
            _message("Page", ("size", 1, _F.TYPE_INT32, "", False)),
            _message(
                "Thing",
                ("name", 1, _F.TYPE_STRING, "", False),
                ("tags", 2, _F.TYPE_STRING, "", True),
            ),
            _message(
                "EchoRequest",
                ("thing", 1, _F.TYPE_MESSAGE, ".nexus.echo.v1.Thing", False),
                ("tags", 2, _F.TYPE_STRING, "", True),
                ("page", 3, _F.TYPE_MESSAGE, ".nexus.echo.v1.Page", False),
                ("verbose", 4, _F.TYPE_BOOL, "", False),
                ("big", 5, _F.TYPE_INT64, "", False),
                ("nums", 6, _F.TYPE_INT32, "", True),
                ("since", 7, _F.TYPE_MESSAGE, ".google.protobuf.Timestamp", False),
            ),
            _message(
                "EchoResponse",
                ("echo", 1, _F.TYPE_MESSAGE, ".nexus.echo.v1.EchoRequest", False),
                ("method", 2, _F.TYPE_STRING, "", False),
            ),
        ]
    )
    report = http_pb2.HttpRule(
        custom=http_pb2.CustomHttpPattern(kind="REPORT", path="/v1/echo/report"), body="*"
    )
    report.additional_bindings.add(post="/v1/echo/report", body="*")
    service = file.service.add(name="EchoService")
    service.method.extend(
        [
            _method("Get", http_pb2.HttpRule(get="/v1/echo/{thing.name=shelves/*/books/*}")),
            _method(
                "Tag",
                http_pb2.HttpRule(
                    put="/v1/echo/{thing.name=shelves/*/books/*}:tag",
                    body="thing",
                    response_body="echo",
                ),
            ),
            _method("Report", report),
        ]
    )
    pool = descriptor_pool.Default()
    pool.AddSerializedFile(file.SerializeToString())
    return pool.FindServiceByName("nexus.echo.v1.EchoService")


def _echo_handlers(service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    request_class = GetMessageClass(service.methods_by_name["Get"].input_type)
    response_class = GetMessageClass(service.methods_by_name["Get"].output_type)

    def answer(method: str) -> grpc.RpcMethodHandler:
        async def handle(request: Any, context: Any) -> Any:
            return response_class(echo=request, method=method)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )

    handlers = {m.name: answer(m.name) for m in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


@pytest.fixture
async def echo() -> AsyncIterator[httpx.AsyncClient]:
    """A gateway serving the nexus.api bindings plus EchoService, and an echo backend."""
    service = echo_service()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_echo_handlers(service),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = GatewaySettings(
        port=0, backends={"echo": f"127.0.0.1:{port}"}, rate_limit_per_minute=0
    )
    gateway = GatewayServer(
        build_app(settings, bindings=discover() + service_bindings(service)), settings
    )
    async with httpx.AsyncClient(base_url=await gateway.start()) as client:
        yield client
    await gateway.stop()
    await server.stop(0)


async def test_nested_pattern_variable_and_query(echo: httpx.AsyncClient) -> None:
    query = [
        ("tags", "a"),
        ("tags", "b"),
        ("page.size", "5"),
        ("verbose", "true"),
        ("big", "9007199254740993"),
        ("nums", "1"),
        ("nums", "2"),
        ("since", "2024-01-02T03:04:05Z"),
    ]
    reply = await echo.get("/v1/echo/shelves/1/books/2", params=query)

    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "echo": {
            "thing": {"name": "shelves/1/books/2", "tags": []},
            "tags": ["a", "b"],
            "page": {"size": 5},
            "verbose": True,
            "big": "9007199254740993",
            "nums": [1, 2],
            "since": "2024-01-02T03:04:05Z",
        },
        "method": "Get",
    }


async def test_pattern_must_match(echo: httpx.AsyncClient) -> None:
    reply = await echo.get("/v1/echo/shelves/1/books")

    assert reply.status_code == 404


async def test_bad_query_values_name_the_parameter(echo: httpx.AsyncClient) -> None:
    bad_bool = await echo.get("/v1/echo/shelves/1/books/2", params={"verbose": "maybe"})
    not_scalar = await echo.get("/v1/echo/shelves/1/books/2", params={"page": "1"})
    bad_time = await echo.get("/v1/echo/shelves/1/books/2", params={"since": "yesterday"})

    assert bad_bool.status_code == not_scalar.status_code == bad_time.status_code == 400
    assert bad_bool.json()["error"]["field_violations"][0]["field"] == "verbose"
    assert not_scalar.json()["error"]["field_violations"][0]["field"] == "page"
    assert bad_time.json()["error"]["field_violations"][0]["field"] == "since"


async def test_body_field_and_response_body(echo: httpx.AsyncClient) -> None:
    reply = await echo.put("/v1/echo/shelves/1/books/2:tag?page.size=3", json={"tags": ["x"]})

    assert reply.status_code == 200, reply.text
    echoed = reply.json()  # response_body: only the `echo` field
    assert echoed["thing"] == {"name": "shelves/1/books/2", "tags": ["x"]}
    assert echoed["page"] == {"size": 3}


async def test_custom_verb_and_additional_binding(echo: httpx.AsyncClient) -> None:
    custom = await echo.request("REPORT", "/v1/echo/report", json={"verbose": True})
    extra = await echo.post("/v1/echo/report", json={"nums": [7]})
    query_with_whole_body = await echo.post("/v1/echo/report?verbose=true", json={})

    assert (custom.json()["method"], custom.json()["echo"]["verbose"]) == ("Report", True)
    assert extra.json()["echo"]["nums"] == [7]
    assert query_with_whole_body.status_code == 400
