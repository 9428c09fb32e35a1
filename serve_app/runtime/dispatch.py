"""Routing and dispatch of single tasks, free of Ray.

The Coordinator owns one :class:`Dispatcher`; it injects a :class:`PoolCaller`
that does the actual deployment-handle call and turns Ray's exceptions into
ServeflowErrors. Tests inject a caller that runs handlers in-process.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Awaitable, Callable, Collection, Mapping

from serve_app.core import result_refs
from serve_app.runtime import tracing
from serve_app.runtime.config import AppConfig
from serve_app.core.errors import NotReady, TaskTimeout, Unavailable, UnknownTaskType, classify
from serve_app.core.retry import Backoff
from serve_app.core.aio import within
from serve_app.core.models import TaskRequest, TaskResult, WorkItem
from serve_app.runtime.telemetry import TaskObserver

PoolCaller = Callable[[str, WorkItem], Awaitable[TaskResult]]
# Between re-sends of an idempotent task whose replica died (Serve starts a new one meanwhile).
_RESEND_BACKOFF = Backoff(initial_s=0.2, max_s=2.0)
Clock = Callable[[], float]


class ReadinessBoard:
    """The Coordinator's latest view of which pools can take work."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._pools: dict[str, dict[str, Any]] = {}
        self.updated_at: float | None = None
        self.last_error: str | None = None

    def update(self, pools: Mapping[str, Mapping[str, Any]]) -> None:
        self._pools = {name: dict(info) for name, info in pools.items()}
        self.updated_at = self._clock()
        self.last_error = None

    def update_failed(self, error: str) -> None:
        self.last_error = error

    @property
    def known(self) -> bool:
        return self.updated_at is not None

    def not_ready_pools(self) -> dict[str, str]:
        """Pools that cannot take work, with the reason (all of them before the first update)."""
        if not self.known:
            return {"*": self.last_error or "waiting for the OrganismManager to report pool readiness"}
        return {
            name: info.get("error") or info.get("status", "unknown")
            for name, info in self._pools.items()
            if not info.get("ready")
        }

    def check(self, pool: str) -> None:
        """Raise :class:`NotReady` unless ``pool`` can take work."""
        if not self.known:
            raise NotReady(
                "serveflow is starting: handler pools are not ready yet",
                details={"reason": self.not_ready_pools()["*"]},
            )
        info = self._pools.get(pool)
        if info is None or not info.get("ready"):
            reason = (info or {}).get("error") or (info or {}).get("status", "unknown")
            raise NotReady(f"handler pool {pool!r} is not ready", details={"pool": pool, "reason": reason})

    def snapshot(self) -> dict[str, Any]:
        return {"pools": dict(self._pools), "updated_at": self.updated_at, "last_error": self.last_error}


