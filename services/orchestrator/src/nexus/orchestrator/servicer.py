"""The OrchestratorService RPCs: each converts the request, calls the domain, converts back.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.auth import current_api_key
from nexus.orchestrator import converters
from nexus.orchestrator.workflows import WorkflowStore

Context = Any  # grpc.aio.ServicerContext


def caller_key_id() -> str:
    """The id of the calling API key ("" when auth is off)."""
    key = current_api_key.get()
    return key.id if key is not None else ""


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    """gRPC face of the workflow store and the engine."""

    def __init__(self, workflows: WorkflowStore) -> None:
        self._workflows = workflows

    async def RegisterWorkflow(
        self, request: pb.RegisterWorkflowRequest, context: Context
    ) -> pb.RegisterWorkflowResponse:
        fmt = converters.format_from_proto(request.format)
        workflow = await self._workflows.register(request.definition, fmt, caller_key_id())
        return pb.RegisterWorkflowResponse(workflow=converters.workflow_to_proto(workflow))

    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: Context
    ) -> pb.GetWorkflowResponse:
        workflow = await self._workflows.get(request.name, request.version)
        return pb.GetWorkflowResponse(workflow=converters.workflow_to_proto(workflow))

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Context
    ) -> pb.ListWorkflowsResponse:
        workflows, token = await self._workflows.list_latest(request.page_size, request.page_token)
        return pb.ListWorkflowsResponse(
            workflows=[converters.workflow_to_proto(w) for w in workflows], next_page_token=token
        )

    # Runs: the contract is in place; the durable engine lands next (docs/adr/0029).

    async def StartRun(self, request: pb.StartRunRequest, context: Context) -> pb.StartRunResponse:
        await _not_yet(context)

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        await _not_yet(context)

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        await _not_yet(context)

    async def GetRunHistory(
        self, request: pb.GetRunHistoryRequest, context: Context
    ) -> pb.GetRunHistoryResponse:
        await _not_yet(context)

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Context
    ) -> pb.CancelRunResponse:
        await _not_yet(context)

    async def SignalRun(
        self, request: pb.SignalRunRequest, context: Context
    ) -> pb.SignalRunResponse:
        await _not_yet(context)

    async def RerunRun(self, request: pb.RerunRunRequest, context: Context) -> pb.RerunRunResponse:
        await _not_yet(context)

    async def WatchRun(  # type: ignore[override]
        self, request: pb.WatchRunRequest, context: Context
    ) -> pb.WatchRunResponse:
        await _not_yet(context)


async def _not_yet(context: Context) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "runs are not served yet by this version")
    raise AssertionError("abort raises")
