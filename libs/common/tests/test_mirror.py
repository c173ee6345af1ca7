"""nexus.common.kv's in-memory parts: the mirror of a bucket and the values last written."""

from __future__ import annotations

import asyncio

from nexus.common.kv import LastWritten, Mirror, Versioned


class Decoder:
    """Decodes `b"<n>"` to n and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, raw: bytes) -> int:
        self.calls += 1
        return int(raw)


def test_a_record_is_replaced_only_by_a_later_revision() -> None:
    mirror = Mirror(Decoder())
    mirror.put("a", 1, revision=5)
    mirror.put("a", 2, revision=4)  # an older write arriving late (a view behind its run)
    mirror.put_raw("a", b"3", revision=5)
    assert mirror.peek("a") == 1
    mirror.put_raw("a", b"6", revision=6)
    assert mirror.peek("a") == 6
    assert mirror.revision("a") == 6
    assert mirror.revision("b") == 0
    assert mirror.peek("b") is None


def test_values_are_decoded_once_when_read_unless_watched() -> None:
    decode = Decoder()
    mirror = Mirror(decode)
    for revision in range(1, 101):  # a key written 100 times between two reads
        mirror.put_raw("a", str(revision).encode(), revision)
    mirror.put_raw("b", b"7", 101)
    assert decode.calls == 0
    assert sorted(mirror.records()) == [7, 100]
    assert decode.calls == 2
    assert mirror.peek("a") == 100
    assert decode.calls == 2

    with mirror.watching("c") as changes:
        mirror.put_raw("c", b"8", 102)
        assert decode.calls == 3  # at once: a watch waits for it
        assert changes.get_nowait() == Versioned(8, 102)


def test_watches_see_newer_records_and_end_on_removal_or_close() -> None:
    mirror = Mirror(Decoder())
    with mirror.watching("a") as first, mirror.watching("b") as second:
        mirror.put("a", 1, 1)
        mirror.put("a", 0, 1)  # not newer: no change
        mirror.remove("a")
        mirror.close()
        assert _drain(first) == [Versioned(1, 1), None, None]
        assert _drain(second) == [None]
    assert mirror.peek("a") is None
    mirror.put("a", 5, 1)  # removed: an entry of any revision holds again
    assert mirror.peek("a") == 5


def test_listeners_get_every_record_put() -> None:
    seen: list[int] = []
    mirror = Mirror(Decoder())
    mirror.on_change(seen.append)
    mirror.put_raw("a", b"1", 1)
    mirror.put("a", 2, 2)
    mirror.put("a", 3, 2)
    assert seen == [1, 2]


def test_last_written_keeps_the_latest_revision_and_forgets_the_least_used() -> None:
    forgotten: list[str] = []
    written = LastWritten(keep=2, forgotten=forgotten.append)
    written.remember("a", b"x", 3)
    written.remember("a", b"old", 2)  # read back after a later write: the later one stays
    assert written.get("a") == (b"x", 3)
    written.remember("b", b"y", 1)
    written.remember("a", b"z", 4)  # used again: "b" is now the least recently used
    written.remember("c", b"w", 1)
    assert forgotten == ["b"]
    assert written.get("b") is None
    written.remember("a", None, 0)  # gone from the bucket
    assert written.get("a") is None
    assert written.get("c") == (b"w", 1)


def _drain(queue: asyncio.Queue[Versioned[int] | None]) -> list[Versioned[int] | None]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out
