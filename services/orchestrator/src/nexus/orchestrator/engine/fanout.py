"""Steps that run runs: `parallel` (a run per branch), `map` (a run per item, at most
`concurrency` at once) and `workflow` (a run of another workflow).

The children are ordinary runs, advanced by any replica, durable as any run; the parent's step
waits, woken by each child that ends (and, as every waiting run, by its timer). A child's id
derives from the parent run, the execution of the step and the child's index, so a step advanced
twice (two replicas, a redelivery) makes each child once. This module holds the pure part: what
a step starts from, the children's ids and records, and the step's result from theirs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from nexus.orchestrator import expressions
from nexus.orchestrator.definitions import Definition
from nexus.orchestrator.definitions.model import Step
from nexus.orchestrator.definitions.schema import DEFAULT_CONCURRENCY, MAX_DEPTH, MAX_ITEMS
from nexus.orchestrator.engine.calls import StepError
from nexus.orchestrator.engine.records import DONE, PENDING, SUCCEEDED, RunRecord

KINDS = frozenset({"parallel", "map", "workflow"})
BRANCH, WORKFLOW = "branch", "workflow"
"""The trigger kinds of children: a branch or item of this workflow, or a run of another."""
_NAMESPACE = uuid.UUID("5f1c7e0a-8d5b-4a5e-9a39-6f0b2d1c4e77")


def input_of(step: Step, context: dict[str, Any], depth: int) -> dict[str, Any]:
    """What the step starts from, recorded as its input: the items, the branches' names, or
    the workflow and its inputs.

    Raises:
        StepError: INVALID_ARGUMENT (items not a list, or too many), FAILED_PRECONDITION (runs
            nested too deep).
    """
    if depth + 1 > MAX_DEPTH:
        raise StepError("FAILED_PRECONDITION", f"runs nested more than {MAX_DEPTH} deep")
    if step.kind == "map":
        items = expressions.evaluate(step.spec["items"], context)
        if not isinstance(items, list):
            raise StepError("INVALID_ARGUMENT", f"map items are a {type(items).__name__}")
        if len(items) > MAX_ITEMS:
            raise StepError("INVALID_ARGUMENT", f"{len(items)} map items; at most {MAX_ITEMS}")
        return {"items": items}
    if step.kind == "parallel":
        return {"branches": [branch["name"] for branch in step.spec["branches"]]}
    spec = step.spec
    inputs = expressions.render(spec.get("inputs", {}), context)
    return {"name": spec["name"], "version": int(spec.get("version", 0)), "inputs": inputs}


def size(step: Step, input_: dict[str, Any]) -> tuple[int, int]:
    """How many children the step runs, and how many at once."""
    if step.kind == "map":
        return len(input_["items"]), int(step.spec.get("concurrency", DEFAULT_CONCURRENCY))
    if step.kind == "parallel":
        count = len(input_["branches"])
        return count, count
    return 1, 1


def child_ids(parent: RunRecord, step_id: str, count: int) -> list[str]:
    """The ids of the children of the current execution of `step_id`."""
    execution = parent.executed - 1  # the current execution is the last of the history
    return [
        uuid.uuid5(_NAMESPACE, f"{parent.run_id}/{step_id}/{execution}/{index}").hex
        for index in range(count)
    ]


def branch_child(
    parent: RunRecord,
    step: Step,
    index: int,
    run_id: str,
    parent_steps: dict[str, Any],
    now: float,
    redrive_s: float,
) -> RunRecord:
    """The run of branch or item `index` of a `parallel` or `map` step: this workflow's
    version, the branch's (or the map's) steps, the parent's inputs and steps."""
    current = parent.current
    assert current is not None
    if step.kind == "map":
        body = step.spec["steps"]
        seed = {"steps": parent_steps, "item": current.input["items"][index]}
    else:
        body = step.spec["branches"][index]["steps"]
        seed = {"steps": parent_steps}
    return _child(
        parent,
        step,
        index,
        run_id=run_id,
        workflow=(parent.workflow, parent.version),
        inputs=parent.inputs,
        pending=tuple(s["id"] for s in body),
        seed=seed,
        deadline=parent.deadline,
        kind=BRANCH,
        now=now,
        redrive_s=redrive_s,
    )


def workflow_child(
    parent: RunRecord,
    step: Step,
    run_id: str,
    definition: Definition,
    version: int,
    inputs: dict[str, Any],
    now: float,
    redrive_s: float,
) -> RunRecord:
    """The run of another workflow that a `workflow` step starts (with checked inputs); it
    ends by the parent's deadline at the latest."""
    deadline = now + definition.timeout_s if definition.timeout_s else 0.0
    if parent.deadline:
        deadline = min(deadline, parent.deadline) if deadline else parent.deadline
    return _child(
        parent,
        step,
        0,
        run_id=run_id,
        workflow=(definition.name, version),
        inputs=inputs,
        pending=tuple(definition.top_level()),
        seed={},
        deadline=deadline,
        kind=WORKFLOW,
        now=now,
        redrive_s=redrive_s,
    )


def _child(
    parent: RunRecord,
    step: Step,
    index: int,
    *,
    run_id: str,
    workflow: tuple[str, int],
    inputs: dict[str, Any],
    pending: tuple[str, ...],
    seed: dict[str, Any],
    deadline: float,
    kind: str,
    now: float,
    redrive_s: float,
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        workflow=workflow[0],
        version=workflow[1],
        inputs=inputs,
        created=now,
        updated=now,
        state=PENDING,
        pending=pending,
        tick=1,
        wake_at=now + redrive_s,
        deadline=deadline,
        owner_key_id=parent.owner_key_id,  # a child can do no more than its parent
        trigger_kind=kind,
        trigger_detail=f"{parent.run_id}/{step.id}[{index}]",
        parent=parent.run_id,
        parent_step=step.id,
        depth=parent.depth + 1,
        seed=seed,
    )


def branch_outputs(run: RunRecord) -> dict[str, Any]:
    """A branch's (or item's) result: the output of its last step (`run` expanded)."""
    last = run.history[-1].output if run.history else None
    return {"value": last}


def first_failure(children: Sequence[RunRecord | None]) -> tuple[int, RunRecord] | None:
    """The first child that ended other than SUCCEEDED, with its index."""
    for index, child in enumerate(children):
        if child is not None and child.state in DONE and child.state != SUCCEEDED:
            return index, child
    return None


def result(step: Step, input_: dict[str, Any], children: Sequence[RunRecord]) -> Any:
    """The step's output once every child SUCCEEDED: the items' results in order, the
    branches' by name, or the workflow's outputs."""
    if step.kind == "map":
        return [(child.outputs or {}).get("value") for child in children]
    if step.kind == "parallel":
        return {
            name: (child.outputs or {}).get("value")
            for name, child in zip(input_["branches"], children, strict=True)
        }
    return dict(children[0].outputs or {})
