"""The platform under fire: `nexus up` (NATS, anomaly, llm, the gateway) serves clients that
train, score, publish metric points, upsert and search documents, while NATS, each service and
the gateway are killed with SIGKILL one after the other. Then everything is counted: every
accepted write is there, once; every point JetStream acknowledged is scored, once; every request
was answered by its deadline; only 503/504 came back, and only while a part was down; the
platform was ready again by itself after each fault.

The load runs once for the module; each test checks one promise. The figures (requests by
status, faults and recovery times, events in and out, 5xx) are printed (`-s` shows them) and
written to `figures.json` in the module's tmp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import httpx
import pytest
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext

from nexus.anomaly.settings import AnomalySettings
from nexus.anomaly.streaming import DETECTED_SUBJECT, STREAM
from nexus.api.anomaly.v1.events_pb2 import AnomalyDetected
from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.common.errors import Unavailable
from nexus.common.events import METRICS, EventBus
from nexus.common.nats import close, connect
from nexus.common.settings import NexusSettings
from nexus.common.testing.launcher import NexusUp
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.timeout(420)

FAULTS = ("nats-server", "anomaly", "llm", "gateway")
"""The children killed, in this order, each once the platform is ready again."""
WORKERS = 4
"""Clients that each train, score, upsert and search in a loop."""
SOURCES = ("faults-a", "faults-b")
BOUND = "faults-bound"
"""The detector the sources are bound to: it scores every published point."""
COLLECTION = "faults-docs"
SPIKE_EVERY = 5
"""Every 5th point of a source is a spike, which the bound detector flags."""
PUBLISH_PAUSE_S = 0.05
STEADY_S = 5.0
"""Load before the first fault, between faults, and after the last one."""
DEADLINE_S = 20.0
"""Every request's deadline (`X-Nexus-Timeout`)."""
HANG_S = DEADLINE_S + 5.0
"""A request without an answer this long after it was sent hangs."""
GIVE_UP_S = 90.0
"""A write retried this long is given up (its idempotency lease is 30 s)."""
RECOVERY_S = 90.0
"""A fault after which the platform is not ready in this long is not recovered."""
DRAIN_S = 90.0
"""How long the stream consumer gets to score what was published, after the load."""

GRID = [[x / 7, y / 7] for x in range(8) for y in range(8)]
"""Normal points: a grid over the unit square."""
SPIKE = [50.0, 50.0]
TOPICS = (
    "the cat sat on the mat",
    "quarterly revenue rose by ten percent",
    "heavy rain is expected tomorrow",
    "the stock market fell sharply",
    "a new vaccine trial began in spring",
)

OK = "200"
HUNG = "no answer by the deadline"
LOST = "connection lost"
FAULT_STATUSES = frozenset({"503", "504"})


@dataclass
class Attempt:
    """One HTTP request and what came back (a status code, LOST or HUNG)."""

    start: float
    end: float
    outcome: str


@dataclass
class Call:
    """One logical call: a single attempt, or a write retried with the same idempotency key."""

    op: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def span(self) -> tuple[float, float]:
        """From its first request to its last answer."""
        return self.attempts[0].start, self.attempts[-1].end


