"""Run records as stored: a round trip, records written by a newer version, and copies."""

from __future__ import annotations

import orjson
import pytest

from nexus.orchestrator.engine.records import (
    SUCCEEDED,
    RunRecord,
    StepRecord,
    decode_steps,
    encode_steps,
    replace,
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


def test_a_record_of_the_version_before_replicas_drove_their_own_runs_reads_as_the_queues() -> None:
    raw = orjson.loads(replace(_run(), driven_by="r1").encode())
    del raw["driven_by"]  # as the version before ADR 0053 writes it

    decoded = RunRecord.decode(orjson.dumps(raw))

    assert decoded == _run()
    assert decoded.driven_by == ""  # driven through the queue, as that version drove it


def test_a_copy_changes_only_what_it_names_and_refuses_unknown_names() -> None:
    run = _run()

    copy = replace(run, tick=5, pending=("c",))
    step = replace(run.history[0], attempts=2)

    assert (copy.tick, copy.pending, run.tick, run.pending) == (5, ("c",), 0, ("b", "c"))
    assert copy == RunRecord.decode(copy.encode())
    assert replace(copy, tick=0, pending=("b", "c")) == run
    assert (step.attempts, step.step_id, run.history[0].attempts) == (2, "a", 0)
    with pytest.raises(TypeError, match="no field 'ticks'"):
        replace(run, ticks=1)
    with pytest.raises(TypeError, match="no field 'pending'"):
        replace(run.history[0], pending=())
