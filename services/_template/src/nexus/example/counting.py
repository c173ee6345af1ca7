"""The example service's work, free of gRPC: counting words, within limits.

Rename this module to what the service does; it raises the platform's errors
(`nexus.common.errors`), which the error interceptor maps to status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from nexus.common.errors import InvalidArgument, ResourceExhausted
from nexus.example.settings import ExampleSettings


@dataclass(frozen=True)
class Count:
    """The counts of one text."""

    words: int
    characters: int


class WordCounter:
    """Counts words on the service's worker pool, never on the event loop.

    Args:
        settings: The limits.
        executor: The host's worker pool.
    """

    def __init__(self, settings: ExampleSettings, executor: Executor) -> None:
        self._settings = settings
        self._executor = executor

    async def count(self, texts: Sequence[str]) -> list[Count]:
        """One count per text.

        Raises:
            InvalidArgument: No texts.
            ResourceExhausted: Too many texts, or one too long.
        """
        self._check(texts)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _count_all, list(texts))

    def _check(self, texts: Sequence[str]) -> None:
        if not texts:
            raise InvalidArgument.for_field("texts", "at least one is required")
        if len(texts) > self._settings.max_texts:
            raise ResourceExhausted.too_large("texts", len(texts), self._settings.max_texts)
        for i, text in enumerate(texts):
            if len(text) > self._settings.max_text_chars:
                raise ResourceExhausted.too_large(
                    f"texts[{i}]", len(text), self._settings.max_text_chars
                )


def _count_all(texts: list[str]) -> list[Count]:
    return [Count(words=len(text.split()), characters=len(text)) for text in texts]