@dataclass
class Ledger:
    """What the clients sent and what they were told."""

    calls: list[Call] = field(default_factory=list)
    trained: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Idempotency key of each training answered 200 -> (detector, version)."""
    documents: set[str] = field(default_factory=set)
    """Ids of the documents whose upsert was answered 200."""
    given_up: Counter[str] = field(default_factory=Counter)
    """Writes (by operation) retried until GIVE_UP_S without an answer."""
    published: dict[str, bool] = field(default_factory=dict)
    """Id of each point JetStream acknowledged -> whether it is a spike."""
    unacknowledged: set[str] = field(default_factory=set)
    """Points whose publish failed: they may or may not be in the stream."""
    wrong: list[str] = field(default_factory=list)
    """Answers 200 whose content was wrong."""

    def new_call(self, op: str) -> Call:
        call = Call(op)
        self.calls.append(call)
        return call


@dataclass
class Fault:
    """A child killed with SIGKILL, and when the platform was ready again (None: never)."""

    child: str
    killed_at: float
    ready_at: float | None = None

    @property
    def recovery_s(self) -> float | None:
        return None if self.ready_at is None else round(self.ready_at - self.killed_at, 2)

    def overlaps(self, start: float, end: float) -> bool:
        """Whether [start, end] meets the time the child was down."""
        return start <= (self.ready_at or float("inf")) and end >= self.killed_at


@dataclass
class Drain:
    """The stream consumer once the load stopped."""

    seconds: float | None
    """Until nothing was pending or unacknowledged; None: not in DRAIN_S."""
    points: int
    """Points in the METRICS stream."""
    deliveries: int
    """Points the consumer delivered, redeliveries included."""
    ack_pending: int
    pending: int


@dataclass
class Outcome:
    """Everything counted after the load."""

    ledger: Ledger
    faults: list[Fault]
    drain: Drain
    detected: Counter[str]
    """Point id -> anomalies the bound detector published for it."""
    versions: dict[str, list[str]]
    """Each worker's detector -> its versions in the registry."""
    found: set[str]
    """Accepted documents that a search finds."""
    document_count: int
    duration_s: float

    def attempts(self) -> Iterator[tuple[Call, Attempt]]:
        """Every request, with the call it belongs to."""
        for call in self.ledger.calls:
            for attempt in call.attempts:
                yield call, attempt

    def excused(self, call: Call, outcome: str) -> bool:
        """Whether a fault explains an answer other than 200: a 503 or 504 in a call (any of
        its retries) while a part was down, a lost connection while the gateway was."""
        if outcome in FAULT_STATUSES:
            down = self.faults
        elif outcome == LOST:
            down = [fault for fault in self.faults if fault.child == "gateway"]
        else:
            return False
        return any(fault.overlaps(*call.span) for fault in down)

    def unexplained(self) -> Counter[str]:
        """Answers other than 200 that no fault explains, by operation and outcome."""
        return Counter(
            f"{call.op} {attempt.outcome}"
            for call, attempt in self.attempts()
            if attempt.outcome not in (OK, HUNG) and not self.excused(call, attempt.outcome)
        )


def figures(outcome: Outcome) -> dict[str, Any]:
    """The counts the closing note gives."""
    answers = Counter(attempt.outcome for _, attempt in outcome.attempts())
    return {
        "duration_s": round(outcome.duration_s, 1),
        "requests": _request_figures(outcome, answers),
        "faults": [
            {"child": fault.child, "recovery_s": fault.recovery_s} for fault in outcome.faults
        ],
        "writes": _write_figures(outcome),
        "events": _event_figures(outcome),
        "5xx": {
            "seen": {k: v for k, v in sorted(answers.items()) if k.startswith("5")},
            "unexplained": dict(outcome.unexplained()),
        },
        "wrong_answers": len(outcome.ledger.wrong),
    }


def _request_figures(outcome: Outcome, answers: Counter[str]) -> dict[str, Any]:
    by_op: dict[str, Counter[str]] = {}
    for call, attempt in outcome.attempts():
        by_op.setdefault(call.op, Counter())[attempt.outcome] += 1
    return {
        "sent": sum(answers.values()),
        "answered": {k: v for k, v in sorted(answers.items()) if k != HUNG},
        "hung": answers[HUNG],
        "answered_by_operation": {op: dict(n) for op, n in sorted(by_op.items())},
        "calls": dict(Counter(call.op for call in outcome.ledger.calls)),
        "writes_given_up": dict(outcome.ledger.given_up),
    }


def _write_figures(outcome: Outcome) -> dict[str, int]:
    return {
        "trainings_accepted": len(outcome.ledger.trained),
        "versions_in_registry": sum(len(v) for v in outcome.versions.values()),
        "documents_accepted": len(outcome.ledger.documents),
        "documents_found": len(outcome.found),
        "documents_in_collection": outcome.document_count,
    }


