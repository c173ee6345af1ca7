"""Registering, reading and listing workflow definitions over real gRPC with a real NATS, and
the errors a bad definition gets (field and line)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.errors import InvalidArgument
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.orchestrator.definitions import SCHEMA, parse_definition
from nexus.orchestrator.server import create
from nexus.orchestrator.settings import OrchestratorSettings

Metadata = tuple[tuple[str, str], ...]
ROOT = Path(__file__).resolve().parents[3]

SLEEPER = """\
name: sleeper
description: waits, then asks for approval
inputs:
  seconds: {type: number, required: true}
steps:
  - id: nap
    sleep: {seconds: 1}
  - id: approve
    wait_signal: {name: approval, timeout_s: 60}
"""

BAD = """\
name: broken
steps:
  - id: first
    sleep: {seconds: 1}
  - id: score
    call:
      method: nexus.anomaly.v1.AnomalyService/Scor
      request: {name: "${inputs.detector}"}
  - id: check
    if: "steps.score.output.points >"
    fail: {message: bad}
"""


def violations(err: InvalidArgument) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in err.violations]


def test_the_published_schema_is_the_one_the_service_checks() -> None:
    published = json.loads((ROOT / "docs/orchestrator/workflow.schema.json").read_text())

    assert published == SCHEMA


def test_an_unknown_method_and_a_bad_expression_are_named_with_their_line() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_definition(BAD)

    assert violations(caught.value) == [
        (
            "steps[1].call.method",
            "unknown method nexus.anomaly.v1.AnomalyService/Scor (line 7)",
        ),
        ("steps[2].if", violations(caught.value)[1][1]),
    ]
    assert violations(caught.value)[1][1].startswith("bad expression: ")
    assert violations(caught.value)[1][1].endswith("(line 10)")
    assert caught.value.message.startswith("steps[1].call.method: unknown method")


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (
            "name: a\nsteps:\n  - id: x\n    sleep: {seconds: 1}\n    nap: 2\n",
            "steps[0].nap",
            "line 5",
        ),
        ("name: a\nsteps:\n  - id: x\n", "steps[0]", "exactly one kind"),
        (
            "name: a\nsteps:\n  - id: x\n    sleep: {seconds: -1}\n",
            "steps[0].sleep.seconds",
            "line 4",
        ),
        ("name: a\nsteps: [\n", "definition", "not YAML"),
        ('{"name": "a", "steps": [}', "definition", "not JSON"),
        ("name: a b\nsteps:\n  - {id: x, sleep: {seconds: 1}}\n", "name", "line 1"),
        (
            "name: a\nsteps:\n  - {id: x, sleep: {seconds: 1}}\n  - {id: x, fail: {message: m}}\n",
            "steps[1].id",
            "duplicate step id",
        ),
        (
            "name: a\nsteps:\n  - {id: x, if: 'os.system(1)', fail: {message: m}}\n",
            "steps[0].if",
            "unknown variable 'os'",
        ),
        (
            "name: a\nsteps:\n  - {id: x, if: '" + "1 + " * 600 + "1', fail: {message: m}}\n",
            "steps[0].if",
            "is too long",
        ),
        ("- a\n- b\n", "definition", "must be an object"),
    ],
)
def test_bad_definitions_get_clear_errors(text: str, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_definition(text)

    assert violations(caught.value)[0][0] == field
    assert words in violations(caught.value)[0][1]


def test_a_json_definition_is_read_as_json() -> None:
    definition, fmt = parse_definition(
        json.dumps({"name": "j", "steps": [{"id": "s", "sleep": {"seconds": 2}}]})
    )

    assert (definition.name, fmt, list(definition.steps)) == ("j", "json", ["s"])


@pytest.fixture
async def orchestrator(start_service: StartService) -> ServiceHost:
    return await start_service(create, OrchestratorSettings(grpc_port=0))


@pytest.fixture
async def stub(orchestrator: ServiceHost) -> AsyncIterator[pb_grpc.OrchestratorServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator.port}") as channel:
        yield pb_grpc.OrchestratorServiceStub(channel)


@pytest.fixture
async def admin(nexus_settings: NexusSettings) -> Metadata:
    return (("authorization", f"Bearer {await make_key(nexus_settings, 'orchestrator:admin')}"),)


async def test_versions_are_kept_and_the_latest_is_listed(
    stub: pb_grpc.OrchestratorServiceStub, admin: Metadata
) -> None:
    first = await stub.RegisterWorkflow(
        pb.RegisterWorkflowRequest(definition=SLEEPER), metadata=admin
    )
    second = await stub.RegisterWorkflow(
        pb.RegisterWorkflowRequest(definition=SLEEPER.replace("seconds: 1}", "seconds: 2}")),
        metadata=admin,
    )
    old = await stub.GetWorkflow(pb.GetWorkflowRequest(name="sleeper", version=1), metadata=admin)
    latest = await stub.GetWorkflow(pb.GetWorkflowRequest(name="sleeper"), metadata=admin)
    listed = await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=admin)

    assert (first.workflow.version, second.workflow.version) == (1, 2)
    assert old.workflow.definition == SLEEPER
    assert latest.workflow.version == 2
    assert list(latest.workflow.step_ids) == ["nap", "approve"]
    assert latest.workflow.owner_key_id
    # The NATS server is the session's: other tests' workflows are listed too.
    assert [(w.name, w.version) for w in listed.workflows if w.name == "sleeper"] == [
        ("sleeper", 2)
    ]


async def test_a_bad_definition_is_invalid_argument_with_the_line(
    stub: pb_grpc.OrchestratorServiceStub, admin: Metadata
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=BAD), metadata=admin)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "steps[1].call.method: unknown method" in (caught.value.details() or "")
    assert "(line 7)" in (caught.value.details() or "")


async def test_unknown_workflows_are_not_found_and_reads_need_a_scope(
    stub: pb_grpc.OrchestratorServiceStub, admin: Metadata, nexus_settings: NexusSettings
) -> None:
    other = (("authorization", f"Bearer {await make_key(nexus_settings, 'models:read')}"),)

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetWorkflow(pb.GetWorkflowRequest(name="nothing"), metadata=admin)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=other)

    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
