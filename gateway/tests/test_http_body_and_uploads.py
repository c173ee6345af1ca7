"""google.api.HttpBody responses and multipart/form-data uploads (ADR 0030), through a real gateway
over HTTP to a real gRPC server on port 0.

The backend is a test-only service, nexus.media.v1.MediaService, made at run time (not in
nexus.api): pictures served as HttpBody (unary, as a `response_body` field, streamed) and an
upload request with a bytes field, its file metadata fields, a repeated bytes field, a nested
message, repeated text and a required field checked by the services' own rules interceptor.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2, http_pb2, httpbody_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from openapi_spec_validator import validate

from nexus.api.common.v1 import options_pb2
from nexus.common.errors.interceptor import ErrorInterceptor
from nexus.common.rules import RulesInterceptor
from nexus.gateway import GatewayServer, GatewaySettings, build_app, discover
from nexus.gateway.descriptors import service_bindings

assert httpbody_pb2  # imported so that the default pool knows google/api/httpbody.proto
_F = descriptor_pb2.FieldDescriptorProto
_PKG = ".nexus.media.v1"
BODY_LIMIT = 256 * 1024
PART_LIMIT = 200 * 1024
MAX_PARTS = 12


def _png() -> bytes:
    """A real 2x2 RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + bytes([255, 0, 0, 0, 255, 0]) for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4"/></svg>'
PICTURES = {"red": (_png(), "image/png"), "box": (SVG, "image/svg+xml")}


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    type_name: str = "",
    *,
    repeated: bool = False,
    required: bool = False,
) -> None:
    added = message.field.add(
        name=name,
        number=number,
        type=kind,
        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
        json_name=name,
    )
    if type_name:
        added.type_name = type_name
    if required:
        added.options.Extensions[options_pb2.rules].required = True


def _method(
    name: str, request: str, response: str, rule: http_pb2.HttpRule, *, stream: bool = False
) -> descriptor_pb2.MethodDescriptorProto:
    method = descriptor_pb2.MethodDescriptorProto(
        name=name, input_type=request, output_type=response, server_streaming=stream
    )
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    if not name.startswith("Upload"):  # the pictures' media types
        method.options.Extensions[options_pb2.response_media_types].extend(
            ["image/png", "image/svg+xml"]
        )
    return method


@functools.cache
def media_service() -> ServiceDescriptor:
    """nexus.media.v1.MediaService, added to the default pool once."""
    file = descriptor_pb2.FileDescriptorProto(
        name="nexus/media/v1/media_test.proto",
        package="nexus.media.v1",
        syntax="proto3",
        dependency=["google/api/annotations.proto", "google/api/httpbody.proto"],
    )
    file.dependency.append("nexus/common/v1/options.proto")
    render = file.message_type.add(name="RenderRequest")
    _field(render, "name", 1, _F.TYPE_STRING)
    _field(render, "chunks", 2, _F.TYPE_INT32)
    chart = file.message_type.add(name="ChartResponse")
    _field(chart, "title", 1, _F.TYPE_STRING)
    _field(chart, "chart", 2, _F.TYPE_MESSAGE, ".google.api.HttpBody")
    options = file.message_type.add(name="Options")
    _field(options, "grayscale", 1, _F.TYPE_BOOL)
    _field(options, "scale", 2, _F.TYPE_DOUBLE)
    upload = file.message_type.add(name="UploadRequest")
    _field(upload, "name", 1, _F.TYPE_STRING, required=True)
    _field(upload, "image", 2, _F.TYPE_BYTES)
    _field(upload, "image_filename", 3, _F.TYPE_STRING)
    _field(upload, "image_content_type", 4, _F.TYPE_STRING)
    _field(upload, "pages", 5, _F.TYPE_BYTES, repeated=True)
    _field(upload, "pages_filename", 6, _F.TYPE_STRING, repeated=True)
    _field(upload, "options", 7, _F.TYPE_MESSAGE, f"{_PKG}.Options")
    _field(upload, "tags", 8, _F.TYPE_STRING, repeated=True)
    _field(upload, "quality", 9, _F.TYPE_INT32)
    answer = file.message_type.add(name="UploadResponse")
    _field(answer, "request", 1, _F.TYPE_MESSAGE, f"{_PKG}.UploadRequest")
    _field(answer, "image_sha256", 2, _F.TYPE_STRING)
    _field(answer, "pages_sha256", 3, _F.TYPE_STRING, repeated=True)
    body = ".google.api.HttpBody"
    service = file.service.add(name="MediaService")
    service.method.extend(
        [
            _method(
                "Render", f"{_PKG}.RenderRequest", body, http_pb2.HttpRule(get="/v1/media/{name}")
            ),
            _method(
                "Chart",
                f"{_PKG}.RenderRequest",
                f"{_PKG}.ChartResponse",
                http_pb2.HttpRule(get="/v1/media/{name}:chart", response_body="chart"),
            ),
            _method(
                "RenderStream",
                f"{_PKG}.RenderRequest",
                body,
                http_pb2.HttpRule(get="/v1/media/{name}:stream"),
                stream=True,
            ),
            _method(
                "Upload",
                f"{_PKG}.UploadRequest",
                f"{_PKG}.UploadResponse",
                http_pb2.HttpRule(post="/v1/media/uploads", body="*"),
            ),
        ]
    )
    pool = descriptor_pool.Default()
    pool.AddSerializedFile(file.SerializeToString())
    return pool.FindServiceByName("nexus.media.v1.MediaService")


