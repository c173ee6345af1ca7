"""Operations (domain records) as nexus.operations.v1 protos."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from nexus.api.operations.v1 import operations_pb2 as pb
from nexus.common.operations._records import Failure, OperationRecord, State
from nexus.common.registry.converters import timestamp

STATES = {
    State.QUEUED: pb.OPERATION_STATE_QUEUED,
    State.RUNNING: pb.OPERATION_STATE_RUNNING,
    State.SUCCEEDED: pb.OPERATION_STATE_SUCCEEDED,
    State.FAILED: pb.OPERATION_STATE_FAILED,
    State.CANCELLED: pb.OPERATION_STATE_CANCELLED,
}
_FROM_PROTO: dict[int, State] = {int(value): state for state, value in STATES.items()}


def state_from_proto(value: int) -> State | None:
    """The state a filter names; None for unset (every state)."""
    return _FROM_PROTO.get(int(value))


def operation_to_proto(record: OperationRecord) -> pb.Operation:
    """An operation, with its result or error once done."""
    operation = pb.Operation(
        name=record.name,
        kind=record.kind,
        state=STATES[record.state],
        done=record.done,
        progress=_progress(record),
        create_time=_time(record.created),
        update_time=_time(record.updated),
        attempt=record.attempt,
        max_attempts=record.max_attempts,
        cancel_requested=record.cancel_requested,
    )
    if record.started:
        operation.start_time.CopyFrom(_time(record.started))
    if record.ended:
        operation.end_time.CopyFrom(_time(record.ended))
    if record.result is not None and record.state is State.SUCCEEDED:
        result = record.result
        operation.response.CopyFrom(any_pb2.Any(type_url=result.type_url, value=result.value))
    elif record.error is not None and record.done:
        operation.error.CopyFrom(status_of(record.error))
    return operation


def status_of(failure: Failure) -> status_pb2.Status:
    """A failure as a google.rpc.Status (its code by name, as grpc.StatusCode numbers it)."""
    code = getattr(grpc.StatusCode, failure.code, grpc.StatusCode.UNKNOWN)
    return status_pb2.Status(code=code.value[0], message=failure.message)


def _progress(record: OperationRecord) -> pb.Progress:
    progress = pb.Progress(
        stage=record.stage,
        percent=record.percent,
        metrics=dict(record.metrics),
        message=record.message,
    )
    if record.eta_s >= 0 and not record.done:
        eta = duration_pb2.Duration()
        eta.FromNanoseconds(round(record.eta_s * 1e9))
        progress.eta.CopyFrom(eta)
    return progress


def _time(unix_s: float) -> Timestamp:
    return timestamp(datetime.fromtimestamp(unix_s, UTC))
