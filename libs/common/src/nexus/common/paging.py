"""Paging of every List RPC, one set of rules (Google AIP-158).

- `page_size`: 0 means `DEFAULT_PAGE_SIZE`; above `MAX_PAGE_SIZE` it is lowered to it; a
  negative size is INVALID_ARGUMENT.
- `page_token`: "" for the first page, else the `next_page_token` of the previous page, which is
  opaque: it holds the position after which the next page starts (the sort key of the last item
  listed, so an item added or removed between pages shifts nothing) and the list it belongs to.
  A token that no page of this list gave out is INVALID_ARGUMENT.
- `next_page_token` is "" on the last page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from nexus.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
"""Items per page when the request says 0."""
MAX_PAGE_SIZE = 500
"""Most items per page; a larger request gets this many."""

T = TypeVar("T")
Cursor = str | int
"""The sort key of an item: where a page ends and the next one starts."""


@dataclass(frozen=True)
class PageRequest:
    """A checked page request.

    Attributes:
        size: Items on the page, 1 to `MAX_PAGE_SIZE`.
        after: The sort key of the last item of the previous page; None on the first page.
        scope: The list the page belongs to (its name, and the filters that select its items).
    """

    size: int
    after: Cursor | None
    scope: str

    def next_token(self, last: Cursor) -> str:
        """The token of the page that follows the item whose sort key is `last`."""
        text = json.dumps([self.scope, last], separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def page_request(page_size: int, page_token: str, *, scope: str) -> PageRequest:
    """Checks a request's `page_size` and `page_token`.

    Args:
        page_size: As the request says.
        page_token: As the request says.
        scope: The list's name and the filters of the request ("conversations/<owner>"): a
            token of another list, or of the same list with other filters, is refused.

    Raises:
        InvalidArgument: A negative size, or a token that no page of this list gave out.
    """
    if page_size < 0:
        raise InvalidArgument.for_field("page_size", "must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    return PageRequest(size, _decode(page_token, scope), scope)


def paginate(
    items: Sequence[T], key: Callable[[T], Cursor], page: PageRequest
) -> tuple[list[T], str]:
    """One page of `items`, which are sorted by `key` (ascending, unique).

    Returns:
        The page, and the next page's token ("" on the last page).
    """
    after = page.after
    rest = [item for item in items if after is None or _after(key(item), after)]
    listed = rest[: page.size]
    token = page.next_token(key(listed[-1])) if len(rest) > page.size else ""
    return listed, token


def _after(cursor: Cursor, after: Cursor) -> bool:
    if type(cursor) is not type(after):
        raise InvalidArgument.for_field("page_token", "not a token of this list")
    return cursor > after  # type: ignore[operator]  # same type, checked above


def _decode(token: str, scope: str) -> Cursor | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        token_scope, after = json.loads(text)
    except (binascii.Error, UnicodeError, ValueError, TypeError):
        raise InvalidArgument.for_field("page_token", "not a token of this list") from None
    if token_scope != scope or isinstance(after, bool) or not isinstance(after, str | int):
        raise InvalidArgument.for_field("page_token", "not a token of this list")
    return after
