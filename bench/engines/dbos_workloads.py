# mypy: disable-error-code="untyped-decorator"
"""The orchestrator bench's workloads on DBOS (SQLite system database), in DBOS's own venv.

Run by bench/orchestrator_throughput.py as `python dbos_workloads.py '{"steps":…, "runs":…,
"events":…}'` with BENCH_DIR set to a scratch folder; prints one line of JSON: the raw figures
(wall times, each run's step start times and end, event latencies) that the bench summarises the
same way for every engine. A trivial step is a DBOS step that returns its argument; an "event"
is an in-process start of a one-step workflow (DBOS takes no NATS events).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from typing import Any

from dbos import DBOS, DBOSConfig  # type: ignore[import-not-found, unused-ignore]

STARTS: dict[str, list[float]] = defaultdict(list)
ENDS: dict[str, float] = {}


@DBOS.step()
def step(i: int) -> int:
    STARTS[DBOS.workflow_id].append(time.time())
    return i


@DBOS.workflow()
def sequence(count: int) -> int:
    for i in range(count):
        step(i)
    ENDS[DBOS.workflow_id] = time.time()
    return count


def long(steps: int) -> dict[str, Any]:
    began = time.perf_counter()
    DBOS.start_workflow(sequence, steps).get_result()
    return {"steps": steps, "wall_s": time.perf_counter() - began}


def concurrent(runs: int) -> dict[str, Any]:
    began = time.perf_counter()
    handles = [DBOS.start_workflow(sequence, 5) for _ in range(runs)]
    for handle in handles:
        handle.get_result()
    wall = time.perf_counter() - began
    ids = [h.get_workflow_id() for h in handles]
    return {"wall_s": wall, "runs": [{"step_starts": STARTS[i], "end": ENDS[i]} for i in ids]}


def events(count: int) -> dict[str, Any]:
    latencies = []
    for _ in range(count):
        sent = time.time()
        handle = DBOS.start_workflow(sequence, 1)
        handle.get_result()
        latencies.append(STARTS[handle.get_workflow_id()][0] - sent)
    return {"latencies_s": latencies}


def main() -> None:
    args = json.loads(sys.argv[1])
    folder = os.environ["BENCH_DIR"]
    config: DBOSConfig = {
        "name": "nexus-bench",
        "system_database_url": f"sqlite:///{folder}/dbos.sqlite",
    }
    DBOS(config=config)
    DBOS.launch()
    DBOS.start_workflow(sequence, 1).get_result()  # warm up
    raw = {"long": long(args["steps"]), "concurrent": concurrent(args["runs"])}
    if args["events"]:
        raw["events"] = events(args["events"])
    DBOS.destroy()
    print(json.dumps(raw))


if __name__ == "__main__":
    main()
