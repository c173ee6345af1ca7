"""What a failed gRPC call said: the fields its `google.rpc.BadRequest` details name."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def field_of(err: grpc.aio.AioRpcError) -> str:
    """The first bad field of a failed call ("" when it names none)."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return str(bad.field_violations[0].field)
    return ""
