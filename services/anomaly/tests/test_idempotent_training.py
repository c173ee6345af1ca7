"""Training and registry changes with an idempotency key: no ghost versions, no duplicates."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from anomaly_testing import Client, StartHost, cloud, points, unique

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.common.idempotency import METADATA_KEY
from nexus.common.registry import ModelVersionInfo
from nexus.common.settings import NexusSettings
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.integration

WAIT_S = 60.0


def with_key(client: Client, key: str) -> tuple[tuple[str, str], ...]:
    return (*client.metadata, (METADATA_KEY, key))


def slow_training(name: str) -> pb.TrainDetectorRequest:
    """A training that takes well over the short deadline below (a thousand trees)."""
    return pb.TrainDetectorRequest(
        name=name,
        algorithm=pb.ALGORITHM_ISOLATION_FOREST,
        points=points(cloud(2000, 8)),
        parameters={"n_estimators": "1000"},
    )


async def versions(client: Client, name: str) -> list[models_pb.ModelVersion]:
    request = models_pb.GetModelRequest(service="anomaly", name=name)
    try:
        reply = await client.models.GetModel(request, metadata=client.metadata)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return []
        raise
    return list(reply.model.versions)


async def test_a_training_whose_client_timed_out_is_returned_to_its_retry(
    client: Client,
) -> None:
    name, key = unique(), str(uuid.uuid4())
    request = slow_training(name)
    with pytest.raises(grpc.aio.AioRpcError) as timed_out:
        await client.anomaly.TrainDetector(request, metadata=with_key(client, key), timeout=0.3)
    assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # The server goes on and registers the version the client no longer waits for...
    async def registered_one() -> bool:
        return bool(await versions(client, name))

    await eventually(registered_one, WAIT_S)
    # ...and the retry gets that version rather than training a second one.
    retried = await client.anomaly.TrainDetector(
        request, metadata=with_key(client, key), timeout=WAIT_S
    )
    registered = await versions(client, name)
    assert [v.version for v in registered] == ["1"]
    assert retried.version.version == "1"
    assert retried.version.sha256 == registered[0].sha256


async def test_a_training_whose_replica_died_after_registering_is_not_registered_again(
    start_anomaly: StartHost,
    nexus_settings: NexusSettings,
    admin_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica killed between registering a version and recording the call's outcome leaves
    an expired claim; the retry that takes it over trains again, and must answer with the
    version the first run registered rather than register a second one."""
    common = nexus_settings.model_copy(update={"idempotency_lease_s": 1.0})
    dying = await start_anomaly(common, shutdown_grace_s=0.5)
    alive = await start_anomaly(common)
    registry = await dying.registry()
    register = registry.register

    async def register_then_die(name: str, artifact: bytes, **kwargs: Any) -> ModelVersionInfo:
        await register(name, artifact, **kwargs)
        await dying.nc.close()  # no outcome, no renewal, no release: what a SIGKILL leaves
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(registry, "register", register_then_die)
    name, key = unique(), str(uuid.uuid4())
    request = pb.TrainDetectorRequest(
        name=name, algorithm=pb.ALGORITHM_ISOLATION_FOREST, points=points(cloud())
    )
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{dying.port}") as doomed_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{alive.port}") as channel,
    ):
        doomed, client = Client(doomed_channel, admin_key), Client(channel, admin_key)
        lost = asyncio.ensure_future(
            doomed.anomaly.TrainDetector(request, metadata=with_key(doomed, key))
        )

        async def registered_one() -> bool:
            return bool(await versions(client, name))

        await eventually(registered_one, WAIT_S)
        retried = await client.anomaly.TrainDetector(
            request, metadata=with_key(client, key), timeout=WAIT_S
        )
        lost.cancel()
        registered = await versions(client, name)
    assert [v.version for v in registered] == ["1"]
    assert retried.version.version == "1"


async def test_a_retry_while_training_waits_for_the_one_training(client: Client) -> None:
    name, key = unique(), str(uuid.uuid4())
    request = slow_training(name)
    calls = [
        client.anomaly.TrainDetector(request, metadata=with_key(client, key), timeout=WAIT_S)
        for _ in range(3)
    ]
    replies = await asyncio.gather(*calls)
    assert {r.version.version for r in replies} == {"1"}
    assert len(await versions(client, name)) == 1


async def test_registry_changes_with_a_key_are_applied_once(client: Client) -> None:
    name = unique()
    train = pb.TrainDetectorRequest(
        name=name, algorithm=pb.ALGORITHM_ISOLATION_FOREST, points=points(cloud())
    )
    for _ in range(2):
        await client.anomaly.TrainDetector(train, metadata=client.metadata)
    delete = models_pb.DeleteModelVersionRequest(service="anomaly", name=name, version="1")
    key = str(uuid.uuid4())
    for _ in range(2):  # the retry is answered as the first call was, not NOT_FOUND
        await client.models.DeleteModelVersion(delete, metadata=with_key(client, key))
    assert [v.version for v in await versions(client, name)] == ["2"]
    with pytest.raises(grpc.aio.AioRpcError) as unkeyed:
        await client.models.DeleteModelVersion(delete, metadata=client.metadata)
    assert unkeyed.value.code() == grpc.StatusCode.NOT_FOUND
