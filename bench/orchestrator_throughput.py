"""Orchestrator throughput: Nexus beside DBOS (SQLite) and Prefect 3 (local), one run, one machine.

Workloads, the same for every engine:

- long: one sequential workflow of `--steps` (1,000) trivial steps: durable steps per second;
- concurrent: `--runs` (200) five-step runs started at once: runs per second (and steps per
  second, five a run), and the latency of a step (from one step's start to the next one's, or to
  the run's end for the last: what one durable step adds to a run), p50 / p99;
- many (Nexus only): `--many` (4) sequential runs of `--steps` trivial steps at once: the durable
  steps per second of the platform when it has more than one run (a run's steps are ordered, so
  a second replica adds steps per second only over several runs);
- events: `--events` (200) events, one at a time, each starting a run: the time from the event
  to its run's first step, p50 / p99.

Nexus: embedded NATS and the orchestrator as separate processes, as `nexus up` runs them, auth on;
a trivial step is a `publish` step (a durable effect: the attempt is recorded, a JetStream publish
made, the result recorded). `nexus2` is the same with a second orchestrator replica on the same
NATS; the client spreads the runs over the replicas (run i started, watched and read through
replica i mod n), as a balancer in front of them would (what the second replica costs, and why:
docs/adr/0052, 0053 and 0056). Beside each Nexus workload's wall figures:
the CPU milliseconds per step of nats-server, each replica and the client (from /proc; on a
shared machine the figure that varies least) and the load average. The event is a JetStream
message on `nexus.bench.orchestrator.event` that a workflow's event trigger turns into a run; its
latency is read from the run's history (the step's start time) against the publish time, on the
same clock.

DBOS 3 (SQLite system database) and Prefect 3 (its ephemeral local server, PREFECT_HOME of its
own) run `bench/engines/*_workloads.py` in venvs of their own (`make bench-venvs`); a trivial step
is a step / task that returns its argument. An event for them is an in-process call that starts a
workflow (neither takes NATS events): their best case.

Usage: python -m bench.orchestrator_throughput [--steps 1000] [--runs 200] [--events 200]
       [--many 4] [--engines nexus,nexus2,dbos,prefect]
Writes bench/results/orchestrator_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.model_runtime import percentiles
from bench.proc_cpu import cpu_seconds
from nexus.api.orchestrator.v1 import events_pb2
from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.events import GIB, EventBus, Stream
from nexus.common.launcher import Child, Platform
from nexus.common.nats import connect
from nexus.common.natsserver import free_port
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "orchestrator_throughput.json"
ENGINES = ROOT / "bench" / "engines"
VENVS = {"dbos": ROOT / ".venv-bench-dbos", "prefect": ROOT / ".venv-bench-prefect"}
BENCH_STREAM = Stream(
    "BENCH_ORCHESTRATOR", ("nexus.bench.orchestrator.>",), max_age_s=3600, max_bytes=GIB
)
STEP_SUBJECT = "nexus.bench.orchestrator.step"
EVENT_SUBJECT = "nexus.bench.orchestrator.event"
EVENT_TYPE = "nexus.orchestrator.v1.RunAdvance"  # any message type of the API will do
FIVE = 5

Metadata = tuple[tuple[str, str], ...]


class CpuMeter:
    """CPU seconds each process (and this one, the client) used since the meter was made."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = self._now()

    def _now(self) -> dict[str, float]:
        return {"client": time.process_time(), **{n: cpu_seconds(p) for n, p in self.pids.items()}}

    def used(self) -> dict[str, float]:
        now = self._now()
        return {name: now[name] - self._start[name] for name in now}


def load() -> dict[str, float]:
    """The machine's load average over the last minute, and its cores (a shared machine)."""
    return {"load_1m": os.getloadavg()[0], "cores": float(os.cpu_count() or 0)}


def sequential(name: str, steps: int, trigger: str = "") -> str:
    """A workflow of `steps` publish steps, one after another (JSON is YAML)."""
    body = [
        {
            "id": f"s{i}",
            "publish": {"subject": STEP_SUBJECT, "type": EVENT_TYPE, "data": {"run_id": f"{i}"}},
        }
        for i in range(steps)
    ]
    definition: dict[str, Any] = {"name": name, "steps": body}
    if trigger:
        definition["triggers"] = [
            {"id": "on_event", "event": {"subject": trigger, "type": EVENT_TYPE}}
        ]
    return json.dumps(definition)


