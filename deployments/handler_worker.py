"""HandlerWorker: one deployment per pool; runs user handlers with isolated failures."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

from deployments.ray_calls import RayObjects, replica_identity
from serve_app.runtime import tracing
from serve_app.runtime.config import PoolConfig
from serve_app.core.errors import Unavailable
from serve_app.runtime.handlers import HandlerLoadError, HandlerRegistry
from serve_app.core.models import ComponentStatus, HealthState, TaskResult, WorkItem
from serve_app.runtime.recent import RecentValues
from serve_app.runtime.runner import HandlerRunner

logger = logging.getLogger("serveflow.worker")


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, health_check_period_s=2, health_check_timeout_s=10)
class HandlerWorker:
    """Loads the pool's handler modules and runs tasks routed to it."""

    async def __init__(self, pool: str, pool_config: dict[str, Any], trace_exporter: str = "none") -> None:
        tracing.configure(trace_exporter)
        self._pool = pool
        self._config = PoolConfig.model_validate(pool_config)
        self._since = time.time()
        self._identity = replica_identity()
        self._load_error: str | None = None
        self._runner: HandlerRunner | None = None
        try:
            # Imports may be slow (models, native libs): keep the event loop free.
            registry = await asyncio.to_thread(
                HandlerRegistry.from_modules, self._config.handler_modules, self._config.task_types
            )
            await registry.run_startup_hooks(self._config.settings)
        except HandlerLoadError as exc:
            self._load_error = str(exc)
            logger.error("pool %s: %s", pool, exc)
            return
        self._runner = HandlerRunner(
            registry,
            max_concurrency=self._config.max_concurrency,
            max_stuck_calls=self._config.max_stuck_calls,
            objects=RayObjects(),
            recent=RecentValues(self._config.reuse_results_bytes) if self._config.reuse_results_bytes else None,
            replica_id=self._identity["replica_id"],
        )

    def _problem(self) -> str | None:
        if self._load_error is not None:
            return self._load_error
        assert self._runner is not None
        return self._runner.health_problem()

    async def run(self, item: dict[str, Any]) -> dict[str, Any]:
        """Run one task; handler failures come back in the envelope, never as exceptions. A result
        kept by reference comes back as its marker plus ``object_ref``."""
        work = WorkItem.model_validate(item)
        if self._runner is None:
            result = TaskResult.failure(
                Unavailable(f"pool {self._pool!r} cannot run tasks: {self._load_error}"),
                task_id=work.task_id,
                task_type=work.task_type,
            )
        else:
            result = await self._runner.run(work, attributes={"serveflow.pool": self._pool})
        out = result.model_dump(mode="json")
        if result._object_ref is not None:
            out["object_ref"] = result._object_ref
        return out

    async def get_status(self) -> dict[str, Any]:
        problem = self._problem()
        runner = self._runner
        return ComponentStatus(
            name=self._pool,
            status=HealthState.UNHEALTHY if problem else HealthState.HEALTHY,
            error=problem,
            since=self._since,
            details={
                **self._identity,
                "task_types": list(self._config.task_types),
                "stuck_calls": runner.stuck_calls if runner else 0,
                "completed": runner.completed if runner else 0,
                "failed": runner.failed if runner else 0,
                "reused_results": runner.reused_results if runner else 0,
                "held_alone_bytes": runner.held_alone_bytes if runner else 0,
            },
        ).model_dump(mode="json")

    async def check_health(self) -> None:
        problem = self._problem()
        if problem:
            raise RuntimeError(f"pool {self._pool}: {problem}")

    def __del__(self) -> None:
        if getattr(self, "_runner", None) is not None:
            self._runner.close()
