"""Logs: JSON lines with trace ids (or plain text), configured once per process.

A JSON line holds `ts`, `level`, `logger`, `message`, `service`, `trace_id`, `span_id` (of the
span current when the record was made; empty outside a span), every `extra={...}` field of the
call, and `exception` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

from nexus.common.settings import NexusSettings

# Attributes every LogRecord has; whatever else a record carries came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Args:
        service: The `service` field of every line.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self._service,
            **_trace_ids(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _trace_ids() -> dict[str, str]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {"trace_id": "", "span_id": ""}
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


class _NexusHandler(logging.StreamHandler[TextIO]):
    """The one handler `setup_logging` owns on the root logger (found again by its type)."""


def setup_logging(settings: NexusSettings, service: str, *, stream: TextIO | None = None) -> None:
    """Configures the root logger; calling it again replaces the previous configuration.

    Args:
        settings: Shared settings (`log_level`, `log_json`).
        service: The `service` field of JSON lines.
        stream: Where lines go; standard error by default.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _NexusHandler)]:
        root.removeHandler(old)
    handler = _NexusHandler(stream or sys.stderr)
    if settings.log_json:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(_PLAIN_FORMAT))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
