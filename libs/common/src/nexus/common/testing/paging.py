"""Walking every page of a List RPC in tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

MAX_PAGES = 1000


async def every_page(
    list_page: Callable[[str], Awaitable[tuple[Sequence[T], str]]],
) -> list[list[T]]:
    """Every page of a list, following `next_page_token` from the first page to the last.

    Args:
        list_page: Fetches the page of a token ("" for the first): its items and the next token.
    """
    pages: list[list[T]] = []
    token = ""
    while len(pages) < MAX_PAGES:
        items, token = await list_page(token)
        pages.append(list(items))
        if not token:
            return pages
    raise AssertionError(f"more than {MAX_PAGES} pages: does the token move on?")