# Measures over the engines' raw figures (the same for every engine).


def step_latencies(runs: Sequence[dict[str, Any]]) -> list[float]:
    """From each run's step start times and end time: start to next start, last to the end."""
    latencies: list[float] = []
    for run in runs:
        marks = [*run["step_starts"], run["end"]]
        latencies.extend(b - a for a, b in itertools.pairwise(marks))
    return latencies


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    """The figures of one engine from its raw measurements."""
    out: dict[str, Any] = {}
    if "long" in raw:
        long = raw["long"]
        out["long_steps_per_s"] = long["steps"] / long["wall_s"]
        out["long_wall_s"] = long["wall_s"]
        out.update(_cpu_figures("long", long))
    if "concurrent" in raw:
        concurrent = raw["concurrent"]
        out["concurrent_runs_per_s"] = len(concurrent["runs"]) / concurrent["wall_s"]
        out["concurrent_steps_per_s"] = FIVE * out["concurrent_runs_per_s"]
        out["concurrent_step"] = percentiles(step_latencies(concurrent["runs"]))
        out.update(_cpu_figures("concurrent", concurrent))
    if "many" in raw:
        many = raw["many"]
        out["many_steps_per_s"] = many["steps"] / many["wall_s"]
        out["many_wall_s"] = many["wall_s"]
        out.update(_cpu_figures("many", many))
    if "events" in raw:
        out["event_to_first_step"] = percentiles(raw["events"]["latencies_s"])
    if "failed" in raw:
        out["failed"] = raw["failed"]
    return out


def _cpu_figures(workload: str, raw: dict[str, Any]) -> dict[str, Any]:
    """CPU milliseconds per step by process, their sum, and the load (when measured)."""
    if "cpu_s" not in raw:
        return {}
    steps = raw["steps"]
    by_process = {name: 1000 * seconds / steps for name, seconds in raw["cpu_s"].items()}
    return {
        f"{workload}_cpu_ms_per_step": by_process,
        f"{workload}_cpu_ms_per_step_total": sum(by_process.values()),
        f"{workload}_load_1m": raw["load_1m"],
    }


# Nexus.


