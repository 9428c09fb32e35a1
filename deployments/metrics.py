"""MetricsCollector: cluster resources from Ray's state API, local fallback, never crashes."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

from deployments.ray_calls import cluster_resources
from serve_app.runtime.loops import PeriodicTask
from serve_app.core.models import ComponentStatus, HealthState
from serve_app.core.retry import Backoff, RetryClock
from serve_app.runtime.resources import cluster_snapshot, local_snapshot

logger = logging.getLogger("serveflow.metrics")


@serve.deployment(ray_actor_options={"num_cpus": 0.05}, health_check_period_s=5, health_check_timeout_s=10)
class MetricsCollector:
    """Samples resources periodically; reads are served from the last sample."""

    async def __init__(self, refresh_s: float = 5.0) -> None:
        self._backoff = RetryClock(Backoff(initial_s=refresh_s, max_s=60.0))
        self._snapshot: dict[str, Any] = {}
        self._ray_error: str | None = None
        self._state = HealthState.INITIALIZING
        self._since = time.time()
        self._sampled_at: float | None = None
        self._loop = PeriodicTask("metrics-sampler", self._sample, refresh_s, stall_after_s=max(30.0, 6 * refresh_s))
        await self._sample()
        self._loop.start()

    async def _sample(self) -> None:
        local = await asyncio.to_thread(local_snapshot)
        snapshot: dict[str, Any] = {"local": local["node"]}
        if self._backoff.due():
            try:
                total, available, nodes = await asyncio.to_thread(cluster_resources)
            except Exception as exc:  # state API not up yet, dashboard down, GCS hiccup...
                delay = self._backoff.failed()
                self._ray_error = f"Ray state API unavailable ({type(exc).__name__}: {exc}); retrying in {delay:.0f}s"
                logger.warning("%s", self._ray_error)
            else:
                self._backoff.succeeded()
                self._ray_error = None
                snapshot["cluster"] = cluster_snapshot(total, available, nodes)
        elif self._snapshot.get("cluster"):
            snapshot["cluster"] = self._snapshot["cluster"]
        snapshot["source"] = "ray" if "cluster" in snapshot and self._ray_error is None else "local"
        self._snapshot = snapshot
        self._sampled_at = time.time()
        self._set_state(HealthState.DEGRADED if self._ray_error else HealthState.HEALTHY)

    def _set_state(self, state: HealthState) -> None:
        if state is not self._state:
            self._state, self._since = state, time.time()

    async def get_metrics(self) -> dict[str, Any]:
        return {**self._snapshot, "sampled_at": self._sampled_at}

    async def get_status(self) -> dict[str, Any]:
        problem = self._loop.problem()
        state = HealthState.UNHEALTHY if problem else self._state
        return ComponentStatus(
            name="MetricsCollector",
            status=state,
            error=problem or self._ray_error,
            since=self._since,
            details={"source": self._snapshot.get("source"), "sampled_at": self._sampled_at},
        ).model_dump(mode="json")

    async def check_health(self) -> None:
        # A degraded collector (local fallback) still does its job; a dead sampler does not.
        problem = self._loop.problem()
        if problem:
            raise RuntimeError(problem)
