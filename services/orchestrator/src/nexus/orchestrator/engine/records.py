"""A run's record: its state, the steps still to run, each executed step, its timers.

One JSON value per run in KV `nexus_orchestrator_runs`, changed only with compare-and-set.
`tick` counts the advances of the run: the advance message of tick n has the event id
`<run>:<n>`, so any number of replicas publish it and JetStream stores it once, and a message
of an older tick is stale, except the one whose handler went on in place (`driver`, see the
engine). `wake_at` is when the run must be advanced again even if no message
comes (a timer, a backoff, a signal's timeout, or a lease over a step in flight).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import orjson

PENDING, RUNNING, WAITING = "PENDING", "RUNNING", "WAITING"
SUCCEEDED, FAILED, CANCELLED, TIMED_OUT = "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"
DONE = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT})
SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class StepRecord:
    """One execution of a step (a rerun adds another).

    Attributes:
        attempt_open: The attempt `attempts` began and has not ended (its replica may have died:
            the next one calls again with the same idempotency key).
        wait_until: The end of the step's wait (sleep, backoff, a signal's timeout); 0: none.
    """

    step_id: str
    kind: str
    state: str
    started: float
    input: Any = None
    output: Any = None
    error: dict[str, str] | None = None
    attempts: int = 0
    attempt_open: bool = False
    attempt_started: float = 0.0
    last_attempt_s: float = 0.0
    wait_until: float = 0.0
    ended: float = 0.0

    @property
    def done(self) -> bool:
        return self.state in (SUCCEEDED, FAILED, SKIPPED, CANCELLED)


@dataclass(frozen=True)
class RunRecord:
    """One run of a workflow version.

    Attributes:
        history: The step executions not sealed yet (the current one among them), in order.
        seals: The sizes of the sealed chunks of the history, in order: the executions before
            `history`, stored apart once finished (see the run store), so that the record of a
            long run stays small.
        parent: The run whose `parallel`, `map` or `workflow` step started this one ("": none).
        parent_step: That step's id.
        depth: How many runs contain this one (0 for a run started by a trigger).
        seed: What a run started by a step sees besides its own steps: `steps` (the parent's
            steps when it started) and, for an item of a `map`, `item`.
        driver: The tick of the advance whose handler took the run on in place since (0: none):
            that advance, delivered again because its replica died, goes on from where it was.
        driven_by: The replica that drives the run without an advance on the queue (the one
            that started it, ADR 0053; "": the queue's). Any replica takes the run over once
            that replica's beats stop (see `engine.replicas`).
    """

    run_id: str
    workflow: str
    version: int
    inputs: dict[str, Any]
    created: float
    state: str = PENDING
    pending: tuple[str, ...] = ()
    history: tuple[StepRecord, ...] = ()
    attempts: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    tick: int = 0
    wake_at: float = 0.0
    deadline: float = 0.0
    updated: float = 0.0
    ended: float = 0.0
    cancel_requested: bool = False
    signals: dict[str, list[Any]] = field(default_factory=dict)
    failing: dict[str, str] | None = None
    resume: tuple[str, ...] = ()
    owner_key_id: str = ""
    trigger_kind: str = "manual"
    trigger_detail: str = ""
    driver: int = 0
    seals: tuple[int, ...] = ()
    parent: str = ""
    parent_step: str = ""
    depth: int = 0
    seed: dict[str, Any] = field(default_factory=dict)
    driven_by: str = ""

    @property
    def sealed(self) -> int:
        """How many executions are in sealed chunks."""
        return sum(self.seals)

    @property
    def executed(self) -> int:
        """How many step executions the run made (sealed or not)."""
        return self.sealed + len(self.history)

    @property
    def done(self) -> bool:
        return self.state in DONE

    @property
    def current(self) -> StepRecord | None:
        """The execution of the step at the head of `pending`, when it began and is not done."""
        if self.pending and self.history:
            last = self.history[-1]
            if last.step_id == self.pending[0] and not last.done:
                return last
        return None

    def with_current(self, step: StepRecord) -> RunRecord:
        """The record with `step` as the execution of the current step (added or replaced)."""
        history = self.history[:-1] if self.current is not None else self.history
        return replace(self, history=(*history, step))

    def outputs_by_step(self) -> dict[str, Any]:
        """`steps.<id>` of expressions: the latest execution of each step."""
        return {
            step.step_id: {"output": step.output, "state": step.state, "attempts": step.attempts}
            for step in self.history
        }

    def encode(self) -> bytes:
        # orjson serialises dataclasses itself, without the deep copy of `asdict`: the record is
        # rewritten at every step.
        return orjson.dumps(self)

    @classmethod
    def decode(cls, data: bytes) -> RunRecord:
        raw = orjson.loads(data)
        exact = raw.keys() == _RUN_FIELDS
        if not exact:  # a newer version's fields are left out: replicas of two versions share
            raw = {k: v for k, v in raw.items() if k in _RUN_FIELDS}  # the runs
        raw["history"] = tuple(_step(step) for step in raw["history"])
        raw["pending"] = tuple(raw["pending"])
        raw["resume"] = tuple(raw["resume"])
        raw["seals"] = tuple(raw.get("seals", ()))
        # A record of this version has every field: built as `replace` copies (ADR 0052).
        return _built(cls, raw) if exact else cls(**raw)


_RUN_FIELDS = frozenset(f.name for f in fields(RunRecord))
_STEP_FIELDS = frozenset(f.name for f in fields(StepRecord))
_FIELDS = {RunRecord: _RUN_FIELDS, StepRecord: _STEP_FIELDS}
_Record = TypeVar("_Record", RunRecord, StepRecord)


def replace(record: _Record, **changes: Any) -> _Record:
    """`dataclasses.replace` for the records: a copy with `changes`, made without calling
    `__init__` (the records check nothing there). A step rewrites the run's record about ten
    times in memory, and `dataclasses.replace` of its 30 fields (one `getattr` and one keyword
    each) was the largest cost of a step's own code (ADR 0052).

    Raises:
        TypeError: A name in `changes` is not a field of the record.
    """
    unknown = changes.keys() - _FIELDS[type(record)]
    if unknown:
        raise TypeError(f"{type(record).__name__} has no field {sorted(unknown)[0]!r}")
    copy = _built(type(record), record.__dict__)  # frozen: __setattr__ refuses, the dict not
    copy.__dict__.update(changes)
    return copy


def encode_steps(steps: tuple[StepRecord, ...]) -> bytes:
    """A sealed chunk of executions."""
    return orjson.dumps(steps)


def decode_steps(data: bytes) -> tuple[StepRecord, ...]:
    return tuple(_step(step) for step in orjson.loads(data))


def _step(raw: dict[str, Any]) -> StepRecord:
    if raw.keys() == _STEP_FIELDS:
        return _built(StepRecord, raw)
    return StepRecord(**{k: v for k, v in raw.items() if k in _STEP_FIELDS})


def _built(kind: type[_Record], values: dict[str, Any]) -> _Record:
    """A record of `kind` with every field in `values`, made without `__init__`: decoding a
    record is mostly building it (a watch of a run another replica drives decodes each of its
    writes), and the keyword call of 30 fields cost as much as the JSON itself."""
    record = object.__new__(kind)
    record.__dict__.update(values)
    return record


def error_of(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}