class Nexus:
    """The platform's orchestrator (one replica or more) over the real API.

    With several replicas the client spreads the runs over them, as a load balancer in front of
    them or several clients would: run i is started, watched and read through replica i mod n
    (one client connection per replica), so no replica serves every RPC alone.
    """

    def __init__(self, platform: Platform, key: str) -> None:
        self.platform = platform
        self.key: Metadata = (("authorization", f"Bearer {key}"),)
        replicas = [c for c in platform.children if c.name.startswith("orchestrator")]
        self.channels = [grpc.aio.insecure_channel(f"127.0.0.1:{c.port}") for c in replicas]
        self.stubs = [pb_grpc.OrchestratorServiceStub(channel) for channel in self.channels]
        self.stub = self.stubs[0]
        self._via: dict[str, pb_grpc.OrchestratorServiceStub] = {}
        self._next = itertools.cycle(self.stubs)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    def processes(self) -> dict[str, int]:
        """The pids of NATS and of each replica, by name."""
        nats = self.platform.nats
        pids = {"nats-server": nats.pid or 0} if nats is not None else {}
        pids.update({c.name: c.process.pid for c in self.platform.children})
        return pids

    async def register(self, definition: str) -> None:
        await self.stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=definition), metadata=self.key
        )

    async def start(self, workflow: str) -> str:
        stub = next(self._next)
        reply = await stub.StartRun(
            pb.StartRunRequest(workflow=workflow, inputs=Struct()), metadata=self.key
        )
        self._via[reply.run.run_id] = stub
        return str(reply.run.run_id)

    async def finished(self, run_id: str) -> pb.Run:
        last: pb.Run | None = None
        stub = self._via.get(run_id, self.stub)
        async for change in stub.WatchRun(
            pb.WatchRunRequest(run_id=run_id), metadata=self.key, timeout=600
        ):
            last = change.run
        if last is None or last.state != pb.RUN_STATE_SUCCEEDED:
            raise RuntimeError(f"run {run_id} did not succeed: {last}")
        return last

    async def timeline(self, run_id: str) -> dict[str, Any]:
        """The run's step start times and its end (epoch seconds)."""
        history = await self._via.get(run_id, self.stub).GetRunHistory(
            pb.GetRunHistoryRequest(run_id=run_id, page_size=1000), metadata=self.key
        )
        steps = sorted(history.steps, key=lambda s: s.start_time.ToNanoseconds())
        starts = [s.start_time.ToNanoseconds() / 1e9 for s in steps]
        return {"step_starts": starts, "end": steps[-1].end_time.ToNanoseconds() / 1e9}

    async def long(self, steps: int) -> dict[str, Any]:
        name = f"long-{uuid.uuid4().hex[:6]}"
        await self.register(sequential(name, steps))
        cpu = CpuMeter(self.processes())
        began = time.perf_counter()
        await self.finished(await self.start(name))
        wall = time.perf_counter() - began
        return {"steps": steps, "wall_s": wall, "cpu_s": cpu.used(), **load()}

    async def concurrent(self, runs: int) -> dict[str, Any]:
        name = f"five-{uuid.uuid4().hex[:6]}"
        await self.register(sequential(name, FIVE))
        cpu = CpuMeter(self.processes())
        began = time.perf_counter()
        ids = await asyncio.gather(*(self.start(name) for _ in range(runs)))
        await asyncio.gather(*(self.finished(run_id) for run_id in ids))
        wall = time.perf_counter() - began
        used = cpu.used()
        timelines = [await self.timeline(run_id) for run_id in ids]
        return {"wall_s": wall, "runs": timelines, "cpu_s": used, "steps": runs * FIVE, **load()}

    async def many(self, runs: int, steps: int) -> dict[str, Any]:
        """`runs` sequential runs of `steps` steps at once (spread over the replicas)."""
        name = f"many-{uuid.uuid4().hex[:6]}"
        await self.register(sequential(name, steps))
        cpu = CpuMeter(self.processes())
        began = time.perf_counter()
        ids = await asyncio.gather(*(self.start(name) for _ in range(runs)))
        await asyncio.gather(*(self.finished(run_id) for run_id in ids))
        wall = time.perf_counter() - began
        return {"steps": runs * steps, "wall_s": wall, "cpu_s": cpu.used(), **load()}

    async def events(self, count: int, bus: EventBus) -> dict[str, Any]:
        name = f"evented-{uuid.uuid4().hex[:6]}"
        subject = f"{EVENT_SUBJECT}.{name}"
        await self.register(sequential(name, 1, trigger=subject))
        latencies = []
        for i in range(count):
            published = time.time()
            await bus.publish(subject, events_pb2.RunAdvance(run_id=str(i)), event_id=f"{name}-{i}")
            run = await self._run_since(name, published)
            latencies.append((await self.timeline(run))["step_starts"][0] - published)
        return {"latencies_s": latencies}

    async def _run_since(self, workflow: str, since: float) -> str:
        """The run of `workflow` created after `since` (the one an event started), finished."""
        start = Timestamp()
        start.FromNanoseconds(int(since * 1e9))
        request = pb.ListRunsRequest(workflow=workflow, start_time_from=start, page_size=10)
        while True:
            reply = await self.stub.ListRuns(request, metadata=self.key)
            if reply.runs:
                await self.finished(reply.runs[0].run_id)
                return str(reply.runs[0].run_id)
            await asyncio.sleep(0.001)


def spawn_replica(platform: Platform) -> Child:
    """A second orchestrator process on the same NATS (same settings, its own port)."""
    first = next(c for c in platform.children if c.name == "orchestrator")
    port = free_port()
    env = {**first.env, "NEXUS_ORCHESTRATOR_GRPC_PORT": str(port)}
    log_path = platform.data_dir / "logs" / "orchestrator-2.log"
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "nexus.orchestrator"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child = Child("orchestrator-2", port, process, log_path, env)
    platform.children.append(child)
    return child


async def add_replica(platform: Platform) -> Child:
    """Starts a second replica and waits until it serves."""
    child = spawn_replica(platform)
    port = child.port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return child
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the second orchestrator replica did not start")


