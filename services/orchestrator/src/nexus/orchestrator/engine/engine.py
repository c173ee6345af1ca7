"""The run engine: runs advanced one step at a time by whichever replica takes the advance.

An advance is a `RunAdvance` on stream ORCHESTRATOR (`nexus.orchestrator.advance.<run>`, event
id `<run>:<tick>`) pulled through one durable consumer shared by every replica. The handler
reads the run, and when the message is of the run's current tick, takes its head step one
stage further with compare-and-set writes; a write that finds another tick is dropped (another
replica moved on). A call step records "attempt N open" before it calls with idempotency key
`orchestrator:<run>:<step>:<N>`; a replica killed mid-call leaves it open, the message comes
back after the ack wait, and the next replica calls again with the same key, which the callee
answers with the first outcome (ADR 0019). Every replica mirrors the runs and re-drives each run
whose `wake_at` passed (timers, backoffs, signal timeouts, the run's deadline, and a lost
advance), bumping its tick with compare-and-set so that one advance is published per wake.

A run is first driven by the replica that started it, without an advance on the queue (no
publish, delivery, read and ack; its watch, usually on that replica, decodes nothing another
wrote: ADR 0053): its writes name that replica (`driven_by`), and once the replica's beats stop
(`engine.replicas`) any replica bumps the run's tick and publishes its advance, as a timer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

from nexus.api.orchestrator.v1 import events_pb2
from nexus.common.auth import KeyStore, required_scope
from nexus.common.errors import FailedPrecondition, NexusError, NotFound
from nexus.common.events import DAY_S, GIB, Consumer, Event, EventBus, Stream
from nexus.orchestrator import expressions
from nexus.orchestrator.definitions import Definition
from nexus.orchestrator.definitions.model import Step
from nexus.orchestrator.engine import fanout, metrics
from nexus.orchestrator.engine import steps as s
from nexus.orchestrator.engine.calls import NOT_RETRIED, Caller, StepError, message_of
from nexus.orchestrator.engine.inputs import checked_inputs
from nexus.orchestrator.engine.owners import owner_allows
from nexus.orchestrator.engine.records import (
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    TIMED_OUT,
    WAITING,
    RunRecord,
    error_of,
    replace,
)
from nexus.orchestrator.engine.replicas import Replicas
from nexus.orchestrator.engine.store import RunStore
from nexus.orchestrator.engine.waits import EventHints, EventLog, condition_of, waiting_on
from nexus.orchestrator.periodic import Periodic
from nexus.orchestrator.settings import OrchestratorSettings
from nexus.orchestrator.workflows import WorkflowStore, WorkflowVersion

log = logging.getLogger(__name__)

STREAM = Stream(
    "ORCHESTRATOR", ("nexus.orchestrator.advance.>",), max_age_s=7 * DAY_S, max_bytes=GIB
)
DURABLE = "orchestrator-advance"
WORKFLOW_EVENTS = Stream("WORKFLOWS", ("nexus.workflows.>",), max_age_s=30 * DAY_S, max_bytes=GIB)
"""What workflows publish for people and other systems (`nexus.orchestrator.v1.WorkflowEvent`
on `nexus.workflows.<topic>`, such as the alerts of docs/orchestrator/examples)."""
_DRIVEN: ContextVar[tuple[int, list[RunRecord], str] | None] = ContextVar("driven", default=None)
"""In an advance's handler or a drive here: its tick, the record due next that it goes on with,
and the replica that drives it without the queue ("": the queue's advance)."""
_RERUNNABLE = frozenset({FAILED, TIMED_OUT, CANCELLED})


class Engine:
    """Starts, advances, cancels, signals and reruns runs.

    Args:
        bus: The event bus (the ORCHESTRATOR stream).
        runs: The run records.
        workflows: The registered workflows.
        caller: Calls the services.
        settings: Limits and timings.
        keys: The API keys (None: auth is off, and workflows call with no scope check).
    """

    def __init__(
        self,
        bus: EventBus,
        runs: RunStore,
        workflows: WorkflowStore,
        caller: Caller,
        settings: OrchestratorSettings,
        keys: KeyStore | None,
    ) -> None:
        self._bus = bus
        self.runs = runs
        self._workflows = workflows
        self._caller = caller
        self._settings = settings
        self._keys = keys
        self._consumer: Consumer | None = None
        self._timer = Periodic(
            "orchestrator-timers", min(0.2, settings.ack_wait_s / 4), self._wake_due
        )
        self._events = EventLog(bus.nc)
        self._hints = EventHints(bus.nc, runs.live, self._wake_for_event)
        self._replicas = Replicas(bus.nc, settings.ack_wait_s)
        self._slots = asyncio.Semaphore(settings.step_workers)  # runs driven here at once
        self._here: set[asyncio.Task[None]] = set()

    @property
    def _redrive_s(self) -> float:
        """How long a due run may wait for its advance before a replica's timer re-drives it."""
        return 2 * self._settings.ack_wait_s

    async def start(self) -> None:
        await self._bus.ensure_streams(STREAM, WORKFLOW_EVENTS)
        await self._replicas.start()
        self._consumer = await self._bus.consume(
            f"{STREAM.subjects[0][:-1]}>",
            events_pb2.RunAdvance,
            self._handle,
            durable=DURABLE,
            stream=STREAM.name,
            batch=self._settings.step_workers,
            concurrency=self._settings.step_workers,
            max_deliver=20,
            ack_wait_s=self._settings.ack_wait_s,
        )
        await self._hints.start()
        self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()
        for task in list(self._here):
            task.cancel()
        await asyncio.gather(*self._here, return_exceptions=True)
        await self._replicas.stop()  # its runs driven here: taken over by the others now
        await self._hints.stop()
        if self._consumer is not None:
            await self._consumer.stop()
        await self._caller.close()

    # The API.

    async def start_run(
        self, workflow: str, version: int, inputs: dict[str, Any], trigger: tuple[str, str]
    ) -> RunRecord:
        """Starts a run of a workflow version (0: the latest) with checked inputs.

        Raises:
            NotFound: No such workflow or version, or the workflow was deleted.
            InvalidArgument: Inputs missing, of the wrong type, or too large.
        """
        if version:
            await self._workflows.get(workflow)  # not deleted
        stored = await self._workflows.get(workflow, version)
        run, _ = await self.begin_run(stored, inputs, trigger)
        return run

    async def begin_run(
        self,
        stored: WorkflowVersion,
        inputs: dict[str, Any],
        trigger: tuple[str, str],
        run_id: str = "",
    ) -> tuple[RunRecord, bool]:
        """Starts a run of `stored` with checked inputs.

        Args:
            stored: The workflow version.
            inputs: The run's inputs, checked against the declared ones.
            trigger: What started it (kind, detail).
            run_id: An id derived from what started the run (an event id, a cron tick), so
                that starting it again (any replica, any time the run is kept) starts nothing;
                a fresh one when empty.

        Returns:
            The run, and whether this call started it (False: a run of that id existed).

        Raises:
            InvalidArgument: Inputs missing, of the wrong type, or too large.
        """
        definition = self._workflows.definition(stored)
        checked = checked_inputs(definition, inputs, self._settings.max_inputs_bytes)
        now = s.now()
        run = RunRecord(
            run_id=run_id or uuid.uuid4().hex,
            workflow=stored.name,
            version=stored.version,
            inputs=checked,
            created=now,
            updated=now,
            state=PENDING,
            pending=tuple(definition.top_level()),
            tick=1,
            wake_at=now + self._redrive_s,
            deadline=now + definition.timeout_s if definition.timeout_s else 0.0,
            owner_key_id=stored.owner_key_id,
            trigger_kind=trigger[0],
            trigger_detail=trigger[1],
            driven_by=self._replicas.id,
        )
        stored_run = await self.runs.create(run, driven_here=True)
        made = stored_run.created == run.created and stored_run.trigger_detail == run.trigger_detail
        if made:
            metrics.started(stored_run)
            self._drive_here(stored_run)
        return stored_run, made

    async def cancel(self, run_id: str) -> RunRecord:
        """Cancels a run: at once when no attempt is in flight, else after it."""

        def change(run: RunRecord) -> RunRecord | None:
            applied.clear()  # only what the last (written) attempt made counts
            if run.done or run.cancel_requested:
                return None
            current = run.current
            if current is not None and current.attempt_open:
                return replace(run, cancel_requested=True)
            ended = s.end(run, CANCELLED, s.now(), error_of("CANCELLED", "cancelled"))
            applied.append((run, ended))
            return ended

        applied: list[tuple[RunRecord, RunRecord]] = []
        cancelled = await self.runs.update(run_id, change)
        for before, after in applied[-1:]:
            metrics.changed(before, after)
        await self._cancel_children(cancelled)
        return cancelled

    async def signal(self, run_id: str, name: str, payload: dict[str, Any]) -> RunRecord:
        """Delivers a signal; a step waiting for one goes on, else it is kept until one does.

        Raises:
            FailedPrecondition: The run is done.
        """

        def change(run: RunRecord) -> RunRecord | None:
            if run.done:
                raise FailedPrecondition(f"run {run_id} is {run.state}; it takes no signals")
            signals = {**run.signals, name: [*run.signals.get(name, []), payload]}
            run = replace(run, signals=signals)
            current = run.current
            if current is not None and current.kind == "wait_signal":
                run = replace(run, tick=run.tick + 1, wake_at=s.now() + self._redrive_s)
            return run

        before = await self.runs.get(run_id)
        run = await self.runs.update(run_id, change)
        if run.tick != before.tick:
            await self._publish(run)
        return run

    async def rerun(self, run_id: str) -> RunRecord:
        """Runs a FAILED, TIMED_OUT or CANCELLED run again from the step that stopped it.

        Raises:
            FailedPrecondition: The run is not one of those.
        """
        run = await self.runs.get(run_id)
        definition = await self._definition(run)
        now = s.now()
        deadline = now + definition.timeout_s if definition.timeout_s else 0.0

        def change(current: RunRecord) -> RunRecord | None:
            if current.state not in _RERUNNABLE or not current.resume:
                raise FailedPrecondition(
                    f"run {run_id} is {current.state}; only a failed, timed out or cancelled "
                    "run with steps left is rerun"
                )
            return s.rerun(current, now, deadline, self._redrive_s)

        run = await self.runs.update(run_id, change)
        await self._publish(run)
        return run

    async def watch(self, run_id: str) -> AsyncIterator[RunRecord]:
        async for run in self.runs.watch(run_id, here=self._replicas.id):
            yield run

    # Advancing.

    async def _handle(self, event: Event[events_pb2.RunAdvance]) -> None:
        tick = int(event.id.rsplit(":", 1)[-1]) if ":" in event.id else -1
        try:
            run = await self.runs.get(event.data.run_id)
        except NotFound:
            return
        if run.done or (run.tick != tick and run.driver != tick):
            # Stale: the run moved on (its current advance is in the queue or timed). A drive
            # whose replica died may have left the run's view behind: published again.
            await self.runs.publish_view(run.run_id)
            return
        due: list[RunRecord] = []
        try:
            await self._drive(run, tick, due, "")
        finally:
            await self._drive_ended(run.run_id)
            if due:  # handed back to the queue
                await self._publish(due[-1])

    def _drive_here(self, run: RunRecord) -> None:
        """Drives a run this replica wrote as `driven_by` it, in a task of its own."""
        task = asyncio.create_task(self._driving_here(run), name=f"run-{run.run_id}")
        self._here.add(task)
        task.add_done_callback(self._here.discard)

    async def _driving_here(self, run: RunRecord) -> None:
        """Drives the run here, `step_workers` runs at once, a chunk of steps per turn (as an
        advance's handler would) until it waits or ends. A failure hands it to the queue."""
        due: list[RunRecord] = [run]
        try:
            while due:
                async with self._slots:
                    run = due.pop()
                    await self._drive(run, run.tick, due, self._replicas.id)
        except Exception:
            log.exception("run %s: driving it here failed; handing it to the queue", run.run_id)
            with contextlib.suppress(NexusError):
                await self._publish((due or [run])[-1])
        await self._drive_ended(run.run_id)  # out of the slot: another run goes on meanwhile

    async def _drive_ended(self, run_id: str) -> None:
        """Publishes the view of the drive's last write to every replica (ADR 0056)."""
        with contextlib.suppress(NexusError):  # else the next reader of the run does it
            await self.runs.publish_view(run_id)

    async def _drive(self, run: RunRecord, tick: int, due: list[RunRecord], here: str) -> None:
        """Advances the run, then goes on in place while its next advance is due at once, up to
        `steps_in_place` steps and a quarter of the ack wait, leaving in `due` the record due
        next. Each step is still written before the next begins, and each write names `tick`
        as the run's driver (and `here`, the replica that drives it without the queue): if this
        replica dies, the advance of `tick` is delivered again (it was never acknowledged) and
        goes on from the last write, as an advance of the run's own tick would (driven here:
        another replica takes the run over once this one's beats stop)."""
        token = _DRIVEN.set((tick, due, here))
        budget = time.monotonic() + self._settings.ack_wait_s / 4
        try:
            await self._advance(run)
            for _ in range(self._settings.steps_in_place - 1):
                if not due or time.monotonic() > budget:
                    break
                run = due.pop()
                await self._advance(run)
        finally:
            _DRIVEN.reset(token)

    async def _advance(self, run: RunRecord) -> None:
        now = s.now()
        definition = await self._definition(run)
        if run.cancel_requested:
            await self._write(run, lambda r: s.end(r, CANCELLED, now, _cancelled()))
            return
        if run.deadline and now >= run.deadline:
            await self._write(run, lambda r: s.timed_out(r, now))
            return
        if not run.pending:
            await self._write(run, lambda r: s.next_step(r, now, self._redrive_s))
            return
        step = definition.steps[run.pending[0]]
        try:
            if step.condition and _skipped(await self.runs.expanded(run), step):
                await self._write(run, lambda r: s.skip(r, step, now, self._redrive_s))
                return
            await _KINDS[step.kind](self, run, step, definition)
        except expressions.ExpressionError as err:
            await self._fail(run, definition, error_of("INVALID_ARGUMENT", str(err)))

    async def _effect(
        self,
        run: RunRecord,
        step: Step,
        definition: Definition,
        build: Callable[[RunRecord], Any],
        act: Callable[[RunRecord, Any], Any],
        *,
        open_first: bool = True,
    ) -> None:
        """A step with an effect (call, publish): attempt opened, acted, closed.

        With `open_first` (a call), "attempt N open" is written before acting, so that a
        replica that dies mid-call leaves the attempt for the next to make again with the same
        key and request. Without it (a publish, whose key is the event id that JetStream stores
        once), the opening is written together with the outcome: a replica that dies between
        the publish and the write leaves the attempt unrecorded, and the next one makes the
        same attempt N, with the same event id, over the same record (one write less a step).
        """
        now = s.now()
        current = run.current
        if current is not None and current.state == WAITING and current.wait_until > now:
            await self._write(run, lambda r: s.wait(r, current.wait_until))
            return
        prepared: Callable[[RunRecord], RunRecord] | None = None
        if current is None or not current.attempt_open:
            input_ = build(await self._readable(run, step.spec))
            lease = self._attempt_timeout(step) + self._redrive_s

            def opening(r: RunRecord) -> RunRecord:
                began = s.begin(r, step, now, input_) if r.current is None else r
                assert began.current is not None
                return s.open_attempt(began, began.current, now, lease)

            if open_first:
                opened = await self._write(run, opening, seen_at_once=True)
                if opened is None:
                    return
                run = opened
            else:
                run, prepared = opening(run), opening
        assert run.current is not None
        try:
            output = await act(run, run.current.input)
            _check_size(output, self._settings.max_output_bytes)
        except StepError as err:
            error = error_of(err.code, err.message)
        except NexusError as err:  # NATS unavailable for a publish, the key store for a call
            error = error_of(err.code.value, str(err))
        except Exception:  # a bug or a value the message cannot take: details only in the log
            log.exception("step %s of run %s failed unexpectedly", step.id, run.run_id)
            error = error_of("INTERNAL", "internal error")
        else:
            ready = prepared or _unchanged
            await self._write(run, lambda r: s.succeed(ready(r), output, s.now(), self._redrive_s))
            return
        await self._attempt_failed(run, step, definition, error, prepared)

    async def _attempt_failed(
        self,
        run: RunRecord,
        step: Step,
        definition: Definition,
        error: dict[str, str],
        prepared: Callable[[RunRecord], RunRecord] | None = None,
    ) -> None:
        """A failed attempt: retried after its backoff, or the step failed. `prepared`: what
        the attempt's record needs first (its opening, when it was not written)."""
        current = run.current
        assert current is not None
        if error["code"] in NOT_RETRIED or current.attempts >= step.retry.max_attempts:
            await self._fail(run, definition, error, prepared)
            return
        now = s.now()
        until = now + step.retry.backoff_s(current.attempts)
        ready = prepared or _unchanged
        await self._write(run, lambda r: s.retry_later(ready(r), error, until, now))

    async def _call(self, run: RunRecord, step: Step, definition: Definition) -> None:
        method = step.spec["method"]

        async def act(current: RunRecord, request: Any) -> Any:
            await self._check_owner(current, method)
            return await self._caller.call(
                method,
                request,
                idempotency_key=s.idempotency_key(current, step.id),
                timeout_s=self._attempt_timeout(step),
            )

        def build(current: RunRecord) -> Any:
            return expressions.render(step.spec.get("request", {}), s.context(current))

        await self._effect(run, step, definition, build, act)

    async def _publish_step(self, run: RunRecord, step: Step, definition: Definition) -> None:
        subject, type_name = step.spec["subject"], step.spec["type"]

        async def act(current: RunRecord, data: Any) -> Any:
            message = message_of(type_name, data)
            event_id = await self._bus.publish(
                subject, message, event_id=s.idempotency_key(current, step.id)
            )
            return {"event_id": event_id, "subject": subject}

        def build(current: RunRecord) -> Any:
            return expressions.render(step.spec.get("data", {}), s.context(current))

        await self._effect(run, step, definition, build, act, open_first=False)

    async def _switch(self, run: RunRecord, step: Step, definition: Definition) -> None:
        context = s.context(await self.runs.expanded(run))
        now = s.now()
        chosen: list[str] = [item["id"] for item in step.spec.get("default", [])]
        matched = "default"
        for index, case in enumerate(step.spec["cases"]):
            if expressions.condition(case["when"], context):
                chosen, matched = [item["id"] for item in case["steps"]], str(index)
                break

        def change(r: RunRecord) -> RunRecord:
            began = s.begin(r, step, now, {"case": matched})
            return s.expand(began, chosen, {"case": matched}, now, self._redrive_s)

        await self._write(run, change)

    async def _sleep(self, run: RunRecord, step: Step, definition: Definition) -> None:
        now = s.now()
        current = run.current
        if current is None:
            until = now + float(step.spec["seconds"])
            await self._write(run, lambda r: s.wait(s.begin(r, step, now), until))
        elif current.wait_until <= now:
            await self._write(run, lambda r: s.succeed(r, None, now, self._redrive_s))
        else:
            await self._write(run, lambda r: s.wait(r, current.wait_until))

    async def _wait_signal(self, run: RunRecord, step: Step, definition: Definition) -> None:
        now = s.now()
        name = step.spec["name"]
        if run.signals.get(name):

            def take(r: RunRecord) -> RunRecord | None:
                queued = r.signals.get(name) or []
                if not queued:
                    return None
                began = s.begin(r, step, now) if r.current is None else r
                rest = replace(began, signals={**began.signals, name: queued[1:]})
                return s.succeed(rest, queued[0], now, self._redrive_s)

            await self._write(run, take)
            return
        current = run.current
        if current is None:
            timeout = float(step.spec.get("timeout_s", 0.0))
            until = now + timeout if timeout else 0.0
            await self._write(run, lambda r: s.wait(s.begin(r, step, now), until))
        elif current.wait_until and current.wait_until <= now:
            error = error_of("DEADLINE_EXCEEDED", f"no signal {name!r} before the step's timeout")
            await self._fail(run, definition, error)
        else:
            await self._write(run, lambda r: s.wait(r, current.wait_until))

    async def _wait_event(self, run: RunRecord, step: Step, definition: Definition) -> None:
        """Waits for an event on the step's subject that passes its condition, read from the
        stream from where it stood when the step began (so none is missed while no replica
        runs); the first one found is the step's output."""
        spec = step.spec
        try:
            await self._hints.ensure(spec["subject"])  # before looking: later events are hinted
            if run.current is None:
                began = await self._begin_wait_event(run, step)
                if began is None:
                    return
                run = began
            await self._look_for_event(run, step, definition)
        except FailedPrecondition as err:  # no stream holds the subject (any more)
            await self._fail(run, definition, error_of(err.code.value, str(err)))
        except StepError as err:  # the event is larger than a step's output may be
            await self._fail(run, definition, error_of(err.code, err.message))

    async def _begin_wait_event(self, run: RunRecord, step: Step) -> RunRecord | None:
        now = s.now()
        subject = step.spec["subject"]
        stream = await self._bus.stream_of(subject)
        input_ = {"subject": subject, "stream": stream}
        since = step.spec.get("since", "step")
        if since == "step":
            input_["from_seq"] = await self._events.start_seq(stream)
        else:
            when = await self._since_time(run, since)
            input_["from_seq"] = await self._events.seq_since(stream, subject, when)
        timeout = float(step.spec.get("timeout_s", 0.0))
        until = now + timeout if timeout else 0.0
        poll = now + self._settings.wait_event_poll_s
        began = await self._write(
            run, lambda r: s.wait_event(s.begin(r, step, now, input_), until, poll, None)
        )
        if began is not None:
            self._hints.note(began)
        return began

    async def _since_time(self, run: RunRecord, since: str) -> float:
        """When the run (`run`) or its latest execution of step `since` began.

        Raises:
            FailedPrecondition: The run has not executed that step.
        """
        if since == "run":
            return run.created
        history = (await self.runs.expanded(run)).history
        for execution in reversed(history):
            if execution.step_id == since:
                return execution.started
        raise FailedPrecondition(f"since {since!r}: this run has not executed that step")

    async def _look_for_event(self, run: RunRecord, step: Step, definition: Definition) -> None:
        current = run.current
        assert current is not None
        now = s.now()
        wait = {"next_seq": current.input["from_seq"], **current.input, **(current.output or {})}
        matches = condition_of(
            step.spec.get("condition", ""), s.context(await self.runs.expanded(run))
        )
        scan = await self._events.scan(wait, step.spec["type"], matches, current.wait_until)
        if scan.event is not None:
            event = scan.event
            _check_size(event, self._settings.max_output_bytes)
            await self._write(run, lambda r: s.succeed(r, event, now, self._redrive_s))
        elif current.wait_until and current.wait_until <= now and not scan.more:
            message = f"no event on {wait['subject']} passed the condition before the timeout"
            await self._fail(run, definition, error_of("DEADLINE_EXCEEDED", message))
        else:
            poll = now if scan.more else now + self._settings.wait_event_poll_s
            progress = {"next_seq": scan.next_seq}
            await self._write(run, lambda r: s.wait_event(r, current.wait_until, poll, progress))

    async def _wake_for_event(self, run: RunRecord) -> None:
        """Wakes a run waiting for an event (a message came on its subject)."""

        def change(current: RunRecord) -> RunRecord | None:
            if current.done or current.tick != run.tick or not waiting_on(current):
                return None
            return replace(current, tick=current.tick + 1, wake_at=s.now() + self._redrive_s)

        with contextlib.suppress(NotFound):
            await self._bump(run.run_id, change)

    async def _fan_out(self, run: RunRecord, step: Step, definition: Definition) -> None:
        """A `parallel`, `map` or `workflow` step: starts its child runs (no more than its
        concurrency at once), then waits; each child that ends wakes it (`_notify_parent`)."""
        try:
            if run.current is None:
                context = s.context(await self.runs.expanded(run))
                input_ = fanout.input_of(step, context, run.depth)
                began = await self._write(run, lambda r: s.begin(r, step, s.now(), input_))
                if began is None:
                    return
                run = began
            await self._fan_out_step(run, step, definition)
        except StepError as err:
            await self._fail(run, definition, error_of(err.code, err.message))
        except NexusError as err:  # no such workflow, inputs it does not take
            await self._fail(run, definition, error_of(err.code.value, str(err)))

    async def _fan_out_step(self, run: RunRecord, step: Step, definition: Definition) -> None:
        current = run.current
        assert current is not None
        count, limit = fanout.size(step, current.input)
        ids = fanout.child_ids(run, step.id, count)
        started = int((current.output or {}).get("started", 0))
        children = [await self._child(child_id) for child_id in ids[:started]]
        failure = fanout.first_failure(children)
        if failure is not None:
            index, child = failure
            await self._cancel_ids(ids[:started])
            error = child.error or error_of("UNKNOWN", "a child run ended without success")
            where = f"{step.kind} {step.id}[{index}] (run {child.run_id})"
            message = f"{where}: {error['message']}"
            await self._fail(run, definition, error_of(error["code"], message))
            return
        ended = [c for c in children if c is not None and c.state in DONE]
        if started == count and len(ended) == count:
            output = fanout.result(step, current.input, ended)
            _check_size(output, self._settings.max_output_bytes)
            await self._write(run, lambda r: s.succeed(r, output, s.now(), self._redrive_s))
            return
        room = max(0, limit - (len(children) - len(ended)))
        new = range(started, min(count, started + room))
        for index in new:
            await self._start_child(run, step, index, ids[index])
        progress = {"started": started + len(new), "ended": len(ended), "of": count}
        until = s.now() + self._redrive_s  # each child that ends wakes the step before
        await self._write(run, lambda r: s.wait(s.progress(r, progress), until))

    async def _start_child(self, run: RunRecord, step: Step, index: int, child_id: str) -> None:
        now = s.now()
        current = run.current
        assert current is not None
        if step.kind == "workflow":
            spec = current.input
            stored = await self._workflows.get(spec["name"], spec["version"])
            called = self._workflows.definition(stored)
            inputs = checked_inputs(called, spec["inputs"], self._settings.max_inputs_bytes)
            record = fanout.workflow_child(
                run, step, child_id, called, stored.version, inputs, now, self._redrive_s
            )
        else:
            parent_steps = s.context(await self.runs.expanded(run))["steps"]
            record = fanout.branch_child(
                run, step, index, child_id, parent_steps, now, self._redrive_s
            )
            _check_size(record.seed, self._settings.max_inputs_bytes)
        created = await self.runs.create(record)
        if created.tick == 1 and not created.done:
            await self._publish(created)

    async def _child(self, run_id: str) -> RunRecord | None:
        """A child run as stored (the mirror when it shows it ended, which cannot change)."""
        known = self.runs.peek(run_id)
        if known is not None and known.done:
            return known
        try:
            return await self.runs.get(run_id)
        except NotFound:
            return None

    async def _notify_parent(self, child: RunRecord) -> None:
        """Wakes the step that started `child`, which just ended."""

        def wake(parent: RunRecord) -> RunRecord | None:
            if parent.done:
                return None
            return replace(parent, tick=parent.tick + 1, wake_at=s.now() + self._redrive_s)

        try:
            parent = await self.runs.update(child.parent, wake)
        except NotFound:
            return
        if not parent.done:
            await self._publish(parent)

    async def _cancel_children(self, run: RunRecord) -> None:
        """Cancels the children of the run's last step when it is a fan-out (the run was
        cancelled while it waited for them)."""
        last = run.history[-1] if run.history else None
        if last is None or last.kind not in fanout.KINDS or not isinstance(last.output, dict):
            return
        started = int(last.output.get("started", 0))
        await self._cancel_ids(fanout.child_ids(run, last.step_id, started))

    async def _cancel_ids(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            with contextlib.suppress(NotFound):
                await self.cancel(run_id)

    async def _fail_kind(self, run: RunRecord, step: Step, definition: Definition) -> None:
        message = expressions.render(step.spec["message"], s.context(await self.runs.expanded(run)))
        now = s.now()
        began = run if run.current is not None else None

        def change(r: RunRecord) -> RunRecord:
            start = r if began is not None else s.begin(r, step, now)
            error = error_of("FAILED_PRECONDITION", str(message))
            return s.fail_step(start, definition, error, now, self._redrive_s)

        await self._write(run, change)

    async def _fail(
        self,
        run: RunRecord,
        definition: Definition,
        error: dict[str, str],
        prepared: Callable[[RunRecord], RunRecord] | None = None,
    ) -> None:
        now = s.now()
        step = definition.steps[run.pending[0]]

        def change(r: RunRecord) -> RunRecord:
            if prepared is not None:
                r = prepared(r)
            began = s.begin(r, step, now) if r.current is None else r
            return s.fail_step(began, definition, error, now, self._redrive_s)

        await self._write(run, change)

    async def _write(
        self,
        run: RunRecord,
        change: Callable[[RunRecord], RunRecord | None],
        *,
        seen_at_once: bool = False,
    ) -> RunRecord | None:
        """Applies `change` when the run is still at `run`'s tick; publishes the advance that
        follows. None when another replica (or a cancel) moved the run on first. A write of a
        drive goes to the run's view at most every `view_every_s` (ADR 0056), unless
        `seen_at_once` (what the run will stay at for a while, such as a call in flight)."""
        applied: list[tuple[RunRecord, RunRecord]] = []

        driven = _DRIVEN.get()
        sealed = await self.runs.seal(run)  # its finished head dropped by this write, if 16
        if len(run.pending) <= 1:  # a write that may end the run: its outputs read every step
            await self.runs.load_chunks(run)  # (the sealed history in memory for `_finish`)

        def fenced(current: RunRecord) -> RunRecord | None:
            applied.clear()  # only what the last (written) attempt made counts
            if current.done or current.tick != run.tick:
                return None
            head = current.current
            if current.cancel_requested and head is not None and not head.attempt_open:
                ended = s.end(current, CANCELLED, s.now(), _cancelled())
                applied.append((current, ended))
                return ended
            new = change(current)
            if new is not None and new.done and new.state != CANCELLED and not new.outputs:
                new = self._finish(new)
            if new is not None and driven is not None:
                new = replace(new, driver=driven[0], driven_by=driven[2])
            if new is not None:
                new = sealed(new)
            if new is not None:
                applied.append((current, new))
            return new

        await self.runs.update(run.run_id, fenced, quiet=driven is not None and not seen_at_once)
        if not applied:
            return None
        before, written = applied[-1]
        metrics.changed(before, written)
        if written.done and written.parent:
            await self._notify_parent(written)
        if written.tick != run.tick and not written.done:
            if driven is not None:
                driven[1][:] = [written]  # the driver goes on with it (or publishes it)
            else:
                await self._publish(written)
        return written

    async def _readable(self, run: RunRecord, template: Any) -> RunRecord:
        """The run as expressions of `template` read it: with its sealed history when one
        reads `steps` (building it is O(steps) per step of a long run), else as it is."""
        return await self.runs.expanded(run) if expressions.reads(template, "steps") else run

    def _finish(self, run: RunRecord) -> RunRecord:
        if run.state != "SUCCEEDED":
            return run
        definition = self._workflows.cached(run.workflow, run.version)
        # The chunks of `run` were read before the write (seals change only after one).
        whole = self.runs.expanded_now(run) or run
        if run.trigger_kind == fanout.BRANCH:
            return replace(run, outputs=fanout.branch_outputs(whole))
        try:
            return replace(run, outputs=s.outputs(whole, definition) if definition else {})
        except expressions.ExpressionError as err:
            return replace(run, state=FAILED, error=error_of("INVALID_ARGUMENT", str(err)))

    async def _publish(self, run: RunRecord) -> None:
        await self._bus.publish(
            f"nexus.orchestrator.advance.{run.run_id}",
            events_pb2.RunAdvance(run_id=run.run_id),
            event_id=f"{run.run_id}:{run.tick}",
        )

    async def _definition(self, run: RunRecord) -> Definition:
        cached = self._workflows.cached(run.workflow, run.version)
        if cached is not None:
            return cached
        return self._workflows.definition(await self._workflows.get(run.workflow, run.version))

    async def _check_owner(self, run: RunRecord, method: str) -> None:
        """The key that registered the workflow may call `method` (not revoked, scoped).

        Raises:
            StepError: PERMISSION_DENIED when it may not (or is gone).
        """
        scope = required_scope(method)
        if not await owner_allows(self._keys, run.owner_key_id, scope):
            raise StepError(
                "PERMISSION_DENIED",
                f"the key that registered workflow {run.workflow!r} may not call {method} "
                f"(needs {scope or 'a valid key'}; revoked or missing keys may call nothing)",
            )

    def _attempt_timeout(self, step: Step) -> float:
        return step.timeout_s or self._settings.default_step_timeout_s

    # Timers.

    async def _wake_due(self) -> None:
        await self.runs.follow_writes(self._replicas.older_alive())
        if self._replicas.newly_silent():  # the runs it created and had not published yet
            await self.runs.catch_up()
        await self._hints.refresh()
        now = s.now()
        for run in self.runs.live():  # one pass over the mirror: due, or its driver stopped
            try:
                if 0 < run.wake_at <= now:
                    await self._wake(run, now)
                elif run.driven_by and not self._replicas.alive(run.driven_by):
                    await self._take_over(run, now)
            except Exception:  # the next scan tries again
                log.exception("cannot wake or take over run %s", run.run_id)

    async def _take_over(self, run: RunRecord, now: float) -> None:
        """Hands a run whose driving replica stopped beating to the queue."""

        def change(current: RunRecord) -> RunRecord | None:
            # Not fenced by the tick: the mirror may show a view of the run some steps behind
            # (ADR 0056); the stopped replica's own next write is fenced by the new tick.
            if current.done or current.driven_by != run.driven_by:
                return None
            return replace(
                current, tick=current.tick + 1, driven_by="", wake_at=now + self._redrive_s
            )

        if await self._bump(run.run_id, change):
            log.info("run %s: its replica %s stopped; taken over", run.run_id, run.driven_by)

    async def _wake(self, run: RunRecord, now: float) -> None:
        def change(current: RunRecord) -> RunRecord | None:
            if current.done or current.tick != run.tick or not current.wake_at:
                return None
            if current.wake_at > now:
                return None
            return replace(current, tick=current.tick + 1, wake_at=now + self._redrive_s)

        await self._bump(run.run_id, change)

    async def _bump(self, run_id: str, change: Callable[[RunRecord], RunRecord | None]) -> bool:
        """Applies `change` (a new tick) and publishes the run's advance when it was applied.
        Whether it was: the mirror that `change` was made from may show a view of the run some
        steps behind (ADR 0056), and then the run read back is not one to advance from here."""
        made: list[bool] = []

        def tracked(current: RunRecord) -> RunRecord | None:
            new = change(current)
            made[:] = [new is not None]  # only the last (written) attempt counts
            return new

        bumped = await self.runs.update(run_id, tracked)
        if made and made[0] and not bumped.done:
            await self._publish(bumped)
            return True
        return False


_KINDS: dict[str, Callable[[Engine, RunRecord, Step, Definition], Any]] = {
    "call": Engine._call,
    "publish": Engine._publish_step,
    "switch": Engine._switch,
    "sleep": Engine._sleep,
    "wait_signal": Engine._wait_signal,
    "wait_event": Engine._wait_event,
    "fail": Engine._fail_kind,
    "parallel": Engine._fan_out,
    "map": Engine._fan_out,
    "workflow": Engine._fan_out,
}


def _skipped(run: RunRecord, step: Step) -> bool:
    """Whether `step`, about to begin, has a condition that is false."""
    if run.current is not None or not step.condition:
        return False
    return not expressions.condition(step.condition, s.context(run))


def _unchanged(run: RunRecord) -> RunRecord:
    return run


def _cancelled() -> dict[str, str]:
    return error_of("CANCELLED", "cancelled")


def _check_size(output: Any, limit: int) -> None:
    if len(json.dumps(output)) > limit:
        raise StepError("RESOURCE_EXHAUSTED", f"the step's output is larger than {limit} bytes")