def _event_figures(outcome: Outcome) -> dict[str, Any]:
    published = outcome.ledger.published
    spikes = [pid for pid, spike in published.items() if spike]
    return {
        "published_acknowledged": len(published),
        "published_unacknowledged": len(outcome.ledger.unacknowledged),
        "spikes_acknowledged": len(spikes),
        "spikes_detected_once": sum(outcome.detected[pid] == 1 for pid in spikes),
        "detections_of_bound_detector": sum(outcome.detected.values()),
        "points_in_stream": outcome.drain.points,
        "deliveries_to_the_consumer": outcome.drain.deliveries,
        "drain_s": outcome.drain.seconds,
    }


# The platform ------------------------------------------------------------------------------


@dataclass
class Platform:
    """`nexus up` with anomaly and llm, its admin key and a key for the load."""

    up: NexusUp
    url: str
    admin: str
    key: str


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("platform") / "data"
    args = ["--services", "anomaly,llm", "--nats-port", "0", "--port", "0"]
    up = NexusUp(data_dir, args)
    try:
        url, admin = up.wait_up()
        assert admin is not None
        scopes = ("anomaly:*", "models:read", "llm:invoke")
        key = up.create_key("faults", *scopes, rate_limit_per_minute=1_000_000)
        yield Platform(up, url, admin, key)
        assert up.interrupt() == 0, up.output
    finally:
        up.kill()