class Dispatcher:
    """Validates, routes and runs one task; always produces an envelope."""

    def __init__(
        self,
        config: AppConfig,
        readiness: ReadinessBoard,
        call_pool: PoolCaller,
        *,
        observer: TaskObserver | None = None,
    ) -> None:
        self._config = config
        self._routes = config.routes()
        self._readiness = readiness
        self._call_pool = call_pool
        self._observer = observer

    @property
    def task_types(self) -> dict[str, str]:
        return dict(self._routes)

    def deadline_for(self, pool: str, requested: float | None) -> float:
        default = self._config.pools[pool].default_timeout_s
        return min(requested if requested is not None else default, self._config.max_timeout_s)

    async def submit(
        self,
        req: TaskRequest,
        *,
        by_ref_over: int | None = None,
        refs: Mapping[str, Any] | None = None,
        keep_object: bool = True,
        reader_task_types: Collection[str] = (),
        affinity: str | None = None,
        hand_off: bool = False,
    ) -> TaskResult:
        """Run ``req`` and return its envelope (success or structured failure). Workflow steps
        pass ``by_ref_over`` (keep a larger result in Ray's object store), the ``refs`` of
        upstream results kept there, the task types of the steps that read the result, the
        run's ``affinity`` key (used only when this call makes or reads such a result in a pool
        that routes by it) and ``hand_off`` (the result's one reader follows it to its replica)."""
        started = time.perf_counter()
        task_id = req.task_id or uuid.uuid4().hex
        with tracing.start_span(f"Task:{req.task_type}", attributes={"serveflow.task_id": task_id}) as span:
            trace_id = tracing.trace_id_hex(span)
            try:
                result = await self._run(
                    req, task_id, by_ref_over, refs or {}, keep_object, reader_task_types, affinity, hand_off
                )
            except Exception as exc:
                # Only errors become envelopes: cancellation, KeyboardInterrupt and SystemExit propagate.
                err = classify(exc, trace_id=trace_id)
                tracing.record_error(span, err)
                result = TaskResult.failure(err, task_id=task_id, task_type=req.task_type)
            else:
                if result.error is not None:
                    span.set_attribute("serveflow.error_code", result.error.code)
        result.task_id = task_id
        result.task_type = req.task_type
        result.trace_id = trace_id
        result.duration_ms = (time.perf_counter() - started) * 1000.0
        if self._observer is not None:
            outcome = "success" if result.error is None else result.error.code
            self._observer.finished(req.task_type, outcome, result.duration_ms)
        return result

    def _idempotent(self, pool: str, req: TaskRequest) -> bool:
        return req.idempotent or req.task_type in self._config.pools[pool].idempotent_task_types

    async def _call_with_retries(self, pool: str, item: WorkItem, retries: int) -> TaskResult:
        """Call the pool; a task declared idempotent is re-sent when its replica died."""
        for attempt in range(retries + 1):
            try:
                return await self._call_pool(pool, item)
            except Unavailable:
                if attempt == retries:
                    raise
                await asyncio.sleep(_RESEND_BACKOFF.delay(attempt + 1))
        raise AssertionError("unreachable")

    async def _run(
        self,
        req: TaskRequest,
        task_id: str,
        by_ref_over: int | None,
        refs: Mapping[str, Any],
        keep_object: bool,
        reader_task_types: Collection[str],
        affinity: str | None,
        hand_off: bool,
    ) -> TaskResult:
        pool = self._routes.get(req.task_type)
        if pool is None:
            raise UnknownTaskType(
                f"unknown task type {req.task_type!r}", details={"known_task_types": sorted(self._routes)}
            )
        self._readiness.check(pool)
        deadline = self.deadline_for(pool, req.timeout_s)
        pool_config = self._config.pools[pool]
        keep_local = by_ref_over is not None and any(self._routes.get(t) == pool for t in reader_task_types)
        # A reader of a result held in its maker's process alone goes to that replica, by its id.
        holder = next(filter(None, map(result_refs.local_replica, refs.values())), None)
        item = WorkItem(
            task_id=task_id,
            task_type=req.task_type,
            payload=req.payload,
            timeout_s=deadline,
            trace_context=tracing.inject(),
            by_ref_over=by_ref_over,
            keep_object=keep_object,
            keep_local=keep_local,
            hand_off=hand_off and keep_local and pool_config.reuse_results_bytes > 0,
            refs=dict(refs),
            affinity=None if not pool_config.result_affinity else holder or (affinity if keep_local or refs else None),
        )
        retries = self._config.idempotent_retries if self._idempotent(pool, req) else 0
        if self._observer is not None:
            self._observer.inflight(pool, +1)
        try:
            return await within(self._call_with_retries(pool, item, retries), deadline + self._config.timeout_grace_s)
        except asyncio.TimeoutError as exc:
            # The worker enforces the deadline itself; reaching here means the
            # replica did not answer at all (blocked loop, lost message).
            raise TaskTimeout(
                f"no answer from pool {pool!r} within {deadline:g}s", details={"pool": pool, "timeout_s": deadline}
            ) from exc
        finally:
            if self._observer is not None:
                self._observer.inflight(pool, -1)
