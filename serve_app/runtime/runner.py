"""Runs one handler call: validate input, enforce the deadline, map failures.

Pure asyncio; the HandlerWorker deployment wraps one :class:`HandlerRunner`.
Sync handlers run on a dedicated thread pool so they never block the replica's
event loop. A thread cannot be killed, so a sync call that outlives its
deadline is counted as *stuck* until it returns; too many stuck calls make the
replica report unhealthy so Serve replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Hashable, Mapping, Protocol

from pydantic import TypeAdapter, ValidationError

from serve_app.core import jsonio, result_refs
from serve_app.runtime import tracing
from serve_app.core.errors import (
    HandlerError,
    ServeflowError,
    TaskTimeout,
    Unavailable,
    UnknownTaskType,
    ValidationFailed,
    validation_details,
)
from serve_app.runtime.handlers import HandlerErrorContext, HandlerRegistry, HandlerSpec
from serve_app.runtime.recent import InStore, RecentValues
from serve_app.core.models import TaskResult, WorkItem

logger = logging.getLogger("serveflow.runner")

_ANY = TypeAdapter(Any)


class ObjectLost(Exception):
    """A result kept by reference is gone (its owner or node died)."""


class HeldElsewhere(Exception):
    """A result held in its maker's process alone is not held by this replica."""


class ObjectStore(Protocol):
    """Where results kept by reference live (Ray's object store in a HandlerWorker)."""

    def put(self, value: Any) -> Any:
        """Keep ``value``; returns its handle (blocking: called on a thread)."""

    async def get(self, handle: Any) -> Any:
        """The value behind ``handle``; :class:`ObjectLost` when it is gone."""

    def key(self, handle: Any) -> Hashable:
        """An identity of ``handle`` that does not keep its object alive."""