@pytest.fixture(scope="module")
def outcome(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The load under faults, run once, counted."""
    result = asyncio.run(under_faults(platform))
    counts = figures(result)
    path = tmp_path_factory.mktemp("figures") / "figures.json"
    path.write_text(json.dumps(counts, indent=2))
    restarts = re.findall(r"^\S+ \S+ (?:exited|is back).*$", platform.up.output, re.MULTILINE)
    print("\n".join(["", *restarts, f"figures ({path}):", json.dumps(counts, indent=2)]))
    return result


# The tests ---------------------------------------------------------------------------------


def test_the_platform_is_ready_again_by_itself_after_each_fault(outcome: Outcome) -> None:
    assert [fault.child for fault in outcome.faults] == list(FAULTS)
    assert all(fault.ready_at is not None for fault in outcome.faults), figures(outcome)["faults"]


def test_every_accepted_training_is_in_the_registry_once(outcome: Outcome) -> None:
    ledger = outcome.ledger
    answered = Counter(ledger.trained.values())
    assert answered, "no training was accepted"
    assert max(answered.values()) == 1, "two keys were answered with the same version"
    registered = {(name, v) for name, versions in outcome.versions.items() for v in versions}
    assert set(answered) <= registered, f"lost: {set(answered) - registered}"
    ghosts = registered - set(answered)
    assert len(ghosts) <= ledger.given_up["train"], f"versions nobody was told of: {ghosts}"


def test_every_accepted_document_is_found(outcome: Outcome) -> None:
    ledger = outcome.ledger
    assert ledger.documents, "no document was accepted"
    assert ledger.documents == outcome.found, f"lost: {ledger.documents - outcome.found}"
    extra = outcome.document_count - len(ledger.documents)
    assert 0 <= extra <= ledger.given_up["upsert"]


def test_every_acknowledged_point_is_scored_once(outcome: Outcome) -> None:
    published = outcome.ledger.published
    spikes = {pid for pid, spike in published.items() if spike}
    assert outcome.drain.seconds is not None, f"points left unscored: {outcome.drain}"
    assert spikes, "no spike was acknowledged"
    missed = {pid for pid in spikes if outcome.detected[pid] == 0}
    twice = {pid: n for pid, n in outcome.detected.items() if n > 1}
    unknown = set(outcome.detected) - set(published) - outcome.ledger.unacknowledged
    assert not missed, f"{len(missed)} of {len(spikes)} spikes never detected: {sorted(missed)}"
    assert not twice, f"points detected more than once: {twice}"
    assert not unknown, f"anomalies of points never published: {unknown}"


def test_every_request_is_answered_by_its_deadline(outcome: Outcome) -> None:
    hung = [c.op for c, a in outcome.attempts() if a.outcome == HUNG]
    assert not hung, f"{len(hung)} requests not answered in {HANG_S}s: {Counter(hung)}"
    assert not outcome.ledger.given_up, f"writes given up: {outcome.ledger.given_up}"


def test_only_a_fault_explains_an_error(outcome: Outcome) -> None:
    """No 5xx but 503 and 504, and those only while a part was down; no other failure."""
    assert not outcome.unexplained(), outcome.unexplained()
    assert not outcome.ledger.wrong, outcome.ledger.wrong[:10]


# The run -----------------------------------------------------------------------------------


async def under_faults(platform: Platform) -> Outcome:
    """Prepares the platform, runs the load while injecting the faults, then counts."""
    ledger = Ledger()
    nc = await connect(NexusSettings(nats_url=platform.up.run_info().nats_url), "faults")
    admin = httpx.AsyncClient(base_url=platform.url, headers=_auth(platform.admin), timeout=60)
    load = httpx.AsyncClient(
        base_url=platform.url,
        headers=_auth(platform.key),
        limits=httpx.Limits(max_connections=WORKERS * 2),
        timeout=60,
    )
    try:
        await prepare(admin)
        started = time.monotonic()
        faults = await with_load(
            Clients(load, ledger), EventBus(nc, "faults"), inject_faults(platform.up, admin)
        )
        duration = time.monotonic() - started
        return await count(load, nc.jetstream(), ledger, faults, duration)
    finally:
        await load.aclose()
        await admin.aclose()
        await close(nc)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def prepare(admin: httpx.AsyncClient) -> None:
    """The bound detector (promoted) and its sources, and the collection."""
    body = {"algorithm": "ALGORITHM_ISOLATION_FOREST", "points": _points(GRID)}
    for path, request in [
        (f"/v1/anomaly/detectors/{BOUND}:train", {**body, "promote_to": "production"}),
        *((f"/v1/anomaly/sources/{source}", {"detector": BOUND}) for source in SOURCES),
        ("/v1/llm/collections", {"name": COLLECTION}),
    ]:
        method = "PUT" if "/sources/" in path else "POST"
        reply = await admin.request(method, path, json=request)
        assert reply.status_code == 200, reply.text


def _points(rows: list[list[float]]) -> list[dict[str, list[float]]]:
    return [{"values": row} for row in rows]


async def with_load(clients: Clients, bus: EventBus, faults: Awaitable[list[Fault]]) -> list[Fault]:
    """Runs the workers and the publisher until `faults` is done; its result."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker(clients, n, stop)) for n in range(WORKERS)]
    tasks.append(asyncio.create_task(publish_points(bus, clients.ledger, stop)))
    try:
        return await faults
    finally:
        stop.set()
        await asyncio.gather(*tasks)


# The clients -------------------------------------------------------------------------------


class Clients:
    """The load's requests: each with a deadline, each recorded in the ledger."""

    def __init__(self, http: httpx.AsyncClient, ledger: Ledger) -> None:
        self.http = http
        self.ledger = ledger

    async def once(self, op: str, path: str, body: dict[str, Any]) -> httpx.Response | None:
        """One request; its answer (None: none came)."""
        return await self._attempt(self.ledger.new_call(op), path, body, {})

    async def write(
        self, op: str, path: str, body: dict[str, Any], key: str
    ) -> httpx.Response | None:
        """A write with an idempotency key, retried with the same key while the answer says
        "not now" (503, 504, a lost connection); the last answer (None: given up)."""
        call, give_up_at = self.ledger.new_call(op), time.monotonic() + GIVE_UP_S
        pause_s = 0.2
        while True:
            reply = await self._attempt(call, path, body, {"Idempotency-Key": key})
            if reply is not None and str(reply.status_code) not in FAULT_STATUSES:
                return reply
            if time.monotonic() > give_up_at:
                self.ledger.given_up[op] += 1
                return None
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 2.0)

    async def _attempt(
        self, call: Call, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response | None:
        headers = {"X-Nexus-Timeout": str(DEADLINE_S), **headers}
        start = time.monotonic()
        reply: httpx.Response | None = None
        try:
            reply = await self.http.post(path, json=body, headers=headers, timeout=HANG_S)
            outcome = str(reply.status_code)
        except httpx.TimeoutException:
            outcome = HUNG
        except httpx.TransportError:
            outcome = LOST
        call.attempts.append(Attempt(start, time.monotonic(), outcome))
        return reply


async def worker(clients: Clients, n: int, stop: asyncio.Event) -> None:
    """Trains its own detector, scores with the bound one, upserts a document, searches."""
    steps: list[Callable[[Clients, int, int], Awaitable[bool]]] = [train, score, upsert, search]
    for i in itertools.count():
        for step in steps:
            if stop.is_set():
                return
            if not await step(clients, n, i):
                await asyncio.sleep(0.2)  # a part is down: do not spin


async def train(clients: Clients, n: int, i: int) -> bool:
    name, key = f"faults-w{n}", str(uuid.uuid4())
    body = {"algorithm": "ALGORITHM_ISOLATION_FOREST", "points": _points(GRID), "seed": i}
    reply = await clients.write("train", f"/v1/anomaly/detectors/{name}:train", body, key)
    if not _ok(reply):
        return False
    clients.ledger.trained[key] = (name, reply.json()["version"]["version"])
    return True


async def score(clients: Clients, n: int, i: int) -> bool:
    body = {"points": _points([[0.5, 0.5], SPIKE])}
    reply = await clients.once("score", f"/v1/anomaly/detectors/{BOUND}:score", body)
    if not _ok(reply):
        return False
    verdicts = [s["is_anomaly"] for s in reply.json()["scores"]]
    if verdicts != [False, True]:
        clients.ledger.wrong.append(f"score: {reply.text}")
    return True


async def upsert(clients: Clients, n: int, i: int) -> bool:
    doc_id = f"w{n}-{i}"
    text = f"note {i} of client {n}: {TOPICS[i % len(TOPICS)]}"
    body = {"documents": [{"id": doc_id, "text": text, "metadata": {"doc": doc_id}}]}
    path = f"/v1/llm/collections/{COLLECTION}/documents"
    reply = await clients.write("upsert", path, body, str(uuid.uuid4()))
    if not _ok(reply):
        return False
    clients.ledger.documents.add(doc_id)
    return True


async def search(clients: Clients, n: int, i: int) -> bool:
    body = {"query": TOPICS[(i + n) % len(TOPICS)], "top_k": 3}
    stored = bool(clients.ledger.documents)
    reply = await clients.once("search", f"/v1/llm/collections/{COLLECTION}:search", body)
    if not _ok(reply):
        return False
    if stored and not reply.json().get("hits"):
        clients.ledger.wrong.append(f"search found nothing: {reply.text}")
    return True


def _ok(reply: httpx.Response | None) -> TypeGuard[httpx.Response]:
    return reply is not None and reply.status_code == 200


async def publish_points(bus: EventBus, ledger: Ledger, stop: asyncio.Event) -> None:
    """Publishes a point to each source every PUBLISH_PAUSE_S, a spike every SPIKE_EVERY."""
    for i in itertools.count():
        if stop.is_set():
            return
        for source in SOURCES:
            point_id, spike = f"{source}-{i}", i % SPIKE_EVERY == 0
            values = SPIKE if spike else [0.5 + (i % 3 - 1) * 0.02, 0.5]
            point = MetricPoint(source=source, id=point_id, values=values)
            try:
                await bus.publish(f"nexus.metrics.{source}", point, event_id=point_id)
                ledger.published[point_id] = spike
            except Unavailable:
                ledger.unacknowledged.add(point_id)
        await asyncio.sleep(PUBLISH_PAUSE_S)


# The faults --------------------------------------------------------------------------------


async def inject_faults(up: NexusUp, http: httpx.AsyncClient) -> list[Fault]:
    """Kills each child in turn once the platform is ready; stops at one that does not
    recover."""
    faults: list[Fault] = []
    for child in FAULTS:
        await asyncio.sleep(STEADY_S)
        faults.append(fault := await kill_and_recover(up, http, child))
        if fault.ready_at is None:
            break
    await asyncio.sleep(STEADY_S)
    return faults


async def kill_and_recover(up: NexusUp, http: httpx.AsyncClient, child: str) -> Fault:
    """SIGKILLs `child`; waits until it runs again (a new pid) and `/readyz` says ready."""
    pid = up.pid_of(child)
    os.kill(pid, signal.SIGKILL)
    fault = Fault(child, time.monotonic())

    async def recovered() -> bool:
        return up.pid_of(child) != pid and await _ready(http)

    with contextlib.suppress(AssertionError):  # not in time: the tests say so
        await eventually(recovered, RECOVERY_S, poll_s=0.1)
        fault.ready_at = time.monotonic()
    return fault


async def _ready(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/readyz", timeout=2.5)).status_code == 200
    except httpx.TransportError:
        return False


# Counting ----------------------------------------------------------------------------------


async def count(
    http: httpx.AsyncClient,
    js: JetStreamContext,
    ledger: Ledger,
    faults: list[Fault],
    duration_s: float,
) -> Outcome:
    """Reads back what the load left: the registry, the collection, the anomalies."""
    drain = await drained(js)
    documents = sorted(ledger.documents)
    searching = asyncio.Semaphore(WORKERS)
    found = await asyncio.gather(*(_found(http, doc_id, searching) for doc_id in documents))
    collection = await http.get(f"/v1/llm/collections/{COLLECTION}")
    names = {name for name, _ in ledger.trained.values()} | {f"faults-w{n}" for n in range(WORKERS)}
    return Outcome(
        ledger=ledger,
        faults=faults,
        drain=drain,
        detected=await detections(js),
        versions={name: await _versions(http, name) for name in sorted(names)},
        found={doc_id for doc_id, ok in zip(documents, found, strict=True) if ok},
        document_count=int(collection.json()["document_count"]),
        duration_s=duration_s,
    )


async def drained(js: JetStreamContext) -> Drain:
    """Waits until the anomaly service's stream consumer holds nothing pending or unacked."""
    durable, started = AnomalySettings().stream_durable, time.monotonic()
    while True:
        info = await js.consumer_info(METRICS.name, durable)
        done = not info.num_pending and not info.num_ack_pending
        if done or time.monotonic() - started > DRAIN_S:
            stream = await js.stream_info(METRICS.name)
            return Drain(
                seconds=round(time.monotonic() - started, 2) if done else None,
                points=stream.state.messages,
                deliveries=info.delivered.consumer_seq or 0,
                ack_pending=info.num_ack_pending or 0,
                pending=info.num_pending or 0,
            )
        await asyncio.sleep(0.2)


async def detections(js: JetStreamContext) -> Counter[str]:
    """Point id -> anomalies of the bound detector in the ANOMALY stream."""
    sub = await js.pull_subscribe(DETECTED_SUBJECT, stream=STREAM.name)
    detected: Counter[str] = Counter()
    try:
        while True:
            try:
                msgs = await sub.fetch(500, timeout=2)
            except (NatsError, TimeoutError):  # nothing more
                return detected
            for msg in msgs:
                anomaly = AnomalyDetected.FromString(msg.data)
                if anomaly.detector == BOUND:
                    detected[anomaly.point_id] += 1
                await msg.ack()
    finally:
        await sub.unsubscribe()


async def _found(http: httpx.AsyncClient, doc_id: str, searching: asyncio.Semaphore) -> bool:
    body = {"query": doc_id, "top_k": 1, "filter": {"doc": doc_id}}
    async with searching:
        reply = await http.post(f"/v1/llm/collections/{COLLECTION}:search", json=body)
    assert reply.status_code == 200, reply.text
    return [hit["document"]["id"] for hit in reply.json().get("hits", [])] == [doc_id]


async def _versions(http: httpx.AsyncClient, name: str) -> list[str]:
    reply = await http.get(f"/v1/anomaly/models/{name}")
    if reply.status_code == 404:
        return []
    assert reply.status_code == 200, reply.text
    return [version["version"] for version in reply.json()["model"]["versions"]]
