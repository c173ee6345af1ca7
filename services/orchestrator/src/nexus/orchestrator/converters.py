"""Between the orchestrator's records and its protobuf messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
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