class HandlerRunner:
    """Executes handlers from one registry with deadlines and failure isolation."""

    def __init__(
        self,
        registry: HandlerRegistry,
        *,
        max_concurrency: int,
        max_stuck_calls: int,
        objects: ObjectStore | None = None,
        recent: RecentValues | None = None,
        replica_id: str | None = None,
    ) -> None:
        self._registry = registry
        self._objects = objects
        # ``bytes`` results kept by reference, held a moment for a reader on this replica.
        self._recent = recent
        # Names the results held here alone (result_refs.local_handle); None: none are.
        self._replica_id = replica_id
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="serveflow-handler")
        self._max_stuck = max_stuck_calls
        self._stuck = 0
        self._stuck_lock = threading.Lock()
        self.completed = 0
        self.failed = 0

    @property
    def stuck_calls(self) -> int:
        return self._stuck

    @property
    def reused_results(self) -> int:
        """Kept ``bytes`` results a reader on this replica took without a copy out of the object store."""
        return self._recent.taken if self._recent is not None else 0

    @property
    def held_alone_bytes(self) -> int:
        """Bytes of results held here alone (no copy in the object store) for a reader to come."""
        return self._recent.alone_nbytes if self._recent is not None else 0

    def health_problem(self) -> str | None:
        """Why this runner cannot do its job, or None."""
        if self._stuck >= self._max_stuck:
            return f"{self._stuck} sync handler call(s) still running past their deadline (limit {self._max_stuck})"
        return None

    def forget_held(self) -> None:
        """Let go of every result held here for a reader."""
        if self._recent is not None:
            self._recent.clear()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.forget_held()

    async def run(self, item: WorkItem, *, attributes: dict[str, Any] | None = None) -> TaskResult:
        """Run ``item``; always returns an envelope, never raises for handler faults.

        The ``Handler:{type}`` span continues the trace carried in ``item.trace_context``.
        """
        started = time.perf_counter()
        with tracing.start_span(
            f"Handler:{item.task_type}",
            attributes={"serveflow.task_id": item.task_id, **(attributes or {})},
            carrier=item.trace_context,
        ) as span:
            try:
                value, handle = await self._call(item)
                result = TaskResult(task_id=item.task_id, task_type=item.task_type, success=True, result=value)
                result._object_ref = handle
                self.completed += 1
            except ServeflowError as err:
                self.failed += 1
                tracing.record_error(span, err)
                result = TaskResult.failure(err, task_id=item.task_id, task_type=item.task_type)
        result.duration_ms = (time.perf_counter() - started) * 1000.0
        return result

    async def _call(self, item: WorkItem) -> tuple[Any, Any]:
        """The handler's result and, when it is kept by reference, its handle (the result is then
        its marker)."""
        spec = self._registry.get(item.task_type)
        if spec is None:
            raise UnknownTaskType(f"task type {item.task_type!r} is not served by this pool")
        payload = item.payload
        if item.refs:
            held: dict[str, Any] = {}  # name -> what was held here alone under it, now taken
            try:
                values = await self._fetch(item.refs, held)
                return await self._call_with(spec, item, result_refs.substitute(payload, values))
            except BaseException:
                self._hold_again(held)  # the call did not get to the end: its retry, sent here, finds them
                raise
        return await self._call_with(spec, item, payload)

    async def _call_with(self, spec: HandlerSpec, item: WorkItem, payload: Any) -> tuple[Any, Any]:
        arg = self._validate(spec, payload)
        if spec.is_async:
            future: asyncio.Future[Any] = asyncio.ensure_future(spec.fn(arg))  # type: ignore[arg-type]
        else:
            future = asyncio.get_running_loop().run_in_executor(self._executor, spec.fn, arg)
        # Only the deadline is a timeout: a TimeoutError the handler raises itself (a socket
        # timeout, say) is the handler's failure, so the two are told apart by who ended the wait.
        try:
            done, _ = await asyncio.wait({future}, timeout=item.timeout_s)
        except asyncio.CancelledError:
            future.cancel()  # the caller went away: so does the handler coroutine
            raise
        if not done:
            self._abandon(future, sync=not spec.is_async)
            raise TaskTimeout(
                f"task {item.task_type!r} exceeded its {item.timeout_s:g}s deadline", details={"timeout_s": item.timeout_s}
            )
        try:
            value = future.result()
        except ServeflowError:
            raise
        except Exception as exc:
            raise self._handler_failure(spec, item, exc) from exc
        if item.by_ref_over is not None and self._objects is not None:
            if result_refs.raw_size(value) is None:
                value = self._renderable(item, value)
            kept = result_refs.keep_decision(value, item.by_ref_over, jsonio.dumps)
            if kept is None:
                return value, None
            if not item.keep_object:
                return result_refs.marker(*kept), None  # no step reads it: the marker is all anyone sees
            if item.hand_off and self._recent is not None and self._replica_id is not None:
                # Its one reader is sent to this replica: the value stays here, with no copy. One
                # that does not fit (or is not bytes) goes to the object store, and its reference
                # stays here: no ObjectRef crosses the wire, so the call needs no actor call.
                name = result_refs.local_handle(self._replica_id)
                if not self._recent.keep(name, value, alone=True):
                    self._recent.keep_in_store(name, await asyncio.to_thread(self._objects.put, value))
                return result_refs.marker(*kept), name
            handle = await asyncio.to_thread(self._objects.put, value)
            if item.keep_local and self._recent is not None:
                self._recent.keep(self._objects.key(handle), value)
            return result_refs.marker(*kept), handle
        return self._renderable(item, value), None

    async def _fetch(self, handles: Mapping[str, Any], held: dict[str, Any]) -> dict[str, Any]:
        """The values of upstream results kept by reference, by producing step. What was held
        here alone for this call is taken, and recorded in ``held``."""
        objects = self._objects
        if objects is None:
            raise Unavailable("this pool cannot read results kept by reference")
        recent = self._recent

        async def get(handle: Any) -> Any:
            if result_refs.local_replica(handle) is not None:
                value = recent.take(handle) if recent is not None else None
                if value is None:
                    raise HeldElsewhere
                held[handle] = value
                return await objects.get(value.handle) if isinstance(value, InStore) else value
            value = recent.take(objects.key(handle)) if recent is not None else None
            return value if value is not None else await objects.get(handle)

        steps = list(handles)
        values = await asyncio.gather(*(get(handles[s]) for s in steps), return_exceptions=True)
        for step, value in zip(steps, values, strict=True):
            if isinstance(value, HeldElsewhere):
                raise result_refs.lost(step, "is not held by this replica (the replica that made it is gone)")
            if isinstance(value, ObjectLost):
                raise result_refs.lost(step, "is no longer in Ray's object store (its worker or node is gone)")
            if isinstance(value, BaseException):
                raise value
        return dict(zip(steps, values, strict=True))

    def _hold_again(self, held: Mapping[str, Any]) -> None:
        if self._recent is not None:
            for name, value in held.items():
                self._recent.hold_again(name, value)

    @staticmethod
    def _renderable(item: WorkItem, value: Any) -> Any:
        """The handler's value as plain JSON that every later read can render, or a HandlerError."""
        try:
            value = _ANY.dump_python(value, mode="json")
        except Exception as exc:
            raise HandlerError(
                f"handler for {item.task_type!r} returned a value that is not JSON-serializable: {type(value).__name__}"
            ) from exc
        return jsonio.checked(
            value, lambda why: HandlerError(f"handler for {item.task_type!r} returned a value that cannot be rendered: {why}")
        )

    @staticmethod
    def _validate(spec: HandlerSpec, payload: dict[str, Any]) -> Any:
        if spec.input_model is None:
            return payload
        try:
            return spec.input_model.model_validate(payload)
        except ValidationError as exc:
            raise ValidationFailed(
                f"payload does not match the input of {spec.task_type!r}", details=validation_details(exc)
            ) from exc

    def _abandon(self, future: asyncio.Future[Any], *, sync: bool) -> None:
        """Give up on a call past its deadline: a coroutine is cancelled; a thread cannot be, so it
        counts as stuck until it returns."""
        if not sync:
            future.cancel()
            return
        with self._stuck_lock:
            self._stuck += 1

        def release(_: asyncio.Future[Any]) -> None:
            with self._stuck_lock:
                self._stuck -= 1

        # Swallow the late outcome: nobody awaits it any more.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        future.add_done_callback(release)

    @staticmethod
    def _handler_failure(spec: HandlerSpec, item: WorkItem, exc: Exception) -> ServeflowError:
        logger.warning("handler %r failed for task %s", spec.task_type, item.task_id, exc_info=exc)
        if spec.handle_error is not None:
            ctx = HandlerErrorContext(task_type=spec.task_type, task_id=item.task_id, payload=item.payload, exception=exc)
            try:
                chosen = spec.handle_error(ctx)
            except ServeflowError as raised:
                return raised
            except Exception as hook_exc:
                logger.error("handle_error hook of %r raised", spec.task_type, exc_info=hook_exc)
                chosen = None
            if isinstance(chosen, ServeflowError):
                return chosen
        return HandlerError(
            f"handler {spec.task_type!r} raised {type(exc).__name__}: {exc}",
            details={"exception_type": type(exc).__name__},
        )
