"""Run records as stored: a round trip, and records written by a newer version."""

from __future__ import annotations

import orjson

from nexus.orchestrator.engine.records import (
    SUCCEEDED,
    RunRecord,
    StepRecord,
    decode_steps,
    encode_steps,
)


def _run() -> RunRecord:
    step = StepRecord(
        step_id="a", kind="publish", state=SUCCEEDED, started=1.5, input={"x": [1, "y"]}
    )
    return RunRecord(
        run_id="r1",
        workflow="w",
        version=2,
        inputs={"n": 1.0},
        created=1.0,
        pending=("b", "c"),
        history=(step,),
        attempts={"a": 1},
        seals=(16, 16),
        driver=7,
    )


def test_a_record_comes_back_as_it_was_stored() -> None:
    run = _run()

    assert RunRecord.decode(run.encode()) == run
    assert decode_steps(encode_steps(run.history)) == run.history
    assert run.sealed == 32
    assert run.executed == 33


def test_fields_a_newer_version_added_are_left_out() -> None:
    raw = orjson.loads(_run().encode())
    raw["added_later"] = {"any": "thing"}
    raw["history"][0]["also_new"] = 3

    assert RunRecord.decode(orjson.dumps(raw)) == _run()


def test_a_record_from_before_seals_reads_as_unsealed() -> None:
    raw = orjson.loads(_run().encode())
    del raw["seals"], raw["driver"]

    decoded = RunRecord.decode(orjson.dumps(raw))

    assert (decoded.seals, decoded.driver) == ((), 0)
