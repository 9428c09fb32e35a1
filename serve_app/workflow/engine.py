"""The workflow engine: runs DAGs of steps through the task dispatcher.

Pure asyncio; the Coordinator owns one engine. Every state change is written to
the :class:`~serve_app.workflow.store.RunStore` before it is acted on. Ready
steps run concurrently; each step is an ordinary task submission (routing,
readiness, deadlines and error mapping are the dispatcher's), retried per its
policy. A run is owned through a lease, so after a Coordinator restart the new
replica claims unfinished runs and resumes them: finished steps keep their
results, steps that were in flight run again (at-least-once).

Scheduling costs what changed (:mod:`~serve_app.workflow.scheduler`). A map
step runs its elements through at most ``max_parallel`` workers and records
each finished element (group-committed), so a resumed map runs only the
elements that had not finished. A child workflow step starts a run whose id
is derived from the parent step, so a resumed parent finds it instead of
starting it twice. Runs with a concurrency key wait as ``queued`` until their
key has a free slot (:meth:`RunStore.admit`); every step sent to a pool takes
a slot of the engine's :class:`~serve_app.workflow.gate.PriorityGate` first.
"""

from __future__ import annotations

import asyncio
import copy
import contextvars
import hashlib
import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, Mapping

from serve_app.core import jsonio, result_refs
from serve_app.core.errors import Conflict, ErrorCode, NotFound, ServeflowError, Unavailable, ValidationFailed
from serve_app.core.models import ErrorInfo, TaskRequest, TaskResult
from serve_app.core.retry import Backoff
from serve_app.runtime import tracing
from serve_app.workflow.gate import PriorityGate
from serve_app.workflow.inputs import InputSchema
from serve_app.workflow.kept import MAX_REMAKES, KeptResults, lost_result
from serve_app.workflow.scheduler import Changes, Scheduler
from serve_app.workflow.spec import (
    MissingValue,
    StepSpec,
    WorkflowSpec,
    concurrency_key,
    map_items,
    parse_duration,
    parse_instant,
    resolve,
)
from serve_app.workflow.state import MapProgress, RunState, RunStatus, StepState, StepStatus
from serve_app.workflow.store import ItemOutcome, Lease, LeaseLost, RunStore

logger = logging.getLogger("serveflow.workflow")

SubmitTask = Callable[..., Awaitable[TaskResult]]  # (request, *, by_ref_over=None, refs=None, keep_object=True, reader_task_types=(), affinity=None, hand_off=False)
_EXECUTION_LEASE: contextvars.ContextVar[Lease] = contextvars.ContextVar("serveflow_execution_lease")

_DONE_READING = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED})  # a reader that needs its inputs no more
_CANCELLED = ErrorInfo(code=ErrorCode.CANCELLED.value, message="run was cancelled", retryable=False)
# How often a parent looks at a child run that another Coordinator drives.
_CHILD_POLL_S = 0.25
# The wake time of a run parked on signals that have no timeout (woken by the signal itself).
_NEVER = 1e12
# Errors that mean the task was refused before it ran.
_NOT_STARTED = (ErrorCode.NOT_READY.value, ErrorCode.OVERLOADED.value)
# Between tries of a step whose pool refused it (starting, queue full).
_NOT_STARTED_BACKOFF = Backoff(initial_s=0.1, max_s=2.0)


