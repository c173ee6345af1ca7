"""NexusClient parses message headers as nats-py does, only faster."""

from __future__ import annotations

import random

import pytest
from nats.aio.client import Client

from nexus.common import nats as nexus_nats
from nexus.common.nats import NexusClient

ENVELOPE = (
    b"ce-specversion: 1.0\r\nce-id: 0123456789abcdef\r\nce-source: nexus/test\r\n"
    b"ce-type: nexus.metrics.v1.MetricPoint\r\nce-time: 2026-01-31T12:00:00.123Z\r\n"
    b"content-type: application/protobuf\r\nNats-Msg-Id: 0123456789abcdef\r\n"
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
)
ODD = [
    b"",
    b"\r\n\r\n",
    b"k:v\r\n",
    b"k :\t v \r\n",
    b"no colon here\r\nk: v\r\n",
    b"bad key: v\r\nok: v\r\n",
    b"\xc3\xa9t\xc3\xa9: summer\r\nk: caf\xc3\xa9\r\n",
    b"k: \xff\xfe\r\n\xffk: v\r\n",
    b"k: a:b:c\r\nk: again\r\n",
    b"k\x1c: v\r\nj: \x1cv\x1c\r\n",
    b"k: v\nwith a bare LF\r\n",
    b"k: \xe2\x82\r\nj: \xe2\x82\xac\r\n",
]
PIECES = [b"a", b"Z", b"-", b":", b" ", b"\t", b"\r\n", b"\r", b"\n", b"\x0b", b"\x1c", b"\x85",
          b"\xc3\xa9", b"\xe2\x82", b"\xff", b"0", b"=", b"\x7f"]  # fmt: skip


@pytest.mark.parametrize("raw", [ENVELOPE, *ODD])
def test_headers_parse_as_nats_py_parses_them(raw: bytes) -> None:
    assert NexusClient._parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_random_header_blocks_parse_as_nats_py_parses_them() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        raw = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 24)))
        for block in (raw, raw + b"\r\n\r\n", b"k: " + raw + b"\r\nj: v\r\n\r\n"):
            assert NexusClient._parse_header_lines(block) == Client._parse_header_lines(block)


def test_the_names_remembered_are_bounded() -> None:
    for i in range(2 * nexus_nats._KEYS_LIMIT):
        block = f"name-{i}: v\r\nbad name {i}: w\r\n".encode()
        assert NexusClient._parse_header_lines(block) == Client._parse_header_lines(block)
    assert len(nexus_nats._KEYS) == nexus_nats._KEYS_LIMIT
