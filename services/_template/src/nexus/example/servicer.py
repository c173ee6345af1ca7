"""The ExampleService RPCs: each converts the request, calls the domain, converts the result.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from typing import Any

from nexus.api.example.v1 import example_service_pb2 as pb
from nexus.api.example.v1 import example_service_pb2_grpc as pb_grpc
from nexus.example.counting import WordCounter

Context = Any  # grpc.aio.ServicerContext; unused by these handlers


class ExampleServicer(pb_grpc.ExampleServiceServicer):
    """gRPC face of the word counter."""

    def __init__(self, counter: WordCounter) -> None:
        self._counter = counter

    async def CountWords(
        self, request: pb.CountWordsRequest, context: Context
    ) -> pb.CountWordsResponse:
        counts = await self._counter.count(request.texts)
        return pb.CountWordsResponse(
            counts=[pb.TextCount(words=c.words, characters=c.characters) for c in counts]
        )
