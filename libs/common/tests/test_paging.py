"""nexus.common.paging: the one set of paging rules of every List RPC (no network)."""

from __future__ import annotations

import pytest

from nexus.common.errors import InvalidArgument
from nexus.common.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, page_request, paginate

NAMES = [f"n{i:04d}" for i in range(1200)]


def pages(items: list[str], size: int, scope: str = "things") -> list[list[str]]:
    """Every page of `items`, following the tokens."""
    out, token = [], ""
    while True:
        page, token = paginate(items, str, page_request(size, token, scope=scope))
        out.append(page)
        if not token:
            return out


def test_pages_cover_every_item_once_in_order() -> None:
    assert [len(p) for p in pages(NAMES[:5], 2)] == [2, 2, 1]
    assert [name for page in pages(NAMES, 7) for name in page] == NAMES
    assert pages([], 3) == [[]]
    assert pages(NAMES[:4], 2) == [NAMES[:2], NAMES[2:4]]  # no empty page at the end


def test_page_size_default_and_maximum() -> None:
    assert page_request(0, "", scope="s").size == DEFAULT_PAGE_SIZE
    assert page_request(7, "", scope="s").size == 7
    assert page_request(10_000, "", scope="s").size == MAX_PAGE_SIZE
    assert len(paginate(NAMES, str, page_request(0, "", scope="s"))[0]) == DEFAULT_PAGE_SIZE
    with pytest.raises(InvalidArgument) as err:
        page_request(-1, "", scope="s")
    assert err.value.violations[0].field == "page_size"


def test_a_token_continues_after_its_item_even_when_items_change() -> None:
    first, token = paginate(["a", "b", "c", "d"], str, page_request(2, "", scope="s"))
    assert first == ["a", "b"]
    # "b" was deleted and "bb" added meanwhile: the next page starts after "b" all the same.
    second, _ = paginate(["a", "bb", "c", "d"], str, page_request(2, token, scope="s"))
    assert second == ["bb", "c"]


def test_descending_lists_page_by_a_negated_key() -> None:
    revisions = [9, 7, 4, 2]
    page, token = paginate(revisions, lambda r: -r, page_request(2, "", scope="s"))
    rest, last = paginate(revisions, lambda r: -r, page_request(2, token, scope="s"))
    assert (page, rest, last) == ([9, 7], [4, 2], "")


@pytest.mark.parametrize(
    "token",
    [
        "not base64!",
        "bm90IGpzb24",  # "not json"
        page_request(1, "", scope="other list").next_token("a"),
        page_request(1, "", scope="things").next_token(True),  # type: ignore[arg-type]
        "WyJ0aGluZ3MiXQ",  # ["things"]: no position
    ],
)
def test_a_token_of_no_page_of_this_list_is_invalid(token: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        paginate(NAMES, str, page_request(1, token, scope="things"))
    assert err.value.violations[0].field == "page_token"


def test_a_token_with_a_cursor_of_another_kind_is_invalid() -> None:
    numeric = page_request(1, "", scope="things").next_token(5)
    with pytest.raises(InvalidArgument, match="page_token"):
        paginate(NAMES, str, page_request(1, numeric, scope="things"))