def child_run_id(parent_run_id: str, step: str, index: int | None = None) -> str:
    """The id of the child run a parent step starts: derived, so a resumed parent finds it again."""
    key = f"{parent_run_id}/{step}" + ("" if index is None else f"/{index}")
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def request_hash(workflow: str, run_input: Mapping[str, Any]) -> str:
    """Fingerprint of a start request, to tell a true retry from a reused idempotency key."""
    doc = json.dumps({"workflow": workflow, "input": run_input}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


class RunEngine:
    """Starts, executes, cancels and resumes workflow runs."""

    def __init__(
        self,
        store: RunStore,
        submit: SubmitTask,
        workflows: Mapping[str, WorkflowSpec],
        *,
        owner: str,
        lease_s: float = 10.0,
        cancel_poll_s: float = 0.5,
        step_start_timeout_s: float = 300.0,
        max_inflight_steps: int = 256,
        result_by_ref_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._submit = submit
        self._workflows = dict(workflows)
        self._owner = owner
        self._lease_s = lease_s
        self._clock = clock
        self._cancel_poll_s = cancel_poll_s
        self._cancel_checked: dict[str, float] = {}
        self._active: dict[str, asyncio.Task[None]] = {}
        self._cancel: dict[str, asyncio.Event] = {}
        self._epochs: dict[str, int] = {}  # lease epoch of each run driven here
        self._start_timeout_s = step_start_timeout_s
        self._inputs = {n: InputSchema(n, s.input_schema) for n, s in self._workflows.items() if s.input_schema is not None}
        self._closing = False
        self.gate = PriorityGate(max_inflight_steps)
        self._poke: dict[str, asyncio.Event] = {}  # set when a signal for a run driven here arrives
        self._timers: set[asyncio.TimerHandle] = set()
        self._by_ref_over = result_by_ref_bytes
        self._kept: dict[str, KeptResults] = {}  # results kept by reference, per run driven here

    @property
    def workflows(self) -> dict[str, WorkflowSpec]:
        return dict(self._workflows)

    @property
    def active_runs(self) -> list[str]:
        return list(self._active)

    # ------------------------------------------------------------------ API

    async def start(
        self,
        workflow: str,
        run_input: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        priority: int | None = None,
        parent: tuple[str, str] | None = None,
        run_id: str | None = None,
        concurrency: str | None = None,
    ) -> tuple[RunState, bool]:
        """Persist a new run and start executing it (or queue it behind its concurrency key); an
        idempotency key seen before returns that run. ``parent`` is (run id, step) of a child run."""
        spec = self._workflows.get(workflow)
        if spec is None:
            raise NotFound(f"unknown workflow {workflow!r}", details={"known_workflows": sorted(self._workflows)})
        if workflow in self._inputs:
            self._inputs[workflow].check(run_input)  # refused before anything is stored
        try:
            key = concurrency if concurrency is not None else concurrency_key(spec, run_input)
        except MissingValue as exc:
            template = spec.concurrency.key if spec.concurrency else ""
            loc = ["input", *template.strip("${}").split(".")[1:]]
            raise ValidationFailed(
                f"run input: concurrency key {template}: {exc}",
                details={"errors": [{"loc": loc, "msg": str(exc), "type": "concurrency_key"}]},
            ) from None
        now = self._clock()
        run = RunState(
            run_id=run_id or uuid.uuid4().hex,
            workflow=workflow,
            # A run without a concurrency key starts at once: it is stored as running.
            status=RunStatus.QUEUED if key is not None else RunStatus.RUNNING,
            started_at=None if key is not None else now,
            input=dict(run_input),
            idempotency_key=idempotency_key,
            created_at=now,
            trace_id=tracing.trace_id_hex(),
            parent_run_id=parent[0] if parent else None,
            parent_step=parent[1] if parent else None,
            concurrency_key=key,
            priority=priority if priority is not None else spec.priority,
            steps=[StepState(name=s.name, task_type=s.target) for s in spec.steps],
        )
        # What cannot be rendered is never accepted. The rest of the record is the engine's own
        # (names from the validated definition, ids, times), so the caller's values are checked.
        jsonio.checked(
            [run.input, run.run_id, idempotency_key, key], lambda why: ValidationFailed(f"run input cannot be stored: {why}")
        )
        stored, created = await self._store.create_run(
            run, spec.model_dump_json(), request_hash(workflow, run_input), self._owner, self._lease_s
        )
        if created and key is None:
            # The new run is handed over as it was stored: its execution reads nothing back. Its
            # copy shares nothing the engine changes (a new run's steps hold nothing nested yet).
            fresh = stored.model_copy(
                update={"input": copy.deepcopy(stored.input), "steps": [st.model_copy() for st in stored.steps]}
            )
            self._launch(stored.run_id, spec, epoch=1, fresh=fresh)
        elif created:
            await self._admit(key)
            stored = await self.get(stored.run_id)  # pending now, or queued with its position
        return stored, created

    async def _admit(self, key: str) -> None:
        """Start the queued runs of ``key`` that now have a slot (they are leased to this engine).
        A key is ``<workflow>:<value>`` (the workflow's limit applies) or another line of one run
        at a time (a schedule's)."""
        if self._closing:
            return
        spec = self._workflows.get(key.split(":", 1)[0])
        max_runs = spec.concurrency.max_runs if spec is not None and spec.concurrency is not None else 1
        for run_id, epoch in await self._store.admit(key, max_runs, self._owner, self._lease_s):
            run_spec = WorkflowSpec.model_validate_json(await self._store.get_spec(run_id))
            logger.info("run %s admitted (concurrency key %s)", run_id, key)
            self._launch(run_id, run_spec, epoch=epoch)

    async def get(self, run_id: str) -> RunState:
        run = await self._store.get_run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run

    async def wait(self, run_id: str, timeout_s: float) -> RunState:
        """The run's state once it is finished, or as it is after ``timeout_s``. A run may stop
        being driven here without finishing (parked on a sleep or a signal, or taken over)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if run_id in self._active:  # driven here: its end is awaited, not polled
                await self._settle(run_id, deadline - time.monotonic())
            run = await self.get(run_id)
            left = deadline - time.monotonic()
            if run.status.terminal or left <= 0:
                return run
            if run_id not in self._active:
                await asyncio.sleep(min(0.2, left))

    async def cancel(self, run_id: str, *, wait_s: float = 10.0) -> RunState:
        """Cancel a run: in-flight steps are cancelled, pending ones never start. Idempotent."""
        run = await self.get(run_id)
        if run.status.terminal:
            return run
        if run.status is RunStatus.QUEUED and await self._store.cancel_queued(run_id, _CANCELLED, self._clock()):
            return await self.get(run_id)  # nobody drove it: it ends here
        await self._store.request_cancel(run_id)
        event = self._cancel.get(run_id)
        if event is None and await self._store.wake(run_id):  # parked: claim it, so it ends now
            await self.resume()
            event = self._cancel.get(run_id)
        if event is not None:  # executing here: stop it now
            event.set()
            await self._settle(run_id, wait_s)
        return await self.get(run_id)

    async def signal(self, run_id: str, name: str, payload: Any, *, signal_id: str | None = None) -> tuple[RunState, bool]:
        """Deliver signal ``name`` to a run: kept until a step waiting for it takes it (it may come
        before the run reaches that step); the same ``signal_id`` again is ignored (False)."""
        run = await self.get(run_id)
        spec = WorkflowSpec.model_validate_json(await self._store.get_spec(run_id))
        names = sorted({s.wait_for.signal for s in spec.steps if s.wait_for is not None})
        if name not in names:
            raise NotFound(
                f"run {run_id} ({run.workflow}) waits for no signal {name!r}", details={"signals": names, "run_id": run_id}
            )
        if run.status.terminal:
            if signal_id is not None and await self._store.has_signal(run_id, signal_id):
                return run, False  # a retry of a signal that was delivered: the same answer, not an error
            raise Conflict(f"run {run_id} is {run.status.value}; it takes no more signals", details={"run_id": run_id})
        jsonio.checked(payload, lambda why: ValidationFailed(f"signal payload cannot be stored: {why}"))
        created = await self._store.add_signal(run_id, name, signal_id or uuid.uuid4().hex, payload, self._clock())
        if created:
            poke = self._poke.get(run_id)
            if poke is not None:
                poke.set()  # driven here: look now
            else:
                await self.resume()  # parked: claim it now rather than at the next lease tick
        return await self.get(run_id), created

    async def _settle(self, run_id: str, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for this engine's execution of ``run_id`` to end (without cancelling it)."""
        task = self._active.get(run_id)
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except asyncio.TimeoutError:
                pass

    async def list(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent_run_id: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[RunState]:
        return await self._store.list_runs(
            status=status, workflow=workflow, parent_run_id=parent_run_id, limit=limit, before=before
        )

    async def resume(self) -> list[str]:
        """Claim unfinished runs whose owner's lease lapsed, and execute them here."""
        if self._closing:
            return []
        resumed = []
        for run_id, epoch in await self._store.claim_unfinished(self._owner, self._lease_s):
            spec = WorkflowSpec.model_validate_json(await self._store.get_spec(run_id))
            logger.info("resuming run %s of %s (lease epoch %d)", run_id, spec.name, epoch)
            self._launch(run_id, spec, epoch=epoch)
            resumed.append(run_id)
        # Queued runs whose key has a free slot that nobody took (e.g. a Coordinator died between
        # finishing a run and admitting the next).
        for key in await self._store.queued_keys():
            await self._admit(key)
        return resumed

    async def renew_leases(self) -> None:
        """Extend our leases; a run whose lease another replica took is stopped here at once."""
        if not self._epochs:
            return
        for run_id in await self._store.renew(self._owner, dict(self._epochs), self._lease_s):
            task = self._active.get(run_id)
            if task is not None:
                logger.warning("run %s: lease lost; another Coordinator drives it now", run_id)
                task.cancel()

    async def shutdown(self) -> None:
        """Stop executing; the runs stay unfinished in the store and their leases are
        released so the next owner resumes them at once. Claims nothing after it starts."""
        self._closing = True
        for timer in self._timers:
            timer.cancel()
        active = dict(self._active)
        leases = {run_id: self._lease(run_id) for run_id in active}
        for t in active.values():
            t.cancel()
        await asyncio.gather(*active.values(), return_exceptions=True)
        for run_id, lease in leases.items():
            await self._store.release(run_id, lease)

    def _lease(self, run_id: str) -> Lease:
        """The lease an execution writes under: bound once when the execution starts, so an old
        execution still winding down after a re-claim never writes with the new epoch."""
        bound = _EXECUTION_LEASE.get(None)
        return bound if bound is not None else Lease(self._owner, self._epochs[run_id])

    # ------------------------------------------------------------------ execution

    def _launch(self, run_id: str, spec: WorkflowSpec, *, epoch: int, fresh: RunState | None = None) -> None:
        if run_id in self._active:
            # Claimed again at a newer epoch while the old execution winds down: it is fenced out.
            self._active[run_id].cancel()
        self._epochs[run_id] = epoch
        self._cancel[run_id] = asyncio.Event()
        self._poke[run_id] = asyncio.Event()
        if fresh is not None:
            # Nobody can have cancelled a run this engine just created through another replica
            # yet: the first look at the store's cancel flag waits one cancel_poll_s like later ones.
            self._cancel_checked[run_id] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._execute(run_id, spec, epoch, fresh), name=f"run-{run_id}")
        self._active[run_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._active.get(run_id) is not t:
                return  # a newer execution of the same run took over these slots
            self._active.pop(run_id, None)
            self._cancel.pop(run_id, None)
            self._epochs.pop(run_id, None)
            self._cancel_checked.pop(run_id, None)
            self._poke.pop(run_id, None)
            if not t.cancelled() and t.exception() is not None:
                logger.error("run %s crashed", run_id, exc_info=t.exception())

        task.add_done_callback(done)

    async def _execute(self, run_id: str, spec: WorkflowSpec, epoch: int, fresh: RunState | None = None) -> None:
        _EXECUTION_LEASE.set(Lease(self._owner, epoch))  # this task's context and its step tasks'
        if self._by_ref_over is not None:
            self._kept[run_id] = KeptResults(spec, self._by_ref_over)
        with tracing.start_span(f"Run:{spec.name}", attributes={"serveflow.run_id": run_id}):
            try:
                run = fresh if fresh is not None else await self.get(run_id)
                if run.status.terminal:
                    return
                if run.status is RunStatus.PENDING:
                    run.status, run.started_at = RunStatus.RUNNING, self._clock()
                    await self._store.save_run(run, self._lease(run_id))
                await self._drive(run, spec)
            except LeaseLost as lost:
                # Fenced out: another Coordinator claimed the run. Write nothing more, release nothing.
                logger.warning("run %s: %s; stopped driving it here", run_id, lost)
            finally:
                self._kept.pop(run_id, None)  # its kept results go with it (made again if needed)

    async def _drive(self, run: RunState, spec: WorkflowSpec) -> None:
        states = {s.name: s for s in run.steps}
        steps = {s.name: s for s in spec.steps}
        results = {s.name: s.result for s in run.steps if s.status is StepStatus.SUCCEEDED}
        scheduler = Scheduler([s.name for s in spec.steps], spec.dependencies(), {n: st.status for n, st in states.items()})
        running: dict[asyncio.Task[StepState], str] = {}
        waiting: dict[str, float | None] = {}  # steps waiting for time or a signal -> their deadline
        cancel_event, poke = self._cancel[run.run_id], self._poke[run.run_id]
        unwritten = _Unwritten(self._store, run.run_id)
        fatal: StepState | None = None
        cancelled = False
        changes = scheduler.start()
        signals_checked = 0.0
        cancel_waiter: asyncio.Future[Any] | None = None
        poke_waiter: asyncio.Future[Any] | None = None

        def ended(st: StepState) -> None:
            nonlocal fatal
            states[st.name] = st
            if st.status is StepStatus.SUCCEEDED:
                results[st.name] = st.result
            elif st.status is StepStatus.FAILED and steps[st.name].on_failure == "fail_run" and fatal is None:
                fatal = st
            more = scheduler.finished(st.name, st.status)
            changes.ready += more.ready
            changes.skipped += more.skipped

        try:
            while True:
                if cancel_event.is_set() or await self._remote_cancel(run.run_id):
                    cancelled = True
                    break
                carried = False  # a step started now writes the unwritten with its write-ahead
                if fatal is None:
                    ready, skipped = changes.ready, changes.skipped
                    changes = Changes()
                    for name in skipped:  # upstream failed (continue) or was skipped
                        await self._close_step(run.run_id, states[name], StepStatus.SKIPPED)
                    for name in ready:
                        if steps[name].waits:
                            deadline = await self._begin_wait(run, steps[name], states[name], results)
                            if states[name].status.terminal:
                                ended(states[name])
                            else:
                                waiting[name] = deadline
                            continue
                        # A step recorded as running was in flight when a previous owner stopped: it runs again.
                        carry = unwritten if _plain_task(steps[name]) else None
                        carried = carried or carry is not None
                        task = asyncio.get_running_loop().create_task(
                            self._run_step(run, spec, steps[name], states[name], results, carry)
                        )
                        running[task] = name
                    if waiting:
                        # Signals are read when poked, every cancel_poll_s, and always before parking.
                        look = poke.is_set() or not running or time.monotonic() - signals_checked >= self._cancel_poll_s
                        if look:
                            poke.clear()
                            signals_checked = time.monotonic()
                        for name in await self._settle_waits(run, steps, states, waiting, look):
                            del waiting[name]
                            ended(states[name])
                    if changes.ready or changes.skipped:
                        continue  # start what the waits just released
                if not running:
                    if waiting and fatal is None:
                        await unwritten.write(self._lease(run.run_id))
                        await self._park(run, steps, waiting)
                        return  # parked: claimed again when it is due or a signal comes
                    break
                if unwritten and not carried:
                    await unwritten.write(self._lease(run.run_id))
                # Woken by a step ending, a cancel, or (while a step waits for one) a signal. The
                # waiters live across turns: one per turn cost a step two tasks and their cancels.
                cancel_waiter = cancel_waiter or asyncio.ensure_future(cancel_event.wait())
                if waiting and (poke_waiter is None or poke_waiter.done()):
                    poke_waiter = asyncio.ensure_future(poke.wait())
                waiters = [cancel_waiter, *([poke_waiter] if waiting and poke_waiter else [])]
                # The timeout bounds how late a cancel made through another replica (or a signal
                # delivered to it) is seen, and wakes a sleep that ends while other steps run.
                timeout = self._cancel_poll_s
                due = [d for d in waiting.values() if d is not None]
                if due:
                    timeout = max(0.0, min(timeout, min(due) - self._clock()))
                done, _ = await asyncio.wait([*running, *waiters], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task in waiters:
                        continue
                    name = running.pop(task)  # type: ignore[arg-type]
                    if task.cancelled():  # cancelled after a fatal failure elsewhere
                        await self._end_interrupted(run.run_id, states[name], results)
                        continue
                    ended(task.result())  # type: ignore[arg-type]
                    if _plain_task(steps[name]):
                        unwritten.add(states[name])
                if fatal is not None and running:
                    for task in running:
                        task.cancel()
        finally:
            for waiter in (cancel_waiter, poke_waiter):
                if waiter is not None:
                    waiter.cancel()
            # Cancelled in-flight steps (cancel, fatal failure, or engine shutdown).
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        for name in running.values():
            await self._end_interrupted(run.run_id, states[name], results)
        await self._finish(run, spec, states, results, fatal, cancelled, unwritten)

    # ------------------------------------------------------------------ waits: sleep, sleep_until, wait_for

    async def _begin_wait(self, run: RunState, step: StepSpec, st: StepState, results: Mapping[str, Any]) -> float | None:
        """Start (or, after a restart, pick up) a waiting step; returns its deadline. The deadline
        is recorded with the step, so a resumed run wakes when it was due, not later."""
        lease = self._lease(run.run_id)
        if not await self._condition_holds(run, step, st, results, lease):
            return None
        if st.status is StepStatus.RUNNING and (st.wake_at is not None or step.wait_for is not None):
            return st.wake_at  # resumed: the same deadline
        now = self._clock()
        try:
            if step.sleep is not None:
                deadline: float | None = now + parse_duration(resolve(step.sleep, run.input, results))
            elif step.sleep_until is not None:
                deadline = parse_instant(resolve(step.sleep_until, run.input, results))
            else:
                assert step.wait_for is not None
                timeout = step.wait_for.timeout_s()
                deadline = None if timeout is None else now + timeout
        except (MissingValue, ValueError) as exc:
            st.status, st.error = StepStatus.FAILED, _invalid(step, "sleep" if step.wait_for is None else "wait_for", exc)
            st.started_at, st.finished_at = st.started_at or now, now
            await self._store.save_step(run.run_id, st, lease)
            return None
        st.status, st.error, st.wake_at = StepStatus.RUNNING, None, deadline
        st.started_at, st.attempts = st.started_at or now, max(st.attempts, 1)
        await self._store.save_step(run.run_id, st, lease)  # write-ahead: the deadline is on record
        return deadline

    async def _settle_waits(
        self,
        run: RunState,
        steps: Mapping[str, StepSpec],
        states: Mapping[str, StepState],
        waiting: Mapping[str, float | None],
        look_for_signals: bool,
    ) -> list[str]:
        """End the waits that are over: a sleep whose time came, a signal that arrived (its payload
        is the result), a signal wait past its timeout (failed or skipped, by its policy)."""
        lease = self._lease(run.run_id)
        now = self._clock()
        over = []
        for name, deadline in waiting.items():
            step, st = steps[name], states[name]
            if step.wait_for is not None:
                found, payload = (False, None)
                if look_for_signals or (deadline is not None and now >= deadline):
                    found, payload = await self._store.take_signal(run.run_id, step.wait_for.signal, name, lease)
                if found:
                    st.status, st.result = StepStatus.SUCCEEDED, payload
                elif deadline is not None and now >= deadline:
                    if step.wait_for.on_timeout == "skip":
                        st.status = StepStatus.SKIPPED
                    else:
                        st.status = StepStatus.FAILED
                        st.error = ErrorInfo(
                            code=ErrorCode.TIMEOUT.value,
                            message=f"step {name!r}: no {step.wait_for.signal!r} signal within {step.wait_for.timeout}",
                            retryable=False,
                            details={"step": name, "signal": step.wait_for.signal},
                        )
                else:
                    continue
            elif deadline is None or now >= deadline:
                st.status, st.result = StepStatus.SUCCEEDED, {"woke_at": now, "due_at": deadline}
            else:
                continue
            st.finished_at = now
            await self._store.save_step(run.run_id, st, lease)
            over.append(name)
        return over

    async def _park(self, run: RunState, steps: Mapping[str, StepSpec], waiting: Mapping[str, float | None]) -> None:
        """Nothing runs, something waits: give the run up until the first deadline (or a signal)."""
        due = [d for d in waiting.values() if d is not None]
        wake_at = min(due) if due else _NEVER
        signals = sorted({steps[n].wait_for.signal for n in waiting if steps[n].wait_for is not None})  # type: ignore[union-attr]
        await self._store.park(run.run_id, wake_at, signals, self._lease(run.run_id))
        logger.info("run %s parked until %s (signals: %s)", run.run_id, wake_at, signals or "-")
        if wake_at < _NEVER:
            self._claim_at(wake_at)  # due: claimed here at once if this Coordinator still lives
        if signals:
            # A signal that came between the last look and the park made it claimable at once.
            self._claim_at(self._clock() + self._cancel_poll_s)

    def _claim_at(self, when: float) -> None:
        """Look for claimable runs at ``when`` (the lease loop does it anyway, less often)."""
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def due_now() -> None:
            self._timers.discard(timer)
            if not self._closing:
                loop.create_task(self.resume())

        timer = loop.call_later(max(0.0, when - self._clock()) + 0.01, due_now)
        self._timers.add(timer)

    async def _end_interrupted(self, run_id: str, st: StepState, results: dict[str, Any]) -> None:
        """Record a step whose task was cancelled: one that already has its outcome (it finished
        while the cancel was processed) keeps it; only a step still in flight becomes cancelled."""
        if st.status in (StepStatus.SUCCEEDED, StepStatus.FAILED):
            if st.status is StepStatus.SUCCEEDED:
                results[st.name] = st.result
            st.finished_at = st.finished_at or self._clock()
            await self._store.save_step(run_id, st, self._lease(run_id))
        else:
            await self._close_step(run_id, st, StepStatus.CANCELLED)

    async def _close_step(self, run_id: str, st: StepState, status: StepStatus) -> None:
        """End a step the engine did not run to completion (cancelled or skipped), on record."""
        st.status, st.finished_at = status, self._clock()
        await self._store.save_step(run_id, st, self._lease(run_id))

    async def _remote_cancel(self, run_id: str) -> bool:
        """A cancel recorded in the store (e.g. through another replica), read at most every
        ``cancel_poll_s`` instead of on every scheduling step (a store round trip each)."""
        now = time.monotonic()
        if now - self._cancel_checked.get(run_id, 0.0) < self._cancel_poll_s:
            return False
        self._cancel_checked[run_id] = now
        return await self._store.cancel_requested(run_id)

    async def _finish(
        self,
        run: RunState,
        spec: WorkflowSpec,
        states: dict[str, StepState],
        results: dict[str, Any],
        fatal: StepState | None,
        cancelled: bool,
        unwritten: _Unwritten,
    ) -> None:
        leftover = StepStatus.CANCELLED if cancelled else StepStatus.SKIPPED
        for st in states.values():
            if not st.status.terminal:
                await self._close_step(run.run_id, st, leftover)
        if cancelled:
            run.status = RunStatus.CANCELLED
            run.error = _CANCELLED
        elif fatal is not None:
            run.status = RunStatus.FAILED
            # A run failed by a retryable step error (e.g. a pool that never became ready) may
            # succeed if started again.
            run.error = _because(fatal.error, f"step {fatal.name!r} failed", "step_error", step=fatal.name)
        else:
            run.status = RunStatus.SUCCEEDED
            # Default output: the results of the final steps that succeeded (skipped ones have none).
            finals = [n for n in spec.final_steps() if n in results]
            mapping = spec.output if spec.output is not None else {n: "${steps." + n + ".result}" for n in finals}
            try:
                run.output = resolve(mapping, run.input, results)
            except MissingValue as exc:
                run.status = RunStatus.FAILED
                run.error = ErrorInfo(code=ErrorCode.VALIDATION_ERROR.value, message=f"output: {exc}", retryable=False)
        if run.status is not RunStatus.SUCCEEDED and any(s.workflow for s in spec.steps):
            await self._cancel_children(run.run_id)  # a parent that ends early takes its children with it
        run.finished_at = self._clock()
        # Ended: the lease goes too, and the step ends not yet written go in the same write.
        await unwritten.write(self._lease(run.run_id), run=run)
        if run.concurrency_key is not None:
            try:
                await self._admit(run.concurrency_key)
            except Exception:  # the lease loop admits it later
                logger.warning("run %s: admitting the next run of %s failed", run.run_id, run.concurrency_key, exc_info=True)

    async def _cancel_children(self, run_id: str, step: str | None = None) -> None:
        for child in await self._store.list_runs(parent_run_id=run_id, limit=100_000):
            if not child.status.terminal and (step is None or child.parent_step == step):
                await self.cancel(child.run_id, wait_s=0)

    # ------------------------------------------------------------------ steps

    async def _run_step(
        self,
        run: RunState,
        spec: WorkflowSpec,
        step: StepSpec,
        st: StepState,
        results: dict[str, Any],
        carry: _Unwritten | None = None,
    ) -> StepState:
        """Run one step. ``st`` is the run's own step record: attempts survive a cancellation.
        With ``carry`` (a plain task step) the unwritten ends of earlier steps go with this
        step's write-ahead, and this step's own end is left for the caller to write."""
        with tracing.start_span(f"Step:{spec.name}.{step.name}", attributes={"serveflow.run_id": run.run_id}):
            lease = self._lease(run.run_id)
            if not await self._condition_holds(run, step, st, results, lease):
                self._release_read(run, st)
                return st
            st.status, st.error = StepStatus.RUNNING, None
            st.started_at = st.started_at or self._clock()
            if step.map is not None:
                await self._run_map(run, step, st, results, lease)
            else:
                if step.workflow is not None:
                    st.child_run_id = child_run_id(run.run_id, step.name)
                res, st.attempts = await self._attempts(
                    run, step, results, None, st.attempts, self._write_ahead(run.run_id, st, lease, carry)
                )
                st.status = StepStatus.SUCCEEDED if res.success else StepStatus.FAILED
                st.result, st.error = (res.result, None) if res.success else (None, res.error)
            st.finished_at = self._clock()
            self._release_read(run, st)
            if carry is None:
                await self._store.save_step(run.run_id, st, lease)
            return st

    def _release_read(self, run: RunState, st: StepState) -> None:
        """A step that succeeded or was skipped no longer needs the results kept by reference
        that it read: each goes as soon as all its readers are done, not with the run."""
        kept = self._kept.get(run.run_id)
        if kept is None or st.status not in _DONE_READING:
            return
        statuses: dict[str, StepStatus] = {}

        def done(name: str) -> bool:  # asked only when the step read a result still held
            if not statuses:
                statuses.update((s.name, s.status) for s in run.steps)
            return statuses.get(name) in _DONE_READING

        kept.release_read(st.name, done)

    async def _run_map(self, run: RunState, step: StepSpec, st: StepState, results: dict[str, Any], lease: Lease) -> None:
        """Run the step once per element, at most ``max_parallel`` at once, recording each finished
        element; elements finished before a restart are not run again."""
        assert step.map is not None
        try:
            items = map_items(step, run.input, results)
        except MissingValue as exc:
            st.status, st.error = StepStatus.FAILED, _invalid(step, "map", exc, over=step.map.over)
            return
        st.map = MapProgress(total=len(items))
        # Elements are recorded only after a write-ahead with attempts >= 1: a step never started
        # before (by any owner) has none to read back.
        first_start = st.attempts == 0
        st.attempts += 1
        await self._store.save_step(run.run_id, st, lease)  # write-ahead: the map and its size are on record
        done = {} if first_start else await self._store.load_items(run.run_id, step.name)
        gathered: list[Any] = [None] * len(items)
        failures: list[ItemOutcome] = []
        for outcome in done.values():
            if outcome.status is StepStatus.SUCCEEDED:
                gathered[outcome.index] = outcome.result
            else:
                failures.append(outcome)
        stop_on_failure = step.map.on_item_failure == "fail_step"
        todo = iter([i for i in range(len(items)) if i not in done])
        remaining = len(items) - len(done)
        del done
        writer = _ItemWriter(self._store, run.run_id, step.name, lease)

        async def worker() -> None:
            for i in todo:  # one shared iterator: each worker takes the next element
                if stop_on_failure and failures:
                    return
                res, attempts = await self._attempts(run, step, results, {"item": items[i], "index": i}, 0, None)
                if res.success:
                    gathered[i] = res.result
                    outcome = ItemOutcome(i, StepStatus.SUCCEEDED, attempts, res.result)
                else:
                    outcome = ItemOutcome(i, StepStatus.FAILED, attempts, error=res.error)
                    failures.append(outcome)
                await writer.record(outcome)

        if not (stop_on_failure and failures):
            workers = [asyncio.ensure_future(worker()) for _ in range(min(step.map.max_parallel, remaining))]
            try:
                pending = set(workers)
                while pending:
                    finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for w in finished:
                        w.result()  # LeaseLost, store errors: stop here
                    if stop_on_failure and failures:
                        break
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            await writer.flush()
        if stop_on_failure and failures:
            first = min(failures, key=lambda o: o.index)
            st.status = StepStatus.FAILED
            st.error = _because(
                first.error, f"step {step.name!r} element {first.index} failed", "item_error", step=step.name, index=first.index
            )
            if step.workflow is not None:
                await self._cancel_children(run.run_id, step.name)
            return
        st.status, st.result = StepStatus.SUCCEEDED, gathered

    def _write_ahead(
        self, run_id: str, st: StepState, lease: Lease, carry: _Unwritten | None = None
    ) -> Callable[[int], Awaitable[None]]:
        async def write_ahead(attempt: int) -> None:
            st.attempts = attempt
            if carry is None:
                await self._store.save_step(run_id, st, lease)  # the attempt is on record
            else:
                await carry.write(lease, st)  # with the ends of earlier steps not yet written

        return write_ahead

    async def _attempts(
        self,
        run: RunState,
        step: StepSpec,
        results: dict[str, Any],
        scope: Mapping[str, Any] | None,
        attempts: int,
        write_ahead: Callable[[int], Awaitable[None]] | None,
    ) -> tuple[TaskResult, int]:
        """:meth:`_unit`, after making again any upstream result kept by reference that is gone
        (the run was resumed, parked, or the worker or node holding it died)."""
        kept = self._kept.get(run.run_id)
        if kept is None:
            return await self._unit(run, step, results, scope, attempts, write_ahead)
        for remakes in range(MAX_REMAKES + 1):
            for name in kept.missing(step.name, results):
                failed = await self._remake(run, kept, name, results)
                if failed is not None:
                    return failed, attempts
            res, attempts = await self._unit(run, step, results, scope, attempts, write_ahead)
            lost = lost_result(res)
            if lost is None or remakes == MAX_REMAKES:
                break
            kept.forget(lost)
        if res.success:
            kept.keep(step.name, res)
        return res, attempts

    async def _remake(self, run: RunState, kept: KeptResults, name: str, results: dict[str, Any]) -> TaskResult | None:
        """Run step ``name`` again because its result, kept by reference, is gone; None when it
        is held again, else the failure for the step that needed it."""
        async with kept.lock(name):
            if kept.held(name):
                return None  # another dependant made it meanwhile
            producer = next((s for s in kept.spec.steps if s.name == name), None)
            st = next((s for s in run.steps if s.name == name), None)
            if producer is None or st is None:  # cannot happen: the reader's own definition names it
                return TaskResult.failure(Unavailable(f"the result of step {name!r} is gone and cannot be made again"))
            logger.info("run %s: making the result of step %s again (kept by reference, now gone)", run.run_id, name)
            lease = self._lease(run.run_id)
            res, st.attempts = await self._attempts(
                run, producer, results, None, st.attempts, self._write_ahead(run.run_id, st, lease)
            )
            if not res.success:
                return res.model_copy(
                    update={
                        "error": _because(
                            res.error, f"step {name!r} (made again: its result was gone)", "remake_error", step=name
                        )
                    }
                )
            st.result, results[name], st.finished_at = res.result, res.result, self._clock()
            await self._store.save_step(run.run_id, st, lease)
            return None

    async def _unit(
        self,
        run: RunState,
        step: StepSpec,
        results: Mapping[str, Any],
        scope: Mapping[str, Any] | None,
        attempts: int,
        write_ahead: Callable[[int], Awaitable[None]] | None,
    ) -> tuple[TaskResult, int]:
        """One task (or child run) of a step, with the step's retry policy; returns the last answer
        and the attempts made. A pool that refuses it (not ready, overloaded) spends no attempt,
        but the wait is bounded, so a pool that never becomes ready cannot hang the run."""
        refused_since: float | None = None
        refusals = 0
        while True:
            attempts += 1
            if write_ahead is not None:
                await write_ahead(attempts)
            res = await self._once(run, step, results, scope, attempts)
            if res.success or lost_result(res) is not None:
                return res, attempts  # a lost input is made again by the caller, not retried as is
            assert res.error is not None
            if res.error.code in _NOT_STARTED:
                attempts -= 1
                refusals += 1
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since >= self._start_timeout_s:
                    return res.model_copy(update={"error": self._start_timed_out(step, res.error, refusals)}), attempts
                await asyncio.sleep(_NOT_STARTED_BACKOFF.delay(refusals))
                continue
            refused_since, refusals = None, 0
            if not step.retry.should_retry(attempts, res.error.code, res.error.retryable):
                return res, attempts
            await asyncio.sleep(step.retry.backoff(attempts))

    async def _once(
        self, run: RunState, step: StepSpec, results: Mapping[str, Any], scope: Mapping[str, Any] | None, attempt: int
    ) -> TaskResult:
        index = scope["index"] if scope is not None else None
        where = f"step {step.name!r}" + (f" element {index}" if index is not None else "")
        try:
            payload = resolve(step.input, run.input, results, scope)
        except MissingValue as exc:
            return TaskResult.failure(ValidationFailed(f"{where} input: {exc}", details={"step": step.name, "index": index}))
        if step.workflow is not None:
            return await self._child(run, step, payload, index, where)
        element = "" if index is None else f".i{index}"
        request = TaskRequest(
            task_type=step.task_type,
            payload=payload,
            task_id=f"{run.run_id}.{step.name}{element}.{attempt}",
            timeout_s=step.timeout_s,
        )
        kept = self._kept.get(run.run_id)
        async with self.gate.slot(run.priority):
            if kept is None:
                return await self._submit(request)
            gone = kept.missing(step.name, results)
            if gone:  # dropped since the caller looked: never send a marker in place of the value
                return TaskResult.failure(result_refs.lost(gone[0], "is gone"))
            return await self._submit(
                request,
                by_ref_over=kept.by_ref_over(step),
                refs=kept.inputs(step.name, results),
                keep_object=kept.read_by_a_step(step.name),
                reader_task_types=kept.reader_task_types(step.name),
                affinity=kept.affinity(run.run_id, step.name),
                hand_off=kept.hand_off(step.name),
            )

    async def _child(self, run: RunState, step: StepSpec, payload: dict[str, Any], index: int | None, where: str) -> TaskResult:
        """Start the step's child run (or find it, after a restart) and wait for its end."""
        assert step.workflow is not None
        run_id = child_run_id(run.run_id, step.name, index)
        try:
            child, _ = await self.start(
                step.workflow,
                payload,
                idempotency_key=f"child.{run_id}",
                priority=run.priority,
                parent=(run.run_id, step.name),
                run_id=run_id,
            )
            child = await self._await_run(child.run_id, step.timeout_s)
        except ServeflowError as exc:
            return TaskResult.failure(exc.with_details(step=step.name, child_run_id=run_id))
        if child is None:  # the step's deadline passed first: the child goes too
            await self.cancel(run_id, wait_s=0)
            return TaskResult(
                success=False,
                error=ErrorInfo(
                    code=ErrorCode.TIMEOUT.value,
                    message=f"{where}: child run {run_id} did not finish within {step.timeout_s:g}s",
                    retryable=True,
                    details={"step": step.name, "child_run_id": run_id},
                ),
            )
        if child.status is RunStatus.SUCCEEDED:
            return TaskResult(success=True, result=child.output)
        error = _because(
            child.error,
            f"{where}: child run {run_id} of {child.workflow!r} {child.status.value}",
            "child_error",
            missing="no error recorded",
            step=step.name,
            child_run_id=run_id,
        )
        return TaskResult(success=False, error=error)

    async def _await_run(self, run_id: str, timeout_s: float | None) -> RunState | None:
        """The run once it has ended, or None after ``timeout_s``. A run driven here is awaited
        directly; one driven by another Coordinator is read from the store every so often."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            run = await self.get(run_id)
            if run.status.terminal:
                return run
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            task = self._active.get(run_id)
            wait = _CHILD_POLL_S if left is None else min(_CHILD_POLL_S, left)
            if task is not None:
                await asyncio.wait({task}, timeout=None if left is None else left)
            else:
                await asyncio.sleep(wait)

    async def _condition_holds(
        self, run: RunState, step: StepSpec, st: StepState, results: Mapping[str, Any], lease: Lease
    ) -> bool:
        """Evaluate the step's ``when:``; a false one skips it (dependants follow, as for any skipped
        step), and one that reads a missing value fails it, naming the step. Both are recorded."""
        condition = step.condition()
        if condition is None:
            return True
        try:
            if condition.evaluate(run.input, results):
                return True
            st.status = StepStatus.SKIPPED
        except MissingValue as exc:
            st.status, st.error = StepStatus.FAILED, _invalid(step, "when", exc, when=step.when)
        st.started_at = st.started_at or self._clock()
        st.finished_at = self._clock()
        await self._store.save_step(run.run_id, st, lease)
        return False

    def _start_timed_out(self, step: StepSpec, last: ErrorInfo, refusals: int) -> ErrorInfo:
        return ErrorInfo(
            code=last.code,
            message=f"step {step.name!r} could not start within {self._start_timeout_s:g}s: {last.message}",
            retryable=True,
            details={"step": step.name, "refusals": refusals, "start_timeout_s": self._start_timeout_s, "last_error": last.code},
        )


def _plain_task(step: StepSpec) -> bool:
    """A step that is one task: no condition, map, child run or wait (those write as they go)."""
    return step.when is None and step.map is None and step.workflow is None and not step.waits


def _because(err: ErrorInfo | None, what: str, cause: str, *, missing: str = "unknown error", **details: Any) -> ErrorInfo:
    """``what`` failed because of ``err`` (a step's, an element's or a child run's error): its code
    and retryability, the message prefixed, the inner error kept whole under ``details[cause]``."""
    return ErrorInfo(
        code=err.code if err else ErrorCode.INTERNAL.value,
        message=f"{what}: {err.message if err else missing}",
        retryable=bool(err and err.retryable),
        details={**details, cause: err.model_dump(mode="json") if err else None},
    )


def _invalid(step: StepSpec, what: str, exc: MissingValue, **details: Any) -> ErrorInfo:
    """A step's own definition met a run-time value it cannot use (a map over a non-list, a
    condition over a missing value): the step fails, named, not retryable."""
    return ErrorInfo(
        code=ErrorCode.VALIDATION_ERROR.value,
        message=f"step {step.name!r} {what}: {exc}",
        retryable=False,
        details={"step": step.name, **details},
    )


class _Unwritten:
    """Final states of task steps that ended and are not on record yet.

    The next task step to start writes them beside its own write-ahead
    (:meth:`RunStore.save_steps`: one commit on SQLite), so in a chain a step
    costs one store round trip instead of two; the drive writes what is left before it
    waits with nothing started, parks or finishes. Until then a crash makes such a step
    run again, as it would a step in flight (at-least-once). Writing a state twice is
    harmless: it is the same record."""

    def __init__(self, store: RunStore, run_id: str) -> None:
        self._store, self._run_id = store, run_id
        self._states: list[StepState] = []

    def add(self, st: StepState) -> None:
        self._states.append(st)

    def __bool__(self) -> bool:
        return bool(self._states)

    async def write(self, lease: Lease, *beside: StepState, run: RunState | None = None) -> None:
        """Write them (and ``beside``) now; any not known to be written stays for the next write.
        With ``run``: the run's end, written with them (which releases the lease)."""
        taken, self._states = self._states, []
        states = (*beside, *taken)
        try:
            if run is not None:
                await self._store.save_run(run, lease, release=True, steps=states)
            elif states:
                await self._store.save_steps(self._run_id, states, lease)
        except BaseException:
            self._states = taken + self._states
            raise


class _ItemWriter:
    """Records finished map elements with group commit: the first element to finish writes; those
    finishing meanwhile are written by it in the next batch, so a store round trip is shared by
    every element that finished during the previous one. At most ``max_unwritten`` finished
    elements wait for a write (more hold their worker back), which bounds what a crash can make
    run again: the elements in flight plus those."""

    def __init__(self, store: RunStore, run_id: str, step: str, lease: Lease, max_unwritten: int = 256) -> None:
        self._store, self._run_id, self._step, self._lease = store, run_id, step, lease
        self._max_unwritten = max_unwritten
        self._batch: list[ItemOutcome] = []
        self._writing = False
        self._written = asyncio.Event()

    async def record(self, outcome: ItemOutcome) -> None:
        self._batch.append(outcome)
        if not self._writing:
            await self.flush()
        while self._writing and len(self._batch) >= self._max_unwritten:
            await self._written.wait()  # backpressure: the writer is behind

    async def flush(self) -> None:
        if self._writing:
            return
        self._writing = True
        self._written = asyncio.Event()  # set after each batch written, and when writing stops
        try:
            # One turn of the loop first: elements finishing in it join this batch (a write on the
            # loop would otherwise end before any other element could, one commit per element).
            await asyncio.sleep(0)
            while self._batch:
                batch, self._batch = self._batch, []
                try:
                    await self._store.save_items(self._run_id, self._step, batch, self._lease)
                except BaseException:
                    self._batch = batch + self._batch  # unwritten: the next flush (or a resume) takes them
                    raise
                written, self._written = self._written, asyncio.Event()
                written.set()
        finally:
            self._writing = False
            self._written.set()
