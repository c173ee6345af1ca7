"""Long-running operations: an RPC that starts long work answers at once with an operation that
any replica of the service runs, durably, with progress, cancellation and a result.

A service declares its kinds of work (`OperationKind`: a name, a request type, an async
function of the request and a `Progress`), mounts them with `ServiceHost.operations`, and its
starting RPC calls `Operations.submit`. The `nexus.operations.v1.OperationsService` it then serves
(`nexus.common.operations.servicer`) gets, lists, cancels and watches them. See
docs/adr/0028-long-running-operations.md.
"""

from nexus.common.operations._operations import (
    MAX_REQUEST_BYTES,
    STREAM,
    OperationKind,
    Operations,
    OperationsConfig,
    current_operation,
)
from nexus.common.operations._progress import (
    NO_PROGRESS,
    OperationCancelled,
    Progress,
    estimate_eta,
)
from nexus.common.operations._records import (
    Failure,
    OperationRecord,
    Result,
    State,
    operation_name,
    parse_name,
)
from nexus.common.operations._store import BUCKET, RETENTION_S, OperationStore

__all__ = [
    "BUCKET",
    "MAX_REQUEST_BYTES",
    "NO_PROGRESS",
    "RETENTION_S",
    "STREAM",
    "Failure",
    "OperationCancelled",
    "OperationKind",
    "OperationRecord",
    "OperationStore",
    "Operations",
    "OperationsConfig",
    "Progress",
    "Result",
    "State",
    "current_operation",
    "estimate_eta",
    "operation_name",
    "parse_name",
]
