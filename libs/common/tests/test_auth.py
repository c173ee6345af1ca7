"""API keys: scopes, the KV-backed key store, and the auth interceptor over a real gRPC server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nats.aio.client import Client

from nexus.api.anomaly.v1 import anomaly_service_pb2 as anomaly_pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as anomaly_grpc
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.common.auth import (
    ApiKey,
    AuthInterceptor,
    KeyStore,
    credentials_from_metadata,
    current_api_key,
    required_scope,
    scope_allows,
    validate_scopes,
)
from nexus.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

integration = pytest.mark.integration


# --- scopes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "required", "allowed"),
    [
        (["*"], "anomaly:invoke", True),
        (["*"], "models:admin", True),
        (["anomaly:*"], "anomaly:train", True),
        (["anomaly:*"], "models:read", False),
        (["anomaly:invoke"], "anomaly:invoke", True),
        (["anomaly:invoke"], "anomaly:train", False),
        (["models:admin"], "models:read", True),
        (["models:admin"], "models:admin", True),
        (["models:read"], "models:admin", False),
        (["models:admin"], "anomaly:read", False),
        (["anomaly:admin"], "anomaly:invoke", False),
        ([], "models:read", False),
        ([], "", True),
        (["models:read"], "", True),
    ],
)
def test_scope_allows(granted: list[str], required: str, allowed: bool) -> None:
    assert scope_allows(granted, required) is allowed


@pytest.mark.parametrize(
    "scopes", [["*"], ["anomaly:*"], ["models:read", "llm:invoke"], ["a-b:c_d"]]
)
def test_valid_scopes(scopes: list[str]) -> None:
    validate_scopes(scopes)


@pytest.mark.parametrize(
    "scopes",
    [[], ["models"], ["Models:read"], ["models:"], [":read"], ["*:read"], ["a:b:c"], [" *"]],
)
def test_invalid_scopes(scopes: list[str]) -> None:
    with pytest.raises(InvalidArgument):
        validate_scopes(scopes)


def test_invalid_scopes_name_each_bad_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_scopes(["models:read", "bad", "x"])
    assert [v.field for v in caught.value.violations] == ["scopes[1]", "scopes[2]"]


@pytest.mark.parametrize(
    ("method", "scope"),
    [
        ("/nexus.models.v1.ModelRegistryService/ListModels", "models:read"),
        ("/nexus.models.v1.ModelRegistryService/UploadModel", "models:admin"),
        ("nexus.anomaly.v1.AnomalyService.ScorePoints", "anomaly:invoke"),
        ("/nexus.anomaly.v1.AnomalyService/TrainDetector", "anomaly:train"),
        ("/grpc.health.v1.Health/Check", ""),
        ("/no.such.Service/Method", ""),
    ],
)
def test_required_scope_comes_from_the_descriptor(method: str, scope: str) -> None:
    assert required_scope(method) == scope


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ([("authorization", "Bearer nxk_abc")], "nxk_abc"),
        ([("authorization", "bearer  nxk_abc ")], "nxk_abc"),
        ([("x-api-key", "nxk_def")], "nxk_def"),
        ([("x-api-key", b"nxk_bytes")], "nxk_bytes"),
        ([("Authorization", "Basic dXNlcg=="), ("x-api-key", "nxk_def")], "nxk_def"),
        ([("authorization", "Bearer "), ("user-agent", "x")], None),
        ([], None),
    ],
)
def test_credentials_from_metadata(metadata: list[tuple[str, Any]], expected: str | None) -> None:
    assert credentials_from_metadata(metadata) == expected


# --- the key store --------------------------------------------------------------------------


@pytest.fixture
def bucket() -> str:
    return f"test_keys_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def keys(nats_client: Client, bucket: str) -> AsyncIterator[KeyStore]:
    store = KeyStore(nats_client, bucket=bucket)
    await store.start()
    yield store
    await store.stop()
    await nats_client.jetstream().delete_key_value(bucket)


@integration
async def test_create_then_verify(keys: KeyStore) -> None:
    key, raw = await keys.create("ci", ["anomaly:invoke"], rate_limit_per_minute=60)
    assert raw.startswith(f"nxk_{key.id}_")
    assert len(key.id) == 12
    verified = await keys.verify(raw)
    assert verified == key
    assert verified.scopes == {"anomaly:invoke"}
    assert verified.rate_limit_per_minute == 60
    assert await keys.get(key.id) == key
    assert [k.id for k in await keys.list()] == [key.id]


@integration
async def test_verify_refuses_bad_keys(keys: KeyStore) -> None:
    _, raw = await keys.create("ci", ["*"])
    with pytest.raises(Unauthenticated, match="missing API key"):
        await keys.verify(None)
    with pytest.raises(Unauthenticated, match="missing API key"):
        await keys.verify("")
    for bad in ["garbage", raw[:-1] + ("A" if raw[-1] != "A" else "B"), "nxk_AAAAAAAAAAAA_secret"]:
        with pytest.raises(Unauthenticated, match="invalid API key"):
            await keys.verify(bad)


@integration
async def test_authorize_checks_the_scope(keys: KeyStore) -> None:
    _, raw = await keys.create("reader", ["models:read"])
    assert (await keys.authorize(raw, "models:read")).name == "reader"
    assert (await keys.authorize(raw, "")).name == "reader"
    with pytest.raises(PermissionDenied, match="API key lacks scope models:admin"):
        await keys.authorize(raw, "models:admin")


@integration
async def test_create_rejects_bad_input(keys: KeyStore) -> None:
    with pytest.raises(InvalidArgument):
        await keys.create("x", ["not a scope"])
    with pytest.raises(InvalidArgument):
        await keys.create(" ", ["*"])
    with pytest.raises(InvalidArgument):
        await keys.create("x", ["*"], rate_limit_per_minute=-1)


@integration
async def test_only_the_hash_is_stored(keys: KeyStore, nats_client: Client, bucket: str) -> None:
    key, raw = await keys.create("ci", ["models:read"])
    kv = await nats_client.jetstream().key_value(bucket)
    value = (await kv.get(key.id)).value
    assert value is not None
    secret = raw.split("_", 2)[2]
    assert raw.encode() not in value
    assert secret.encode() not in value
    record = json.loads(value)
    assert record["key_hash"] == hashlib.sha256(raw.encode()).hexdigest()
    assert set(record) == {
        "id",
        "name",
        "key_hash",
        "scopes",
        "created",
        "revoked",
        "rate_limit_per_minute",
    }


@integration
async def test_revocation_reaches_another_process_at_once(
    keys: KeyStore, nats_client: Client, bucket: str
) -> None:
    key, raw = await keys.create("ci", ["*"])
    # A long cache TTL: only the watch can make the other store notice in time.
    other = KeyStore(nats_client, bucket=bucket, cache_ttl_s=600)
    await other.start()
    try:
        await other.verify(raw)  # now cached there
        revoked = await keys.revoke(key.id)
        assert revoked.revoked
        await _until_refused(other, raw)
        with pytest.raises(Unauthenticated, match="revoked"):
            await keys.verify(raw)
        assert (await keys.revoke(key.id)).revoked  # twice is harmless
        assert (await keys.list())[0].revoked
    finally:
        await other.stop()


async def _until_refused(store: KeyStore, raw: str) -> None:
    for _ in range(200):
        try:
            await store.verify(raw)
        except Unauthenticated as err:
            if "revoked" in str(err):
                return
            raise
        await asyncio.sleep(0.01)
    pytest.fail("revocation not seen within 2 s")


@integration
async def test_unknown_ids_are_not_found(keys: KeyStore) -> None:
    for key_id in ["AAAAAAAAAAAA", "bad id", "_bootstrap"]:
        with pytest.raises(NotFound):
            await keys.get(key_id)
        with pytest.raises(NotFound):
            await keys.revoke(key_id)


@integration
async def test_ensure_admin_creates_one_admin_once(keys: KeyStore) -> None:
    raw = await keys.ensure_admin()
    assert raw is not None
    admin = await keys.verify(raw)
    assert (admin.name, admin.scopes) == ("admin", frozenset({"*"}))
    assert await keys.ensure_admin() is None
    assert [k.name for k in await keys.list()] == ["admin"]


@integration
async def test_ensure_admin_under_concurrent_starts(nats_client: Client, bucket: str) -> None:
    stores = [KeyStore(nats_client, bucket=bucket) for _ in range(5)]
    for store in stores:
        await store.start()
    try:
        results = await asyncio.gather(*(s.ensure_admin() for s in stores))
        assert sum(r is not None for r in results) == 1
        assert len(await stores[0].list()) == 1
    finally:
        for store in stores:
            await store.stop()
        await nats_client.jetstream().delete_key_value(bucket)


@integration
async def test_ensure_admin_does_nothing_when_keys_exist(keys: KeyStore) -> None:
    await keys.create("ci", ["models:read"])
    assert await keys.ensure_admin() is None


BOOTSTRAP_KEY = "nxk_Boot5trapKey_" + "s" * 43


@integration
async def test_ensure_key_stores_a_key_made_elsewhere_once(keys: KeyStore) -> None:
    assert await keys.ensure_key(BOOTSTRAP_KEY, "admin", ["*"]) is True
    admin = await keys.verify(BOOTSTRAP_KEY)
    assert (admin.id, admin.name, admin.scopes) == ("Boot5trapKey", "admin", frozenset({"*"}))
    assert await keys.ensure_key(BOOTSTRAP_KEY, "admin", ["*"]) is False
    assert [k.id for k in await keys.list()] == ["Boot5trapKey"]


@integration
async def test_ensure_key_keeps_a_revoked_key_revoked(keys: KeyStore) -> None:
    await keys.ensure_key(BOOTSTRAP_KEY, "admin", ["*"])
    await keys.revoke("Boot5trapKey")
    assert await keys.ensure_key(BOOTSTRAP_KEY, "admin", ["*"]) is False
    with pytest.raises(Unauthenticated, match="revoked"):
        await keys.verify(BOOTSTRAP_KEY)


@integration
async def test_ensure_key_under_concurrent_starts(nats_client: Client, bucket: str) -> None:
    stores = [KeyStore(nats_client, bucket=bucket) for _ in range(5)]
    for store in stores:
        await store.start()
    try:
        results = await asyncio.gather(
            *(s.ensure_key(BOOTSTRAP_KEY, "admin", ["*"]) for s in stores)
        )
        assert sorted(results) == [False, False, False, False, True]
        assert (await stores[0].verify(BOOTSTRAP_KEY)).name == "admin"
    finally:
        for store in stores:
            await store.stop()
        await nats_client.jetstream().delete_key_value(bucket)


@integration
async def test_ensure_key_refuses_bad_keys_and_a_different_key_with_its_id(
    keys: KeyStore,
) -> None:
    for bad in ("", "admin", "nxk_short_x", "nxk_Boot5trapKey_"):
        with pytest.raises(InvalidArgument):
            await keys.ensure_key(bad, "admin", ["*"])
    with pytest.raises(InvalidArgument):
        await keys.ensure_key(BOOTSTRAP_KEY, "admin", ["not a scope"])
    await keys.ensure_key(BOOTSTRAP_KEY, "admin", ["*"])
    with pytest.raises(AlreadyExists):
        await keys.ensure_key("nxk_Boot5trapKey_other", "admin", ["*"])


# --- the interceptor ------------------------------------------------------------------------


class Registry(models_grpc.ModelRegistryServiceServicer):
    def __init__(self) -> None:
        self.seen: list[ApiKey | None] = []

    async def ListModels(self, request: Any, context: Any) -> models_pb.ListModelsResponse:
        self.seen.append(current_api_key.get())
        return models_pb.ListModelsResponse()


class Anomaly(anomaly_grpc.AnomalyServiceServicer):
    async def WatchAnomalies(
        self, request: Any, context: Any
    ) -> AsyncIterator[anomaly_pb.WatchAnomaliesResponse]:
        for _ in range(2):
            assert current_api_key.get() is not None
            yield anomaly_pb.WatchAnomaliesResponse()


async def _echo(request: bytes, context: Any) -> bytes:
    assert current_api_key.get() is not None
    return request


async def _echo_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        assert current_api_key.get() is not None
        yield request


async def _join(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return b"".join([r async for r in requests])


async def _repeat(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield request


# A service unknown to nexus.api, with every call kind: it needs a valid key and no scope.
ECHO = grpc.method_handlers_generic_handler(
    "test.Echo",
    {
        "Unary": grpc.unary_unary_rpc_method_handler(_echo),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(_repeat),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(_join),
        "StreamStream": grpc.stream_stream_rpc_method_handler(_echo_stream),
    },
)


@pytest.fixture
async def channel(keys: KeyStore) -> AsyncIterator[tuple[grpc.aio.Channel, Registry]]:
    server = grpc.aio.server(interceptors=[AuthInterceptor(keys)])
    registry = Registry()  # type: ignore[abstract]  # the other RPCs stay unimplemented
    models_grpc.add_ModelRegistryServiceServicer_to_server(registry, server)
    anomaly_grpc.add_AnomalyServiceServicer_to_server(Anomaly(), server)  # type: ignore[abstract]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_generic_rpc_handlers((ECHO,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch, registry
    await server.stop(None)


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@integration
async def test_interceptor_refuses_missing_and_invalid_keys(channel: Any) -> None:
    ch, registry = channel
    stub = models_grpc.ModelRegistryServiceStub(ch)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListModels(models_pb.ListModelsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == "missing API key"
    bad = [("authorization", "Bearer nxk_AAAAAAAAAAAA_nope")]
    call = stub.ListModels(models_pb.ListModelsRequest(), metadata=bad)
    assert await _code(call) == grpc.StatusCode.UNAUTHENTICATED
    assert registry.seen == []


@integration
async def test_interceptor_checks_the_methods_scope(channel: Any, keys: KeyStore) -> None:
    ch, registry = channel
    stub = models_grpc.ModelRegistryServiceStub(ch)
    _, invoker = await keys.create("invoker", ["anomaly:invoke"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListModels(models_pb.ListModelsRequest(), metadata=[("x-api-key", invoker)])
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "API key lacks scope models:read"

    reader, raw = await keys.create("reader", ["models:read"])
    await stub.ListModels(
        models_pb.ListModelsRequest(), metadata=[("authorization", f"Bearer {raw}")]
    )
    assert registry.seen == [reader]


@integration
async def test_interceptor_guards_streaming_methods(channel: Any, keys: KeyStore) -> None:
    ch, _ = channel
    stub = anomaly_grpc.AnomalyServiceStub(ch)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.WatchAnomalies(anomaly_pb.WatchAnomaliesRequest()):
            pass
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _, raw = await keys.create("watcher", ["anomaly:*"])
    call = stub.WatchAnomalies(anomaly_pb.WatchAnomaliesRequest(), metadata=[("x-api-key", raw)])
    assert len([m async for m in call]) == 2


@integration
async def test_health_needs_no_key(channel: Any) -> None:
    ch, _ = channel
    response = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def _echo_all(ch: grpc.aio.Channel, metadata: list[tuple[str, str]]) -> list[grpc.StatusCode]:
    async def two() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async def drain(call: Any) -> None:
        async for _ in call:
            pass

    calls = [
        ch.unary_unary("/test.Echo/Unary")(b"x", metadata=metadata),
        drain(ch.unary_stream("/test.Echo/UnaryStream")(b"x", metadata=metadata)),
        ch.stream_unary("/test.Echo/StreamUnary")(two(), metadata=metadata),
        drain(ch.stream_stream("/test.Echo/StreamStream")(two(), metadata=metadata)),
    ]
    return [await _code(call) for call in calls]


@integration
async def test_interceptor_guards_every_call_kind(channel: Any, keys: KeyStore) -> None:
    ch, _ = channel
    assert await _echo_all(ch, []) == [grpc.StatusCode.UNAUTHENTICATED] * 4
    _, raw = await keys.create("narrow", ["llm:invoke"])  # any valid key: no scope is required
    assert await _echo_all(ch, [("x-api-key", raw)]) == [grpc.StatusCode.OK] * 4
