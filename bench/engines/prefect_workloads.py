# mypy: disable-error-code="untyped-decorator"
"""The orchestrator bench's workloads on Prefect 3 (its ephemeral local server), in Prefect's own
venv.

Run by bench/orchestrator_throughput.py as `python prefect_workloads.py '{"steps":…, "runs":…,
"events":…}'` with PREFECT_HOME set to a scratch folder; prints one line of JSON: the raw figures
the bench summarises the same way for every engine. A trivial step is a task that returns its
argument; concurrent runs are async flows gathered at once; an "event" is an in-process call of a
one-step flow (Prefect takes no NATS events).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict
from typing import Any

from prefect import flow, task  # type: ignore[import-not-found, unused-ignore]
from prefect.runtime import flow_run  # type: ignore[import-not-found, unused-ignore]

STARTS: dict[str, list[float]] = defaultdict(list)
ENDS: dict[str, float] = {}


@task
async def step(i: int) -> int:
    STARTS[str(flow_run.id)].append(time.time())
    return i


@flow
async def sequence(count: int) -> str:
    for i in range(count):
        await step(i)
    run_id = str(flow_run.id)
    ENDS[run_id] = time.time()
    return run_id


async def long(steps: int) -> dict[str, Any]:
    began = time.perf_counter()
    await sequence(steps)
    return {"steps": steps, "wall_s": time.perf_counter() - began}


async def concurrent(runs: int) -> dict[str, Any]:
    began = time.perf_counter()
    ids = await asyncio.gather(*(sequence(5) for _ in range(runs)))
    wall = time.perf_counter() - began
    return {"wall_s": wall, "runs": [{"step_starts": STARTS[i], "end": ENDS[i]} for i in ids]}


async def events(count: int) -> dict[str, Any]:
    latencies = []
    for _ in range(count):
        sent = time.time()
        run_id = await sequence(1)
        latencies.append(STARTS[run_id][0] - sent)
    return {"latencies_s": latencies}


async def workloads(args: dict[str, int]) -> dict[str, Any]:
    await sequence(1)  # warm up (starts the ephemeral server)
    raw: dict[str, Any] = {"long": await long(args["steps"])}
    try:
        raw["concurrent"] = await concurrent(args["runs"])
    except Exception as err:  # its local server gives up under many runs at once: a result too
        raw["failed"] = {"concurrent": f"{type(err).__name__}: {str(err)[:200]}"}
    if args["events"]:
        raw["events"] = await events(args["events"])
    return raw


if __name__ == "__main__":
    print(json.dumps(asyncio.run(workloads(json.loads(sys.argv[1])))))
