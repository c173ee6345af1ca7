"""The gRPC side: one channel per backend, generic calls, and readiness checks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus.gateway.descriptors import HttpBinding
from nexus.gateway.errors import not_found

BACKEND_NOT_FOUND = "BACKEND_NOT_FOUND"
SERVING = "SERVING"
RECONNECT_BACKOFF_MS = 500


class BackendPool:
    """Channels to the configured backends, opened on first use and shared by all requests.

    Args:
        addresses: Backend name -> "host:port".
        max_message_bytes: Largest message sent or received.
    """

    def __init__(self, addresses: Mapping[str, str], *, max_message_bytes: int) -> None:
        self._addresses = dict(addresses)
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # A backend that restarts is back within a second, not after gRPC's default backoff
            # (up to 120 s); meanwhile calls fail at once (UNAVAILABLE), they never wait for it.
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str], Any] = {}

    @property
    def names(self) -> list[str]:
        """The configured backend names, sorted."""
        return sorted(self._addresses)

    def __contains__(self, backend: object) -> bool:
        return backend in self._addresses

    def channel(self, backend: str) -> grpc.aio.Channel:
        """The channel to `backend`.

        Raises:
            GatewayError: NOT_FOUND when no backend of that name is configured.
        """
        channel = self._channels.get(backend)
        if channel is None:
            address = self._addresses.get(backend)
            if address is None:
                raise not_found(f"no service {backend!r} in this deployment", BACKEND_NOT_FOUND)
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[backend] = channel
        return channel

    def unary(
        self, backend: str, binding: HttpBinding
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        """A generic unary callable for the binding's RPC on `backend`."""
        key = (backend, binding.full_method)
        if key not in self._callables:
            self._callables[key] = self.channel(backend).unary_unary(
                binding.full_method,
                request_serializer=_serialize,
                response_deserializer=binding.response_class.FromString,
            )
        return cast("grpc.aio.UnaryUnaryMultiCallable[Any, Any]", self._callables[key])

    def stream(
        self, backend: str, binding: HttpBinding
    ) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        """A generic server-streaming callable for the binding's RPC on `backend`."""
        key = (backend, binding.full_method)
        if key not in self._callables:
            self._callables[key] = self.channel(backend).unary_stream(
                binding.full_method,
                request_serializer=_serialize,
                response_deserializer=binding.response_class.FromString,
            )
        return cast("grpc.aio.UnaryStreamMultiCallable[Any, Any]", self._callables[key])

    async def check(self, backend: str, timeout_s: float) -> str:
        """The backend's overall gRPC health: "SERVING", "NOT_SERVING", or the call's error code."""
        stub = health_pb2_grpc.HealthStub(self.channel(backend))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return str(err.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def readiness(self, timeout_s: float) -> dict[str, str]:
        """Every backend's health, checked concurrently."""
        names = self.names
        states = await asyncio.gather(*(self.check(n, timeout_s) for n in names))
        return dict(zip(names, states, strict=True))

    async def close(self, grace_s: float | None = None) -> None:
        """Closes every channel (in-flight calls get `grace_s`, then are cancelled)."""
        channels, self._channels = list(self._channels.values()), {}
        self._callables.clear()
        await asyncio.gather(*(c.close(grace_s) for c in channels))


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())
