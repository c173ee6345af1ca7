"""Event triggers of the orchestrator: how soon an event starts its run, and how fast a burst of
events becomes finished runs.

One process starts an embedded nats-server and one orchestrator replica (auth off), registers a
workflow whose event trigger passes every event (a CEL condition) into a one-step run, then:

- latency: `--events` events published one at a time (20 ms apart); per event, the time from
  the publish to the run's creation and to its first step's start (both by the same clock);
- burst: `--burst` events published at once; the time from the first publish until every run
  is done, and runs per second.

Usage: python bench/orchestrator_triggers.py [--events 200] [--burst 1000]
Writes bench/results/orchestrator_triggers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from nexus.api.anomaly.v1 import events_pb2
from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.events import DAY_S, GIB, EventBus, Stream
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.orchestrator.server import create
from nexus.orchestrator.settings import OrchestratorSettings

RESULTS = Path(__file__).parent / "results" / "orchestrator_triggers.json"
SUBJECT = "nexus.benchtrig.detected"
STREAM = Stream("BENCHTRIG", ("nexus.benchtrig.>",), max_age_s=DAY_S, max_bytes=GIB)
WORKFLOW = f"""\
name: bench-trigger
inputs: {{source: {{type: string}}}}
triggers:
  - id: e
    event: {{subject: {SUBJECT}, type: nexus.anomaly.v1.AnomalyDetected,
            condition: 'event.data.score > 0.5'}}
    inputs: {{source: '${{event.data.source}}'}}
steps:
  - id: route
    switch: {{cases: [{{when: 'inputs.source != ""', steps: []}}]}}
"""


async def publish(bus: EventBus, event_id: str) -> None:
    message = events_pb2.AnomalyDetected(source=event_id, score=0.9)
    await bus.publish(SUBJECT, message, event_id=event_id)


async def all_runs(stub: pb_grpc.OrchestratorServiceStub) -> list[pb.Run]:
    runs: list[pb.Run] = []
    token = ""
    while True:
        reply = await stub.ListRuns(
            pb.ListRunsRequest(workflow="bench-trigger", page_size=500, page_token=token)
        )
        runs.extend(reply.runs)
        token = reply.next_page_token
        if not token:
            return runs


async def finished(stub: pb_grpc.OrchestratorServiceStub, count: int) -> list[pb.Run]:
    while True:
        runs = await all_runs(stub)
        if len(runs) >= count and all(run.done for run in runs):
            return runs
        await asyncio.sleep(0.05)


def seconds(stamp: Any) -> float:
    return float(stamp.ToNanoseconds()) / 1e9


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100)
    return {"p50": round(cuts[49], 2), "p99": round(cuts[98], 2)}


async def latency(
    bus: EventBus, stub: pb_grpc.OrchestratorServiceStub, events: int
) -> dict[str, Any]:
    sent: dict[str, float] = {}
    for n in range(events):
        sent[f"one-{n}"] = time.time()
        await publish(bus, f"one-{n}")
        await asyncio.sleep(0.02)
    runs = await finished(stub, events)
    to_run, to_step = [], []
    for run in runs:
        at = sent[run.trigger.detail.removeprefix("e:")]
        history = await stub.GetRunHistory(pb.GetRunHistoryRequest(run_id=run.run_id))
        to_run.append((seconds(run.create_time) - at) * 1000)
        to_step.append((seconds(history.steps[0].start_time) - at) * 1000)
    return {
        "events": events,
        "event_to_run_ms": percentiles(to_run),
        "event_to_first_step_ms": percentiles(to_step),
    }


async def burst(
    bus: EventBus, stub: pb_grpc.OrchestratorServiceStub, events: int
) -> dict[str, Any]:
    before = len(await all_runs(stub))
    began = time.time()
    await asyncio.gather(*(publish(bus, f"burst-{n}") for n in range(events)))
    published = time.time() - began
    runs = await finished(stub, before + events)
    ends = [seconds(r.end_time) for r in runs if r.trigger.detail.startswith("e:burst-")]
    elapsed = max(ends) - began
    return {
        "events": events,
        "publish_s": round(published, 2),
        "all_runs_done_s": round(elapsed, 2),
        "runs_per_s": round(events / elapsed),
    }


async def run(events: int, burst_events: int) -> dict[str, Any]:
    server = NatsServer(Path(tempfile.mkdtemp()) / "nats")
    server.start()
    common = NexusSettings(
        nats_url=server.url, registry_signing_key="k", auth_enabled=False, log_level="WARNING"
    )
    host = await create(OrchestratorSettings(grpc_port=0), common)
    nc = await connect(common, "bench")
    try:
        bus = EventBus(nc, "bench")
        await bus.ensure_streams(STREAM)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=WORKFLOW))
            await asyncio.sleep(0.5)  # every replica binds the trigger's consumer
            return {
                "latency": await latency(bus, stub, events),
                "burst": await burst(bus, stub, burst_events),
            }
    finally:
        await nc.drain()
        await host.stop()
        server.stop()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200, help="events one at a time")
    parser.add_argument("--burst", type=int, default=1000, help="events at once")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    report = json.dumps(asyncio.run(run(args.events, args.burst)), indent=2) + "\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(report)
    print(report, end="")


if __name__ == "__main__":
    main()
