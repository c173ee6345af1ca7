"""ModelRegistry on a real JetStream: versions, artifacts, signed pickles, aliases, replicas."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client

from nexus.api.models.v1 import events_pb2
from nexus.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from nexus.common.events import Event, EventBus
from nexus.common.idempotency import IdempotencyStore, Outcome
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.registry import (
    ARTIFACTS,
    DEFAULT_ALIAS,
    MAGIC,
    ModelChange,
    ModelRegistry,
    PreparedUpload,
    Resolved,
)
from nexus.common.settings import NexusSettings

pytestmark = pytest.mark.integration

KEY = b"test-signing-key"
SIDE_EFFECTS: list[str] = []


def _record(text: str) -> str:
    SIDE_EFFECTS.append(text)
    return text


class Booby:
    """Unpickling this runs `_record`: proof of whether a pickle was ever loaded."""

    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return _record, ("unpickled!",)


@pytest.fixture
def service() -> str:
    """A service name no other test uses: each test has its own corner of the shared bucket."""
    return f"t{uuid.uuid4().hex[:16]}"


async def started(nc: Client, service: str, **kwargs: object) -> ModelRegistry:
    options: dict[str, object] = {"signing_key": KEY, "upload_frameworks": ("onnx", "sklearn")}
    registry = ModelRegistry(EventBus(nc, f"nexus/{service}"), service, **{**options, **kwargs})  # type: ignore[arg-type]
    await registry.start()
    return registry


@pytest.fixture
async def registry(nats_client: Client, service: str) -> AsyncIterator[ModelRegistry]:
    registry = await started(nats_client, service)
    yield registry
    await registry.stop()


async def eventually(check: Callable[[], bool], timeout_s: float = 1.0) -> None:
    """Waits until `check()` holds, at most `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_register_records_an_immutable_version(registry: ModelRegistry) -> None:
    artifact = b"onnx bytes"
    first = await registry.register(
        "fraud", artifact, framework="onnx", metrics={"auc": 0.91}, parameters={"depth": "6"}
    )
    second = await registry.register("fraud", b"v2", framework="onnx", description="retrained")
    assert (first.version, second.version) == ("1", "2")
    assert first.sha256 == hashlib.sha256(artifact).hexdigest()
    assert (first.size_bytes, first.metrics, first.parameters) == (
        10,
        {"auc": 0.91},
        {"depth": "6"},
    )
    model = await registry.get_model("fraud")
    assert [v.version for v in model.versions] == ["1", "2"]
    assert model.versions[0] == first
    assert model.latest_version == "2"
    assert await registry.load_artifact("fraud", "1") == artifact


async def test_an_idempotent_call_run_again_gets_the_version_it_registered(
    registry: ModelRegistry, nats_client: Client
) -> None:
    """A call that registered and then failed with "not now" (NATS lost its answer) is run
    again by its retry; that run gets the same version instead of registering a second."""
    store = IdempotencyStore(nats_client, ttl_s=60.0, lease_s=30.0)
    await store.start()
    key = uuid.uuid4().hex

    async def register(answer_lost: bool) -> tuple[str, Outcome]:
        info = await registry.register("m", b"artifact", framework="onnx")
        if answer_lost:
            raise Unavailable("the answer was lost on the way")
        return info.version, Outcome(0, info.version.encode())

    with pytest.raises(Unavailable):
        await store.run(key, "fingerprint", lambda: register(answer_lost=True))
    again = await store.run(key, "fingerprint", lambda: register(answer_lost=False))
    other = await registry.register("m", b"artifact", framework="onnx")  # another call
    assert (again, other.version) == ("1", "2")
    assert [v.version for v in (await registry.get_model("m")).versions] == ["1", "2"]


async def test_concurrent_registrations_get_distinct_versions(registry: ModelRegistry) -> None:
    infos = await asyncio.gather(
        *(registry.register("m", f"{i}".encode(), framework="onnx") for i in range(10))
    )
    assert sorted(int(i.version) for i in infos) == list(range(1, 11))
    for info in infos:  # each number holds its own artifact
        assert (
            hashlib.sha256(await registry.load_artifact("m", info.version)).hexdigest()
            == info.sha256
        )


async def test_corrupt_artifact_is_refused(registry: ModelRegistry, nats_client: Client) -> None:
    await registry.register("m", b"good bytes", framework="onnx")
    store = await nats_client.jetstream().object_store(ARTIFACTS)
    await store.put(f"{registry.service}/m/1", b"evil bytes")
    with pytest.raises(FailedPrecondition, match="does not match its sha256"):
        await registry.load_artifact("m", "1")


async def test_signed_pickle_round_trip(registry: ModelRegistry) -> None:
    model = {"weights": [0.5, 1.5], "threshold": 0.7}
    info = await registry.register_object("iforest", model, framework="sklearn")
    assert await registry.load_object("iforest", info.version) == model
    assert (await registry.load_artifact("iforest", info.version)).startswith(MAGIC)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda p: MAGIC + bytes(32) + p, id="made-up signature"),
        pytest.param(lambda p: p, id="unsigned"),
        pytest.param(lambda p: _signed(b"another key", p), id="signed with another key"),
        pytest.param(lambda p: _signed(KEY, b"x" * len(p))[:36] + p, id="signature of other bytes"),
    ],
)
async def test_tampered_pickle_is_never_unpickled(
    registry: ModelRegistry, forge: Callable[[bytes], bytes]
) -> None:
    SIDE_EFFECTS.clear()
    artifact = forge(pickle.dumps(Booby()))
    await registry.register("evil", artifact, framework="pickle")  # trusted path stores anything
    with pytest.raises(FailedPrecondition):
        await registry.load_object("evil", "1")
    assert SIDE_EFFECTS == []


def _signed(key: bytes, payload: bytes) -> bytes:
    import hmac

    return MAGIC + hmac.new(key, payload, hashlib.sha256).digest() + payload


async def test_pickles_need_a_signing_key(nats_client: Client, service: str) -> None:
    registry = await started(nats_client, service, signing_key=b"")
    await registry.register("m", _signed(KEY, pickle.dumps(1)), framework="pickle")
    with pytest.raises(FailedPrecondition, match="registry_signing_key is not set"):
        await registry.register_object("m", {"a": 1}, framework="pickle")
    with pytest.raises(FailedPrecondition, match="registry_signing_key is not set"):
        await registry.load_object("m", "1")
    await registry.stop()


async def test_upload_accepts_only_allowed_and_verified_artifacts(registry: ModelRegistry) -> None:
    assert (await registry.upload("m", b"onnx", framework="onnx")).version == "1"
    with pytest.raises(InvalidArgument, match="not accepted here"):
        await registry.upload("m", b"x", framework="pytorch")
    with pytest.raises(FailedPrecondition, match="not signed"):
        await registry.upload("m", pickle.dumps(Booby()), framework="sklearn")
    with pytest.raises(FailedPrecondition, match="does not verify"):
        await registry.upload("m", _signed(b"wrong", b"payload"), framework="onnx")
    signed = _signed(KEY, pickle.dumps({"ok": True}))
    assert (await registry.upload("m", signed, framework="sklearn")).version == "2"
    assert await registry.load_object("m", "2") == {"ok": True}


async def test_an_upload_hook_checks_and_converts_what_it_accepts(
    nats_client: Client, service: str
) -> None:
    async def to_text(artifact: bytes) -> PreparedUpload:
        if not artifact.startswith(b"ckpt:"):
            raise InvalidArgument.for_field("artifact", "is not a checkpoint")
        return PreparedUpload(artifact[5:].upper(), "text", {"converted": "yes"})

    registry = await started(
        nats_client, service, upload_hooks={"ckpt": to_text}, max_artifact_bytes=16
    )

    info = await registry.upload("m", b"ckpt:hello", framework="ckpt", parameters={"a": "b"})
    assert (info.framework, dict(info.parameters)) == ("text", {"converted": "yes", "a": "b"})
    assert await registry.load_artifact("m", info.version) == b"HELLO"
    with pytest.raises(InvalidArgument, match="not a checkpoint"):
        await registry.upload("m", b"junk", framework="ckpt")
    with pytest.raises(ResourceExhausted):  # bounded before the hook runs
        await registry.upload("m", b"ckpt:" + b"x" * 20, framework="ckpt")
    await registry.stop()


async def test_limits_and_names_are_checked(nats_client: Client, service: str) -> None:
    registry = await started(nats_client, service, max_artifact_bytes=8)
    with pytest.raises(ResourceExhausted):
        await registry.register("m", b"123456789", framework="onnx")
    with pytest.raises(InvalidArgument, match="name"):
        await registry.register("bad.name", b"1", framework="onnx")
    with pytest.raises(InvalidArgument, match="metrics"):
        await registry.register("m", b"1", framework="onnx", metrics={"auc": float("nan")})
    with pytest.raises(InvalidArgument, match="artifact"):
        await registry.register("m", b"", framework="onnx")
    await registry.stop()


async def test_promote_then_resolve(registry: ModelRegistry) -> None:
    await registry.register("m", b"1", framework="onnx")
    await registry.register("m", b"2", framework="onnx")
    with pytest.raises(NotFound, match=r"no alias 'production'.*promote"):
        registry.resolve("m")
    alias = await registry.promote("m", "1")
    assert (alias.alias, alias.splits) == (DEFAULT_ALIAS, (("1", 100),))
    await registry.promote("m", "2", "staging")
    assert registry.resolve("m") == Resolved("m", "1", "production")
    assert registry.resolve("m", alias="staging", routing_key="u1") == Resolved("m", "2", "staging")
    assert registry.resolve("m", version="2") == Resolved("m", "2", "")
    assert (await registry.get_model("m")).aliases_of("1") == ("production",)
    with pytest.raises(NotFound, match="no version 7"):
        registry.resolve("m", version="7")
    with pytest.raises(NotFound, match="not registered"):
        registry.resolve("nope")
    with pytest.raises(NotFound):
        await registry.promote("m", "9")


async def test_traffic_split_is_sticky_and_weighted(registry: ModelRegistry) -> None:
    for i in range(2):
        await registry.register("m", f"{i}".encode(), framework="onnx")
    alias = await registry.set_traffic_split("m", "production", {"2": 50, "1": 50})
    assert alias.splits == (("1", 50), ("2", 50))
    first = {key: registry.resolve("m", routing_key=key).version for key in ("a", "b", "c")}
    for _ in range(20):
        assert {k: registry.resolve("m", routing_key=k).version for k in first} == first
    shares = Counter(registry.resolve("m", routing_key=f"user-{i}").version for i in range(2000))
    assert abs(shares["1"] - 1000) < 100  # within 5 %, about 4.5 standard deviations
    random_shares = Counter(registry.resolve("m").version for _ in range(2000))
    assert abs(random_shares["1"] - 1000) < 100


async def test_traffic_split_is_validated(registry: ModelRegistry) -> None:
    await registry.register("m", b"1", framework="onnx")
    with pytest.raises(NotFound, match="no version 3"):
        await registry.set_traffic_split("m", "production", {"1": 1, "3": 1})
    with pytest.raises(InvalidArgument, match="negative"):
        await registry.set_traffic_split("m", "production", {"1": -1})
    with pytest.raises(InvalidArgument, match="zero"):
        await registry.set_traffic_split("m", "production", {"1": 0})
    with pytest.raises(InvalidArgument):
        await registry.set_traffic_split("m", "bad alias", {"1": 1})


async def test_another_replica_follows_within_a_second(
    registry: ModelRegistry, nexus_settings: NexusSettings, service: str
) -> None:
    other_nc = await connect(nexus_settings, "replica-2")
    replica = await started(other_nc, service)
    changes: list[ModelChange] = []

    async def remember(change: ModelChange) -> None:
        changes.append(change)

    replica.on_change(remember)
    await registry.register("m", b"1", framework="onnx")
    await registry.promote("m", "1")
    await eventually(lambda: ModelChange("promoted", "m", "1", "production") in changes)
    assert replica.resolve("m") == Resolved("m", "1", "production")
    assert changes[0] == ModelChange("registered", "m", "1", "")
    await replica.stop()
    await other_nc.close()


async def test_replicas_agree_again_right_after_a_server_restart(nats_server: NatsServer) -> None:
    settings = NexusSettings(nats_url=nats_server.url)
    first_nc, second_nc = await connect(settings, "a"), await connect(settings, "b")
    first, second = await started(first_nc, "svc"), await started(second_nc, "svc")
    for i in range(2):
        await first.register("m", f"{i}".encode(), framework="onnx")
    await first.promote("m", "1")
    await asyncio.to_thread(nats_server.restart)
    await first.promote("m", "2")
    await eventually(lambda: second.resolve("m").version == "2", timeout_s=5)
    for registry in (first, second):
        await registry.stop()
    await first_nc.close()
    await second_nc.close()


async def test_delete_version_is_refused_while_aliased(registry: ModelRegistry) -> None:
    for i in range(2):
        await registry.register("m", f"{i}".encode(), framework="onnx")
    await registry.promote("m", "1")
    with pytest.raises(FailedPrecondition, match="production"):
        await registry.delete_version("m", "1")
    await registry.promote("m", "2")
    await registry.delete_version("m", "1")
    assert [v.version for v in (await registry.get_model("m")).versions] == ["2"]
    with pytest.raises(NotFound):
        await registry.load_artifact("m", "1")
    again = await registry.register("m", b"3", framework="onnx")
    assert again.version == "3"  # a deleted number is never handed out again


async def test_delete_model_removes_everything(registry: ModelRegistry) -> None:
    await registry.register("m", b"1", framework="onnx")
    await registry.promote("m", "1")
    await registry.delete_model("m")
    with pytest.raises(NotFound):
        await registry.get_model("m")
    with pytest.raises(NotFound):
        registry.resolve("m")
    with pytest.raises(NotFound):
        await registry.delete_model("m")
    assert (await registry.register("m", b"new", framework="onnx")).version == "1"


async def test_list_models_pages_by_name(registry: ModelRegistry) -> None:
    for name in ("e", "a", "d", "b", "c"):
        await registry.register(name, b"x", framework="onnx")
    seen, token, pages = [], "", 0
    while True:
        models, token = await registry.list_models(page_size=2, page_token=token)
        seen += [m.name for m in models]
        pages += 1
        if not token:
            break
    assert (seen, pages) == (["a", "b", "c", "d", "e"], 3)
    with pytest.raises(InvalidArgument, match="page_token"):
        await registry.list_models(page_token="!!")
    with pytest.raises(InvalidArgument, match="page_size"):
        await registry.list_models(page_size=-1)


async def test_changes_are_published_as_events(
    registry: ModelRegistry, nats_client: Client, service: str
) -> None:
    kinds: list[int] = []

    async def remember(event: Event[events_pb2.ModelChanged]) -> None:
        kinds.append(event.data.kind)

    bus = EventBus(nats_client, "nexus/test")
    watcher = await bus.watch(f"nexus.models.{service}.>", events_pb2.ModelChanged, remember)
    for i in range(3):
        await registry.register("m", f"{i}".encode(), framework="onnx")
    await registry.promote("m", "1")
    await registry.set_traffic_split("m", "production", {"1": 9, "2": 1})
    await registry.delete_version("m", "3")
    await registry.delete_model("m")
    k = events_pb2
    expected = [k.MODEL_CHANGE_KIND_REGISTERED] * 3 + [
        k.MODEL_CHANGE_KIND_PROMOTED,
        k.MODEL_CHANGE_KIND_TRAFFIC_SPLIT,
        k.MODEL_CHANGE_KIND_VERSION_DELETED,
        k.MODEL_CHANGE_KIND_DELETED,
    ]
    await eventually(lambda: kinds == expected)
    await watcher.stop()
