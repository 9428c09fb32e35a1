"""The workflow engine: runs DAGs of steps through the task dispatcher.

Pure asyncio; the Coordinator owns one engine. Every state change is written to
the :class:`~serve_app.workflow.store.RunStore` before it is acted on. Ready
steps run concurrently; each step is an ordinary task submission (routing,
readiness, deadlines and error mapping are the dispatcher's), retried per its
policy. A run is owned through a lease, so after a Coordinator restart the new
replica claims unfinished runs and resumes them: finished steps keep their
results, steps that were in flight run again (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, Mapping

from serve_app.core import jsonio
from serve_app.core.errors import ErrorCode, NotFound, ValidationFailed
from serve_app.core.models import ErrorInfo, TaskRequest, TaskResult
from serve_app.core.retry import Backoff
from serve_app.runtime import tracing
from serve_app.workflow.inputs import InputSchema
from serve_app.workflow.spec import MissingValue, StepSpec, WorkflowSpec, resolve
from serve_app.workflow.state import RunState, RunStatus, StepState, StepStatus
from serve_app.workflow.store import Lease, LeaseLost, RunStore

logger = logging.getLogger("serveflow.workflow")

SubmitTask = Callable[[TaskRequest], Awaitable[TaskResult]]
_EXECUTION_LEASE: contextvars.ContextVar[Lease] = contextvars.ContextVar("serveflow_execution_lease")

_BLOCKING = (StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED)
# Errors that mean the task was refused before it ran.
_NOT_STARTED = (ErrorCode.NOT_READY.value, ErrorCode.OVERLOADED.value)
# Between tries of a step whose pool refused it (starting, queue full).
_NOT_STARTED_BACKOFF = Backoff(initial_s=0.1, max_s=2.0)


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

    @property
    def workflows(self) -> dict[str, WorkflowSpec]:
        return dict(self._workflows)

    @property
    def active_runs(self) -> list[str]:
        return list(self._active)

    # ------------------------------------------------------------------ API

    async def start(
        self, workflow: str, run_input: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[RunState, bool]:
        """Persist a new run and start executing it; an idempotency key seen before returns that run."""
        spec = self._workflows.get(workflow)
        if spec is None:
            raise NotFound(f"unknown workflow {workflow!r}", details={"known_workflows": sorted(self._workflows)})
        if workflow in self._inputs:
            self._inputs[workflow].check(run_input)  # refused before anything is stored
        run = RunState(
            run_id=uuid.uuid4().hex,
            workflow=workflow,
            input=dict(run_input),
            idempotency_key=idempotency_key,
            created_at=self._clock(),
            trace_id=tracing.trace_id_hex(),
            steps=[StepState(name=s.name, task_type=s.task_type) for s in spec.steps],
        )
        # The answer is built before anything is stored: what cannot be rendered is never accepted.
        jsonio.checked(run.public(), lambda why: ValidationFailed(f"run input cannot be stored: {why}"))
        stored, created = await self._store.create_run(
            run, spec.model_dump_json(), request_hash(workflow, run_input), self._owner, self._lease_s
        )
        if created:
            self._launch(stored.run_id, spec, epoch=1)
        return stored, created

    async def get(self, run_id: str) -> RunState:
        run = await self._store.get_run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run

    async def wait(self, run_id: str, timeout_s: float) -> RunState:
        """The run's state once it is finished, or as it is after ``timeout_s``."""
        if run_id in self._active:
            await self._settle(run_id, timeout_s)
        else:
            deadline = time.monotonic() + timeout_s
            while not (await self.get(run_id)).status.terminal and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        return await self.get(run_id)

    async def cancel(self, run_id: str, *, wait_s: float = 10.0) -> RunState:
        """Cancel a run: in-flight steps are cancelled, pending ones never start. Idempotent."""
        run = await self.get(run_id)
        if run.status.terminal:
            return run
        await self._store.request_cancel(run_id)
        event = self._cancel.get(run_id)
        if event is not None:  # executing here: stop it now
            event.set()
            await self._settle(run_id, wait_s)
        return await self.get(run_id)

    async def _settle(self, run_id: str, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for this engine's execution of ``run_id`` to end (without cancelling it)."""
        task = self._active.get(run_id)
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except asyncio.TimeoutError:
                pass

    async def list(self, *, status: RunStatus | None = None, workflow: str | None = None, limit: int = 50) -> list[RunState]:
        return await self._store.list_runs(status=status, workflow=workflow, limit=limit)

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

    def _launch(self, run_id: str, spec: WorkflowSpec, *, epoch: int) -> None:
        if run_id in self._active:
            # Claimed again at a newer epoch while the old execution winds down: it is fenced out.
            self._active[run_id].cancel()
        self._epochs[run_id] = epoch
        self._cancel[run_id] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._execute(run_id, spec, epoch), name=f"run-{run_id}")
        self._active[run_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._active.get(run_id) is not t:
                return  # a newer execution of the same run took over these slots
            self._active.pop(run_id, None)
            self._cancel.pop(run_id, None)
            self._epochs.pop(run_id, None)
            self._cancel_checked.pop(run_id, None)
            if not t.cancelled() and t.exception() is not None:
                logger.error("run %s crashed", run_id, exc_info=t.exception())

        task.add_done_callback(done)

    async def _execute(self, run_id: str, spec: WorkflowSpec, epoch: int) -> None:
        _EXECUTION_LEASE.set(Lease(self._owner, epoch))  # this task's context and its step tasks'
        with tracing.start_span(f"Run:{spec.name}", attributes={"serveflow.run_id": run_id}):
            try:
                run = await self.get(run_id)
                if run.status.terminal:
                    return
                if run.status is RunStatus.PENDING:
                    run.status, run.started_at = RunStatus.RUNNING, self._clock()
                    await self._store.save_run(run, self._lease(run_id))
                await self._drive(run, spec)
            except LeaseLost as lost:
                # Fenced out: another Coordinator claimed the run. Write nothing more, release nothing.
                logger.warning("run %s: %s; stopped driving it here", run_id, lost)

    async def _drive(self, run: RunState, spec: WorkflowSpec) -> None:
        deps = spec.dependencies()
        states = {s.name: s for s in run.steps}
        results = {s.name: s.result for s in run.steps if s.status is StepStatus.SUCCEEDED}
        running: dict[asyncio.Task[StepState], str] = {}
        cancel_event = self._cancel[run.run_id]
        fatal: StepState | None = None
        cancelled = False
        try:
            while True:
                if cancel_event.is_set() or await self._remote_cancel(run.run_id):
                    cancelled = True
                    break
                if fatal is None:
                    await self._skip_blocked(run.run_id, spec, deps, states)
                    for step in spec.steps:
                        st = states[step.name]
                        # Ready = every upstream result is recorded here (not merely its status
                        # flipped by a step task that is still writing it to the store).
                        ready = all(d in results for d in deps[step.name])
                        # RUNNING here means in flight when a previous owner stopped: run it again.
                        if st.status in (StepStatus.PENDING, StepStatus.RUNNING) and ready and step.name not in running.values():
                            task = asyncio.get_running_loop().create_task(self._run_step(run, spec, step, st, results))
                            running[task] = step.name
                if not running:
                    break
                waiter = asyncio.ensure_future(cancel_event.wait())
                # The timeout bounds how late a cancel made through another replica is seen.
                done, _ = await asyncio.wait(
                    [*running, waiter], timeout=self._cancel_poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                for task in done:
                    if task is waiter:
                        continue
                    name = running.pop(task)  # type: ignore[arg-type]
                    if task.cancelled():  # cancelled after a fatal failure elsewhere
                        await self._end_interrupted(run.run_id, states[name], results)
                        continue
                    st = task.result()  # type: ignore[assignment]
                    states[name] = st
                    if st.status is StepStatus.SUCCEEDED:
                        results[name] = st.result
                    elif st.status is StepStatus.FAILED and spec.step(name).on_failure == "fail_run" and fatal is None:
                        fatal = st
                if fatal is not None and running:
                    for task in running:
                        task.cancel()
        finally:
            # Cancelled in-flight steps (cancel, fatal failure, or engine shutdown).
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        for name in running.values():
            await self._end_interrupted(run.run_id, states[name], results)
        await self._finish(run, spec, states, results, fatal, cancelled)

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

    async def _skip_blocked(
        self, run_id: str, spec: WorkflowSpec, deps: Mapping[str, set[str]], states: dict[str, StepState]
    ) -> None:
        """Mark steps whose upstream failed (with ``continue``) or was skipped; repeat to a fixpoint."""
        changed = True
        while changed:
            changed = False
            for step in spec.steps:
                st = states[step.name]
                if st.status is StepStatus.PENDING and any(states[d].status in _BLOCKING for d in deps[step.name]):
                    await self._close_step(run_id, st, StepStatus.SKIPPED)
                    changed = True

    async def _finish(
        self,
        run: RunState,
        spec: WorkflowSpec,
        states: dict[str, StepState],
        results: dict[str, Any],
        fatal: StepState | None,
        cancelled: bool,
    ) -> None:
        leftover = StepStatus.CANCELLED if cancelled else StepStatus.SKIPPED
        for st in states.values():
            if not st.status.terminal:
                await self._close_step(run.run_id, st, leftover)
        if cancelled:
            run.status = RunStatus.CANCELLED
            run.error = ErrorInfo(code=ErrorCode.CANCELLED.value, message="run was cancelled", retryable=False)
        elif fatal is not None:
            run.status = RunStatus.FAILED
            err = fatal.error
            run.error = ErrorInfo(
                code=err.code if err else ErrorCode.INTERNAL.value,
                message=f"step {fatal.name!r} failed: {err.message if err else 'unknown error'}",
                # A run failed by a retryable step error (e.g. a pool that never became ready) may
                # succeed if started again.
                retryable=bool(err and err.retryable),
                details={"step": fatal.name, "step_error": err.model_dump(mode="json") if err else None},
            )
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
        run.finished_at = self._clock()
        lease = self._lease(run.run_id)
        await self._store.save_run(run, lease)
        await self._store.release(run.run_id, lease)

    async def _run_step(
        self, run: RunState, spec: WorkflowSpec, step: StepSpec, st: StepState, results: Mapping[str, Any]
    ) -> StepState:
        # ``st`` is the run's own step record: attempts survive a cancellation.
        with tracing.start_span(f"Step:{spec.name}.{step.name}", attributes={"serveflow.run_id": run.run_id}):
            lease = self._lease(run.run_id)
            if not await self._condition_holds(run, step, st, results, lease):
                return st
            st.status, st.error = StepStatus.RUNNING, None
            st.started_at = st.started_at or self._clock()
            refused_since: float | None = None
            refusals = 0
            while True:
                st.attempts += 1
                await self._store.save_step(run.run_id, st, lease)  # write-ahead: the attempt is on record
                res = await self._attempt(run, step, st, results)
                if res.success:
                    st.status, st.result = StepStatus.SUCCEEDED, res.result
                    break
                assert res.error is not None
                st.error = res.error
                if res.error.code in _NOT_STARTED:
                    # Refused before it ran (pool starting, queue full): no attempt spent, but the
                    # wait is bounded, so a pool that never becomes ready cannot hang the run.
                    st.attempts -= 1
                    refusals += 1
                    refused_since = refused_since or time.monotonic()
                    if time.monotonic() - refused_since >= self._start_timeout_s:
                        st.status, st.error = StepStatus.FAILED, self._start_timed_out(step, res.error, refusals)
                        break
                    await asyncio.sleep(_NOT_STARTED_BACKOFF.delay(refusals))
                    continue
                refused_since, refusals = None, 0
                if not step.retry.should_retry(st.attempts, res.error.code, res.error.retryable):
                    st.status = StepStatus.FAILED
                    break
                await asyncio.sleep(step.retry.backoff(st.attempts))
            st.finished_at = self._clock()
            await self._store.save_step(run.run_id, st, lease)
            return st

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
            st.status = StepStatus.FAILED
            st.error = ErrorInfo(
                code=ErrorCode.VALIDATION_ERROR.value,
                message=f"step {step.name!r} when: {exc}",
                retryable=False,
                details={"step": step.name, "when": step.when},
            )
        st.started_at = st.started_at or self._clock()
        st.finished_at = self._clock()
        await self._store.save_step(run.run_id, st, lease)
        return False

    async def _attempt(self, run: RunState, step: StepSpec, st: StepState, results: Mapping[str, Any]) -> TaskResult:
        try:
            payload = resolve(step.input, run.input, results)
        except MissingValue as exc:
            return TaskResult.failure(ValidationFailed(f"step {step.name!r} input: {exc}"))
        return await self._submit(
            TaskRequest(
                task_type=step.task_type,
                payload=payload,
                task_id=f"{run.run_id}.{step.name}.{st.attempts}",
                timeout_s=step.timeout_s,
            )
        )

    def _start_timed_out(self, step: StepSpec, last: ErrorInfo, refusals: int) -> ErrorInfo:
        return ErrorInfo(
            code=last.code,
            message=f"step {step.name!r} could not start within {self._start_timeout_s:g}s: {last.message}",
            retryable=True,
            details={"step": step.name, "refusals": refusals, "start_timeout_s": self._start_timeout_s, "last_error": last.code},
        )
