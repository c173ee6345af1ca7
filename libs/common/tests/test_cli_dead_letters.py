"""`nexus dead-letters list / show / replay` against a real NATS server."""

from __future__ import annotations

import asyncio
import re

import pytest

from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.common.cli import main
from nexus.common.events import METRICS, REPLAYED_FROM_HEADER, EventBus
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.common.testing.events import Recorder
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def nats_url(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NEXUS_NATS_URL", nats_server.url)
    return nats_server.url


def dead_letter(url: str, consumer_name: str, point_id: str) -> str:
    """Publishes a metric point on `nexus.metrics.<consumer_name>` that the consumer fails on
    until it is a dead letter; its event id."""

    async def run() -> str:
        nc = await connect(NexusSettings(nats_url=url), "test")
        bus = EventBus(nc, "nexus/test")
        await bus.ensure_streams(METRICS)
        failing = Recorder[MetricPoint](fail=lambda _: True)
        subject = f"nexus.metrics.{consumer_name}"
        consumer = await bus.consume(
            subject, MetricPoint, failing, durable=consumer_name, stream=METRICS.name,
            max_deliver=1,
        )  # fmt: skip
        event_id = await bus.publish(subject, MetricPoint(id=point_id, values=[1.5]))
        await eventually(lambda: consumer.terminated == 1)
        await consumer.stop()
        await nc.close()
        return event_id

    return asyncio.run(run())


def replayed_headers(url: str, seq: int) -> dict[str, str]:
    async def run() -> dict[str, str]:
        nc = await connect(NexusSettings(nats_url=url), "test")
        msg = await nc.jetstream().get_msg(METRICS.name, seq)
        await nc.close()
        return dict(msg.headers or {})

    return asyncio.run(run())


def test_list_show_replay(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    event_id = dead_letter(nats_url, "one", "p1")
    assert main(["dead-letters", "list", "--consumer", "one"]) == 0
    listed = capsys.readouterr().out
    row = re.search(rf"^(\d+) .* one +failed +1 +nexus\.metrics\.one +{event_id} ", listed, re.M)
    assert row is not None, listed
    assert "RuntimeError: handler failed on purpose" in listed
    seq = row.group(1)

    assert main(["dead-letters", "show", seq]) == 0
    shown = capsys.readouterr().out
    assert f"dead letter {seq}" in shown
    assert "reason:      failed" in shown
    assert "ce-type: nexus.metrics.v1.MetricPoint" in shown
    assert '"id": "p1"' in shown  # the payload, decoded as its ce-type
    assert '"values": [\n' in shown

    assert main(["dead-letters", "replay", seq]) == 0
    replayed = re.search(r"as METRICS #(\d+)", capsys.readouterr().out)
    assert replayed is not None
    headers = replayed_headers(nats_url, int(replayed.group(1)))
    assert (headers["ce-id"], headers[REPLAYED_FROM_HEADER]) == (event_id, f"DEAD_LETTERS:{seq}")
    assert main(["dead-letters", "list", "--consumer", "one"]) == 0
    assert "no dead letters" in capsys.readouterr().out


def test_replay_all_of_a_consumer(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    dead_letter(nats_url, "other", "x")
    for point_id in ("a", "b"):
        dead_letter(nats_url, "two", point_id)
    assert main(["dead-letters", "replay", "--all", "--consumer", "two"]) == 0
    assert capsys.readouterr().out.count("replayed dead letter") == 2
    assert main(["dead-letters", "list"]) == 0
    listed = capsys.readouterr().out
    assert " other " in listed
    assert " two " not in listed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "999999"], "no dead letter 999999"),
        (["replay"], "give the sequences to replay, or --all"),
        (["replay", "1", "--all"], "give the sequences to replay, or --all"),
        (["list", "--consumer", "a.b"], "not a consumer name"),
    ],
)
def test_errors_are_reported(
    nats_url: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["dead-letters", *argv]) == 1
    assert message in capsys.readouterr().err
