"""Between the orchestrator's records and its protobuf messages."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc.status_pb2 import Status

from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.orchestrator.engine.records import RunRecord, StepRecord
from nexus.orchestrator.workflows import WorkflowVersion

_FORMATS = {"yaml": pb.DEFINITION_FORMAT_YAML, "json": pb.DEFINITION_FORMAT_JSON}


def format_from_proto(value: int) -> str:
    """ "yaml", "json", or "" (guess)."""
    return next((name for name, number in _FORMATS.items() if number == value), "")


def workflow_to_proto(workflow: WorkflowVersion) -> pb.Workflow:
    return pb.Workflow(
        name=workflow.name,
        version=workflow.version,
        description=workflow.description,
        definition=workflow.definition,
        format=_FORMATS.get(workflow.format, pb.DEFINITION_FORMAT_UNSPECIFIED),
        owner_key_id=workflow.owner_key_id,
        create_time=timestamp(workflow.created),
        step_ids=list(workflow.step_ids),
    )


def timestamp(unix_s: float) -> Timestamp:
    stamp = Timestamp()
    if unix_s:
        stamp.FromNanoseconds(int(unix_s * 1e9))
    return stamp


def struct(value: Any) -> Struct:
    """A JSON value as a Struct (a value that is not an object as {"value": ...})."""
    message = Struct()
    if value is not None:
        message.update(value if isinstance(value, dict) else {"value": value})
    return message


def status(error: dict[str, str] | None) -> Status:
    if not error:
        return Status()
    code = grpc.StatusCode[error["code"]].value[0] if error["code"] in _CODES else 2
    return Status(code=code, message=error["message"])


def run_to_proto(run: RunRecord) -> pb.Run:
    current = run.current
    return pb.Run(
        run_id=run.run_id,
        workflow=run.workflow,
        version=run.version,
        state=pb.RunState.Value(f"RUN_STATE_{run.state}"),
        done=run.done,
        inputs=struct(run.inputs),
        outputs=struct(run.outputs),
        error=status(run.error),
        current_step=current.step_id if current is not None else "",
        trigger=pb.Trigger(kind=run.trigger_kind, detail=run.trigger_detail),
        create_time=timestamp(run.created),
        update_time=timestamp(run.updated),
        end_time=timestamp(run.ended),
        cancel_requested=run.cancel_requested,
        steps_executed=run.executed,
    )


def step_to_proto(step: StepRecord) -> pb.StepExecution:
    return pb.StepExecution(
        step_id=step.step_id,
        kind=step.kind,
        state=pb.StepState.Value(f"STEP_STATE_{step.state}"),
        input=struct(step.input),
        output=struct(step.output),
        error=status(step.error),
        attempts=step.attempts,
        start_time=timestamp(step.started),
        end_time=timestamp(step.ended),
        duration=seconds(step.ended - step.started if step.ended else 0.0),
        last_attempt_duration=seconds(step.last_attempt_s),
    )


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(max(value, 0.0) * 1e9))
    return duration


def state_from_proto(value: int) -> str:
    """A RunState as the record's state ("" for unspecified)."""
    return (
        pb.RunState.Name(pb.RunState.ValueType(value)).removeprefix("RUN_STATE_") if value else ""
    )


_CODES = frozenset(code.name for code in grpc.StatusCode)