def _picture(name: str) -> tuple[bytes, str]:
    if name not in PICTURES:
        raise KeyError(name)
    return PICTURES[name]


class MediaServicer:
    """Answers from PICTURES; "missing" is NOT_FOUND; a stream of "broken" fails midway."""

    def __init__(self, service: ServiceDescriptor) -> None:
        self.upload_response = GetMessageClass(service.methods_by_name["Upload"].output_type)
        self.chart_response = GetMessageClass(service.methods_by_name["Chart"].output_type)

    async def Render(self, request: Any, context: Any) -> Any:
        data, media = await self._find(request.name, context)
        return httpbody_pb2.HttpBody(content_type=media, data=data)

    async def Chart(self, request: Any, context: Any) -> Any:
        data, media = await self._find(request.name, context)
        return self.chart_response(
            title=request.name, chart=httpbody_pb2.HttpBody(content_type=media, data=data)
        )

    async def RenderStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        if request.name == "broken":
            yield httpbody_pb2.HttpBody(content_type="image/png", data=b"first bytes")
            await context.abort(grpc.StatusCode.INTERNAL, "renderer died")
        data, media = await self._find(request.name, context)
        size = -(-len(data) // max(request.chunks, 1))
        for start in range(0, len(data), size):
            # Later messages' content types are ignored.
            yield httpbody_pb2.HttpBody(
                content_type=media if not start else "x/y", data=data[start : start + size]
            )

    async def Upload(self, request: Any, context: Any) -> Any:
        digests = [hashlib.sha256(page).hexdigest() for page in request.pages]
        answer = self.upload_response(
            request=request, image_sha256=hashlib.sha256(request.image).hexdigest()
        )
        answer.pages_sha256.extend(digests)
        answer.request.image = b""
        del answer.request.pages[:]
        return answer

    async def _find(self, name: str, context: Any) -> tuple[bytes, str]:
        if name not in PICTURES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no picture {name!r}")
        return PICTURES[name]


def _handlers(service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    servicer = MediaServicer(service)
    handlers = {}
    for method in service.methods:
        request = GetMessageClass(method.input_type)
        response = GetMessageClass(method.output_type)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


StartMedia = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def start_media() -> AsyncIterator[StartMedia]:
    """Starts the media backend (with the services' error and rules interceptors) and a gateway
    in front of it; keyword arguments override the gateway's settings."""
    service = media_service()
    server = grpc.aio.server(interceptors=[ErrorInterceptor(), RulesInterceptor()])
    server.add_generic_rpc_handlers((_handlers(service),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gateways: list[GatewayServer] = []
    clients: list[httpx.AsyncClient] = []

    async def start(**overrides: Any) -> httpx.AsyncClient:
        limits = {"max_body_bytes": BODY_LIMIT, "max_part_bytes": PART_LIMIT}
        settings = GatewaySettings(
            port=0,
            backends={"media": f"127.0.0.1:{port}"},
            rate_limit_per_minute=0,
            max_form_parts=MAX_PARTS,
            **(limits | overrides),
        )
        gateway = GatewayServer(
            build_app(settings, bindings=discover() + service_bindings(service)), settings
        )
        gateways.append(gateway)
        clients.append(httpx.AsyncClient(base_url=await gateway.start(), timeout=10.0))
        return clients[-1]

    yield start
    for client in clients:
        await client.aclose()
    for gateway in gateways:
        await gateway.stop()
    await server.stop(0)


@pytest.fixture
async def media(start_media: StartMedia) -> httpx.AsyncClient:
    return await start_media()


# HttpBody responses.


@pytest.mark.parametrize("name", ["red", "box"])
async def test_http_body_is_served_raw_with_its_content_type(
    media: httpx.AsyncClient, name: str
) -> None:
    data, media_type = PICTURES[name]

    reply = await media.get(f"/v1/media/{name}")
    field = await media.get(f"/v1/media/{name}:chart")

    assert reply.status_code == field.status_code == 200, reply.text
    assert reply.headers["content-type"] == field.headers["content-type"] == media_type
    assert reply.content == field.content == data


async def test_http_body_errors_are_the_json_error_body(media: httpx.AsyncClient) -> None:
    reply = await media.get("/v1/media/missing")
    streamed = await media.get("/v1/media/missing:stream")

    for answer in (reply, streamed):
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]["message"] == "no picture 'missing'"


async def test_streamed_http_body_is_one_chunked_body(media: httpx.AsyncClient) -> None:
    data, media_type = PICTURES["red"]

    async with media.stream("GET", "/v1/media/red:stream", params={"chunks": 4}) as reply:
        chunks = [chunk async for chunk in reply.aiter_raw()]

    assert reply.status_code == 200
    assert reply.headers["content-type"] == media_type  # the first message's
    assert reply.headers["transfer-encoding"] == "chunked"
    assert b"".join(chunks) == data


async def test_a_stream_that_breaks_after_it_started_ends_incomplete(
    media: httpx.AsyncClient,
) -> None:
    statuses: list[int] = []

    async def read() -> None:
        async with media.stream("GET", "/v1/media/broken:stream") as reply:
            statuses.append(reply.status_code)
            await reply.aread()

    with pytest.raises(httpx.RemoteProtocolError):
        await read()
    assert statuses == [200]


# multipart/form-data uploads.


async def test_upload_of_a_binary_file_with_text_parts(media: httpx.AsyncClient) -> None:
    image = os.urandom(5000)
    pages = [os.urandom(3000), b"", os.urandom(10)]
    files = [
        ("image", ("scan.bin", image, "application/x-test")),
        *[("pages", (f"p{i}.png", page, "image/png")) for i, page in enumerate(pages)],
    ]
    form = {"name": "doc", "options.scale": "0.5", "options.grayscale": "true", "quality": "90"}

    reply = await media.post("/v1/media/uploads", data=form | {"tags": ["a", "b"]}, files=files)

    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["image_sha256"] == hashlib.sha256(image).hexdigest()
    assert answer["pages_sha256"] == [hashlib.sha256(p).hexdigest() for p in pages]
    request = answer["request"]
    assert (request["image_filename"], request["image_content_type"]) == (
        "scan.bin",
        "application/x-test",
    )
    assert request["pages_filename"] == ["p0.png", "p1.png", "p2.png"]
    assert request["options"] == {"grayscale": True, "scale": 0.5}
    assert (request["tags"], request["quality"], request["name"]) == (["a", "b"], 90, "doc")


async def test_a_part_without_filename_into_bytes_is_its_raw_bytes(
    media: httpx.AsyncClient,
) -> None:
    reply = await media.post(
        "/v1/media/uploads", files={"name": (None, "doc"), "image": (None, b"\xff\x00")}
    )

    assert reply.status_code == 200, reply.text
    assert reply.json()["image_sha256"] == hashlib.sha256(b"\xff\x00").hexdigest()
    assert reply.json()["request"]["image_filename"] == ""


async def test_a_file_near_the_body_limit(media: httpx.AsyncClient) -> None:
    image = os.urandom(PART_LIMIT)

    reply = await media.post(
        "/v1/media/uploads", data={"name": "big"}, files={"image": ("b", image)}
    )

    assert reply.status_code == 200, reply.text
    assert reply.json()["image_sha256"] == hashlib.sha256(image).hexdigest()


async def test_limits_are_413(media: httpx.AsyncClient) -> None:
    too_big_part = await media.post(
        "/v1/media/uploads", data={"name": "x"}, files={"image": ("b", b"x" * (PART_LIMIT + 1))}
    )
    pages = [("pages", (f"p{i}", b"x" * (PART_LIMIT // 2))) for i in range(3)]
    too_big_body = await media.post("/v1/media/uploads", data={"name": "x"}, files=pages)
    many = [("tags", (None, "t")) for _ in range(MAX_PARTS + 1)]
    too_many_parts = await media.post("/v1/media/uploads", files=many)

    for reply, text in [
        (too_big_part, f"image: the part is larger than the limit of {PART_LIMIT} bytes"),
        (too_big_body, f"the request body is larger than the limit of {BODY_LIMIT} bytes"),
        (too_many_parts, f"the form has more than {MAX_PARTS} parts"),
    ]:
        assert reply.status_code == 413, reply.text
        assert reply.json()["error"]["reason"] == "REQUEST_TOO_LARGE"
        assert reply.json()["error"]["message"] == text


async def test_a_chunked_body_over_the_limit_is_413(media: httpx.AsyncClient) -> None:
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="f"\r\n\r\n'

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield head.encode()
        for _ in range(BODY_LIMIT // 1024 + 1):
            yield b"x" * 1024

    reply = await media.post(
        "/v1/media/uploads",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )

    assert reply.status_code == 413


@pytest.mark.parametrize(
    ("files", "field", "text"),
    [
        ({"nope": (None, "1")}, "nope", "has no field 'nope'"),
        ({"options.nope": (None, "1")}, "options.nope", "has no field 'options.nope'"),
        ({"image_filename": (None, "x")}, "image_filename", "filled from the file part 'image'"),
        ({"name": ("n.txt", b"doc")}, "name", "a file can only fill a bytes field"),
        ({"name": (None, "d"), "quality": (None, "high")}, "quality", "quality"),
        ({"name": (None, "d"), "options.grayscale": (None, "maybe")}, "options.grayscale", "true"),
        ({"name": (None, b"\xff")}, "name", "UTF-8"),
        ({"image": (None, b"1")}, "name", ""),  # required, checked by the service's rules
    ],
)
async def test_bad_parts_are_400_naming_the_field(
    media: httpx.AsyncClient, files: dict[str, Any], field: str, text: str
) -> None:
    reply = await media.post("/v1/media/uploads", files=files)

    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["field_violations"][0]["field"] == field
    assert text in error["message"]


async def test_one_file_into_a_singular_field(media: httpx.AsyncClient) -> None:
    files = [("image", ("a", b"1")), ("image", ("b", b"2"))]

    reply = await media.post("/v1/media/uploads", data={"name": "x"}, files=files)

    assert reply.status_code == 400
    assert reply.json()["error"]["field_violations"][0]["field"] == "image"


async def test_malformed_forms_are_400(media: httpx.AsyncClient) -> None:
    form = "multipart/form-data; boundary=xyz"
    truncated = b'--xyz\r\nContent-Disposition: form-data; name="name"\r\n\r\ndoc'
    no_name = b"--xyz\r\nContent-Disposition: form-data\r\n\r\ndoc\r\n--xyz--\r\n"

    replies = [
        await media.post("/v1/media/uploads", content=truncated, headers={"content-type": form}),
        await media.post("/v1/media/uploads", content=no_name, headers={"content-type": form}),
        await media.post(
            "/v1/media/uploads", content=b"", headers={"content-type": "multipart/form-data"}
        ),
    ]

    assert [r.status_code for r in replies] == [400, 400, 400]


async def test_forms_only_where_the_body_holds_bytes(media: httpx.AsyncClient) -> None:
    # ScorePoints' body has no bytes field: a form is 415 there, as any non-JSON body.
    form = await media.post("/v1/anomaly/detectors/d:score", files={"name": (None, "d")})
    text = await media.post(
        "/v1/media/uploads", content=b"name=x", headers={"content-type": "text/plain"}
    )

    assert form.status_code == text.status_code == 415
    assert "or multipart/form-data" in text.json()["error"]["message"]
    assert "or multipart/form-data" not in form.json()["error"]["message"]


async def test_base64_json_still_fills_bytes(media: httpx.AsyncClient) -> None:
    reply = await media.post("/v1/media/uploads", json={"name": "j", "image": "AAEC"})

    assert reply.status_code == 200, reply.text
    assert reply.json()["image_sha256"] == hashlib.sha256(b"\x00\x01\x02").hexdigest()


# The OpenAPI document.


async def test_openapi_declares_binary_responses_and_forms(media: httpx.AsyncClient) -> None:
    document = (await media.get("/openapi.json")).json()
    validate(document)
    paths = document["paths"]
    binary = {"schema": {"type": "string", "format": "binary"}}

    for path in ("/v1/media/{name}", "/v1/media/{name}:chart", "/v1/media/{name}:stream"):
        ok = paths[path]["get"]["responses"]["200"]["content"]
        assert ok == {"image/png": binary, "image/svg+xml": binary}
    upload = paths["/v1/media/uploads"]["post"]["requestBody"]["content"]
    form = upload["multipart/form-data"]["schema"]
    assert form["properties"]["image"] == binary["schema"]
    assert form["properties"]["pages"] == {"type": "array", "items": binary["schema"]}
    assert form["properties"]["options.scale"]["type"] == "number"
    assert "image_filename" not in form["properties"]
    assert form["required"] == ["name"]
    assert form["additionalProperties"] is False
    assert "application/json" in upload
    score = paths["/v1/anomaly/detectors/{name}:score"]["post"]["requestBody"]["content"]
    assert list(score) == ["application/json"]
