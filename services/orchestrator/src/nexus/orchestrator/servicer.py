"""The OrchestratorService RPCs: each converts the request, calls the domain, converts back.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.auth import current_api_key
from nexus.orchestrator import converters
from nexus.orchestrator.engine.engine import Engine
from nexus.orchestrator.engine.queries import RunFilter, history, list_runs
from nexus.orchestrator.workflows import WorkflowStore

Context = Any  # grpc.aio.ServicerContext


def caller_key_id() -> str:
    """The id of the calling API key ("" when auth is off)."""
    key = current_api_key.get()
    return key.id if key is not None else ""


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    """gRPC face of the workflow store and the engine."""

    def __init__(self, workflows: WorkflowStore, engine: Engine) -> None:
        self._workflows = workflows
        self._engine = engine

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

    async def DeleteWorkflow(
        self, request: pb.DeleteWorkflowRequest, context: Context
    ) -> pb.DeleteWorkflowResponse:
        last = await self._workflows.delete(request.name)
        return pb.DeleteWorkflowResponse(last_version=last)

    async def StartRun(self, request: pb.StartRunRequest, context: Context) -> pb.StartRunResponse:
        run = await self._engine.start_run(
            request.workflow,
            request.version,
            json_format.MessageToDict(request.inputs),
            ("manual", caller_key_id()),
        )
        return pb.StartRunResponse(run=converters.run_to_proto(run))

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        run = await self._engine.runs.get(request.run_id)
        return pb.GetRunResponse(run=converters.run_to_proto(run))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        chosen = RunFilter(
            workflow=request.workflow,
            state=converters.state_from_proto(request.state),
            created_from=_seconds(request.start_time_from)
            if request.HasField("start_time_from")
            else 0.0,
            created_to=_seconds(request.start_time_to)
            if request.HasField("start_time_to")
            else 0.0,
        )
        runs, token = await list_runs(
            self._engine.runs, chosen, request.page_size, request.page_token
        )
        return pb.ListRunsResponse(
            runs=[converters.run_to_proto(run) for run in runs], next_page_token=token
        )

    async def GetRunHistory(
        self, request: pb.GetRunHistoryRequest, context: Context
    ) -> pb.GetRunHistoryResponse:
        steps, token = await history(
            self._engine.runs, request.run_id, request.page_size, request.page_token
        )
        return pb.GetRunHistoryResponse(
            steps=[converters.step_to_proto(step) for step in steps], next_page_token=token
        )

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Context
    ) -> pb.CancelRunResponse:
        run = await self._engine.cancel(request.run_id)
        return pb.CancelRunResponse(run=converters.run_to_proto(run))

    async def SignalRun(
        self, request: pb.SignalRunRequest, context: Context
    ) -> pb.SignalRunResponse:
        payload = json_format.MessageToDict(request.payload)
        run = await self._engine.signal(request.run_id, request.signal, payload)
        return pb.SignalRunResponse(run=converters.run_to_proto(run))

    async def RerunRun(self, request: pb.RerunRunRequest, context: Context) -> pb.RerunRunResponse:
        run = await self._engine.rerun(request.run_id)
        return pb.RerunRunResponse(run=converters.run_to_proto(run))

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Context
    ) -> AsyncIterator[pb.WatchRunResponse]:
        async for run in self._engine.watch(request.run_id):
            yield pb.WatchRunResponse(run=converters.run_to_proto(run))


def _seconds(stamp: Timestamp) -> float:
    return float(stamp.ToNanoseconds()) / 1e9
