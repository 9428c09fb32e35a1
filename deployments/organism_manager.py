"""OrganismManager: registry of handler pools, readiness and health roll-up."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.ray_calls import await_response, local_handle, serve_deployment_states
from serve_app.runtime.config import AppConfig, pool_deployment_name
from serve_app.core.errors import error_text
from serve_app.runtime.health import ChangeFeed, ComponentTracker, rollup
from serve_app.runtime.loops import STARTUP_HURRY_S, PeriodicTask
from serve_app.core.models import ComponentStatus, HealthState

logger = logging.getLogger("serveflow.manager")

METRICS = "MetricsCollector"


# Every Coordinator replica holds one readiness long poll open here, beside probes and status calls.
@serve.deployment(
    ray_actor_options={"num_cpus": 0.05}, health_check_period_s=5, health_check_timeout_s=10, max_ongoing_requests=64
)
class OrganismManager:
    """Probes every pool and the MetricsCollector; answers readiness and status from that."""

    async def __init__(self, config: dict[str, Any], pools: dict[str, DeploymentHandle], metrics: DeploymentHandle) -> None:
        self._config = AppConfig.from_args(config)
        self._pools = {name: await local_handle(handle) for name, handle in pools.items()}
        self._metrics = await local_handle(metrics)
        self._trackers = {name: ComponentTracker(name) for name in self._pools}
        self._trackers[METRICS] = ComponentTracker(METRICS)
        # Readiness, long-polled by Coordinators; republished by the loops that change the trackers.
        self._feed = ChangeFeed()
        self._feed.publish(self._readiness_report())
        self._serve_states: dict[str, dict[str, Any]] = {}
        self._serve_error: str | None = None
        self._started = time.time()
        interval = self._config.probe_interval_s
        self._probe_loop = PeriodicTask(
            "pool-probe",
            self._probe_all,
            interval,
            stall_after_s=max(30.0, 10 * interval),
            # While starting, probe often: the first answer of every pool is what makes serveflow ready.
            hurry=lambda: time.time() - self._started < STARTUP_HURRY_S
            and not all(t.ready for t in self._trackers.values()),
            hurry_interval_s=0.2,
        )
        self._serve_loop = PeriodicTask("serve-status", self._read_serve_status, max(2.0, interval), stall_after_s=60.0)
        # Do not wait for pools here: they may still be starting; readiness says so.
        self._probe_loop.start()
        self._serve_loop.start()

    async def _probe(self, name: str, handle: DeploymentHandle) -> None:
        tracker = self._trackers[name]
        try:
            report = await await_response(handle.get_status.remote(), target=name, timeout_s=self._config.probe_timeout_s)
        except asyncio.TimeoutError:
            tracker.observe_failure(f"no status answer within {self._config.probe_timeout_s:g}s")
        except Exception as exc:
            tracker.observe_failure(error_text(exc))
        else:
            tracker.observe_report(report)

    def _scaled_to_zero(self, name: str) -> bool:
        """Serve's last word is that this pool is at zero replicas by design (min_replicas 0)."""
        state = self._serve_states.get(pool_deployment_name(name))
        return (
            self._config.pools[name].can_scale_to_zero
            and state is not None
            and state["target_replicas"] == 0
            and not state["replica_states"]
        )

    def _probe_now(self, name: str) -> bool:
        """A pool that may scale to zero is only probed once Serve says it has replicas: a probe
        is a request, and a request to a pool at zero starts a replica."""
        if not self._config.pools[name].can_scale_to_zero:
            return True
        state = self._serve_states.get(pool_deployment_name(name))
        return state is not None and bool(state["replica_states"])

    async def _probe_all(self) -> None:
        for name in self._pools:
            if self._scaled_to_zero(name):
                self._trackers[name].observe_scaled_to_zero()
        probes = [self._probe(name, h) for name, h in self._pools.items() if self._probe_now(name)]
        probes.append(self._probe(METRICS, self._metrics))
        await asyncio.gather(*probes)
        self._feed.publish(self._readiness_report())

    async def _read_serve_status(self) -> None:
        try:
            states = await asyncio.to_thread(serve_deployment_states)
        except Exception as exc:
            self._serve_error = f"serve.status() failed: {type(exc).__name__}: {exc}"
            raise
        self._serve_error = None
        self._serve_states = states
        for name, tracker in self._trackers.items():
            dep = pool_deployment_name(name) if name in self._pools else name
            if dep in states:
                s = states[dep]
                tracker.observe_serve(s["status"], s["message"], s["replica_states"])
        self._feed.publish(self._readiness_report())

    def _readiness_report(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in self._pools:
            snap = self._trackers[name].snapshot()
            out[name] = {"ready": self._trackers[name].ready, "status": snap.status.value, "error": snap.error}
        return out

    async def readiness(self, since: str | None = None, wait_s: float = 0.0) -> dict[str, Any]:
        """Per pool: ready flag, state and error (what the Coordinator routes by), with its version.

        A long poll: given the version the caller has, it answers when readiness changes or
        after ``wait_s`` (at most 30 s), so readiness reaches Coordinators as soon as it
        changes and costs one call per ``wait_s`` while nothing does."""
        version, pools = await self._feed.read(since, min(max(wait_s, 0.0), 30.0))
        return {"version": version, "pools": pools}

    async def _resources(self) -> dict[str, Any]:
        try:
            return dict(
                await await_response(
                    self._metrics.get_metrics.remote(), target=METRICS, timeout_s=self._config.probe_timeout_s
                )
            )
        except Exception as exc:
            return {"error": error_text(exc)}

    async def get_status(self) -> dict[str, Any]:
        pools = {name: self._trackers[name].snapshot() for name in self._pools}
        metrics = self._trackers[METRICS].snapshot()
        own_problem = self._probe_loop.problem() or self._serve_loop.problem()
        own = ComponentStatus(
            name="OrganismManager",
            status=HealthState.UNHEALTHY if own_problem else HealthState.HEALTHY,
            error=own_problem or self._serve_error,
            since=self._started,
        )
        overall = rollup([*pools.values(), metrics, own])
        return {
            "status": overall.value,
            "pools": {
                name: {**snap.model_dump(mode="json"), **self._replicas(name), "deployment": pool_deployment_name(name)}
                for name, snap in pools.items()
            },
            "components": {
                "OrganismManager": own.model_dump(mode="json"),
                METRICS: metrics.model_dump(mode="json"),
            },
            "deployments": self._serve_states,
            "resources": await self._resources(),
        }

    def _replicas(self, name: str) -> dict[str, Any]:
        """Target (autoscaling's current goal) and running replicas of a pool, from Serve."""
        state = self._serve_states.get(pool_deployment_name(name))
        if state is None:
            return {"replicas": None}
        return {"replicas": {"target": state.get("target_replicas"), "running": state["replica_states"].get("RUNNING", 0)}}

    async def check_health(self) -> None:
        problem = self._probe_loop.problem() or self._serve_loop.problem()
        if problem:
            raise RuntimeError(problem)