async def nexus(args: argparse.Namespace, replicas: int) -> dict[str, Any]:
    """Raw figures of the Nexus workloads with `replicas` orchestrator processes."""
    with tempfile.TemporaryDirectory() as tmp:
        platform = Platform(Path(tmp), nats_port=0, gateway_port=0, services=["orchestrator"])
        try:
            nats_url = await platform.start_nats()
            await platform.start_services()
            if replicas > 1:
                await add_replica(platform)
            settings = NexusSettings(nats_url=nats_url)
            key = await make_key(settings, "*")
            nc = await connect(settings, "bench")
            bus = EventBus(nc, "bench")
            await bus.ensure_streams(BENCH_STREAM)
            engine = Nexus(platform, key)
            raw = {
                "long": await engine.long(args.steps),
                "concurrent": await engine.concurrent(args.runs),
            }
            if args.many:
                raw["many"] = await engine.many(args.many, args.steps)
            if args.events:
                raw["events"] = await engine.events(args.events, bus)
            await engine.close()
            await nc.close()
            return raw
        finally:
            platform.stop()


# DBOS and Prefect, each in its own venv.


def other(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """Raw figures of DBOS or Prefect, from their workload script in their venv."""
    python = VENVS[engine] / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} is missing: run `make bench-venvs` first")
    with tempfile.TemporaryDirectory() as tmp:
        # Prefect's telemetry service writes to its SQLite database while the ephemeral server
        # starts, and on a slow machine that write met the server's own ("database is locked"):
        # off, as it would be on a machine that cannot reach the outside anyway.
        env = {
            **os.environ,
            "PREFECT_HOME": tmp,
            "BENCH_DIR": tmp,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # Its ephemeral server takes longer than the default 20 s to start on a slow machine.
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        }
        done = subprocess.run(
            [
                str(python),
                str(ENGINES / f"{engine}_workloads.py"),
                json.dumps({"steps": args.steps, "runs": args.runs, "events": args.events}),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{engine} failed: {_last_error(done.stderr)}\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _last_error(stderr: str) -> str:
    """The last line of a traceback's exception in `stderr` (else its last line)."""
    lines = stderr.strip().splitlines() or [""]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (errors or lines)[-1][:200]


def table(figures: dict[str, dict[str, Any]]) -> None:
    """Prints one row per engine."""
    print(
        f"{'engine':<9} {'long steps/s':>12} {'runs/s':>8} {'steps/s':>8} {'many steps/s':>12} "
        f"{'step p50':>9} {'step p99':>9} {'event p50':>10} {'event p99':>10}   (ms)"
    )
    nan = float("nan")
    for name, f in figures.items():
        step = f.get("concurrent_step", {})
        event = f.get("event_to_first_step", {})
        print(
            f"{name:<9} {f.get('long_steps_per_s', nan):>12.1f} "
            f"{f.get('concurrent_runs_per_s', nan):>8.1f} "
            f"{f.get('concurrent_steps_per_s', nan):>8.1f} {f.get('many_steps_per_s', nan):>12.1f} "
            f"{step.get('p50_ms', nan):>9.2f} "
            f"{step.get('p99_ms', nan):>9.2f} {event.get('p50_ms', nan):>10.2f} "
            f"{event.get('p99_ms', nan):>10.2f}"
        )
        for workload, why in f.get("failed", {}).items():
            print(f"{'':<9} {workload} failed: {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--many", type=int, default=4, help="runs of --steps at once (0: none)")
    parser.add_argument("--engines", default="nexus,nexus2,dbos,prefect")
    args = parser.parse_args()
    figures: dict[str, dict[str, Any]] = {}
    for engine in args.engines.split(","):
        print(f"-- {engine}", flush=True)
        try:
            if engine.startswith("nexus"):
                raw = asyncio.run(nexus(args, replicas=2 if engine == "nexus2" else 1))
            else:
                raw = other(engine, args)
        except RuntimeError as err:  # one engine failing leaves the others' figures
            print(err, file=sys.stderr, flush=True)
            raw = {"failed": {"all": str(err).splitlines()[0][:200]}}
        figures[engine] = summary(raw)
        print(json.dumps(figures[engine]), flush=True)
    if "long_steps_per_s" in figures.get("dbos", {}):
        for name in ("nexus", "nexus2"):
            if "long_steps_per_s" in figures.get(name, {}):
                ratio = figures[name]["long_steps_per_s"] / figures["dbos"]["long_steps_per_s"]
                figures[name]["long_ratio_to_dbos"] = ratio
    table(figures)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "figures": figures}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
