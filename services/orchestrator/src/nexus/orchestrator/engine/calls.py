"""Call steps and publish steps: any Nexus RPC by its full method name, any event type, found
through the descriptors of the generated `nexus.api` package (no per-service code).

The backend of `nexus.<area>.v1.<Service>/<Method>` is `<area>` in the orchestrator's
`backends` (as the gateway's). Requests and responses are JSON values (protobuf JSON mapping,
field names as in the protos).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message

from nexus.common.idempotency import METADATA_KEY
from nexus.common.routing import backend_of_request
from nexus.common.telemetry import client_interceptors
from nexus.orchestrator.definitions.parsing import find_message, find_method

_RECONNECT_BACKOFF_MS = 500


class StepError(Exception):
    """A step's attempt that failed, with a gRPC status code name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


NOT_RETRIED = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
    }
)
"""Codes another attempt cannot change; any other failure is retried per the step's policy."""


def message_of(type_name: str, value: Mapping[str, Any]) -> Message:
    """A message of a `nexus.api` type from its JSON value.

    Raises:
        StepError: INVALID_ARGUMENT when the type is unknown or the value does not fit it.
    """
    descriptor = find_message(type_name)
    if descriptor is None:
        raise StepError("INVALID_ARGUMENT", f"unknown message type {type_name}")
    return _parsed(message_factory.GetMessageClass(descriptor)(), value)


def to_json(message: Message) -> dict[str, Any]:
    """A message's JSON value, every field shown (so expressions may read empty ones)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _parsed(message: Message, value: Mapping[str, Any]) -> Message:
    try:
        return json_format.ParseDict(dict(value), message)
    except json_format.ParseError as err:
        raise StepError("INVALID_ARGUMENT", f"bad {message.DESCRIPTOR.full_name}: {err}") from err


class Caller:
    """Generic unary calls to the deployment's services, one channel per backend.

    Args:
        backends: Service name -> "host:port".
        service_key: The orchestrator's API key, sent on every call ("" : none).
    """

    def __init__(self, backends: Mapping[str, str], service_key: str) -> None:
        self._backends = dict(backends)
        self._service_key = service_key
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def call(
        self, method: str, request: Mapping[str, Any], *, idempotency_key: str, timeout_s: float
    ) -> dict[str, Any]:
        """Calls `method` with `request`; its response as JSON.

        Raises:
            StepError: The call failed (its gRPC code), or the method or backend is unknown.
        """
        descriptor = find_method(method)
        if descriptor is None or descriptor.client_streaming or descriptor.server_streaming:
            raise StepError("INVALID_ARGUMENT", f"{method} is not a unary Nexus RPC")
        input_class = message_factory.GetMessageClass(descriptor.input_type)
        output_class = message_factory.GetMessageClass(descriptor.output_type)
        backend = backend_of_request(descriptor.containing_service, request)
        callable_ = self._channel(backend).unary_unary(
            "/" + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=output_class.FromString,
        )
        metadata = [(METADATA_KEY, idempotency_key)]
        if self._service_key:
            metadata.append(("authorization", f"Bearer {self._service_key}"))
        try:
            response = await callable_(
                _parsed(input_class(), request), metadata=tuple(metadata), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise StepError(err.code().name, err.details() or "") from err
        return to_json(response)

    def _channel(self, backend: str) -> grpc.aio.Channel:
        channel = self._channels.get(backend)
        if channel is None:
            address = self._backends.get(backend)
            if address is None:
                raise StepError("FAILED_PRECONDITION", f"no service {backend!r} in backends")
            options = [
                ("grpc.initial_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS),
                ("grpc.max_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS),
            ]
            # The trace of the advance being handled goes on into the service called.
            channel = grpc.aio.insecure_channel(
                address, options=options, interceptors=client_interceptors()
            )
            self._channels[backend] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)
