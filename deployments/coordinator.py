"""Coordinator: HTTP ingress, router and (later) DAG executor."""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from deployments.ray_calls import await_response, by_reference, local_handle, replica_identity
from deployments.serve_metrics import ServeMetricsObserver
from serve_app.runtime import tracing
from serve_app.ingress.auth import BearerAuth
from serve_app.runtime.config import AppConfig, pool_deployment_name
from serve_app.core.errors import error_text
from serve_app.runtime.dispatch import Dispatcher, ReadinessBoard
from serve_app.ingress.grpc import GrpcIngress
from serve_app.ingress.http import build_http_app
from serve_app.ingress.operations import Backend
from serve_app.runtime.health import coordinator_state
from serve_app.runtime.loops import STARTUP_HURRY_S, PeriodicTask
from serve_app.core.models import ComponentStatus, HealthState, TaskResult, WorkItem
from serve_app.proto import serveflow_pb2 as pb
from serve_app.runtime.telemetry import FanOut, TaskStats
from serve_app.workflow.api import EventService, RunService, ScheduleService
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.loader import load_schedules, load_subscriptions
from serve_app.workflow.subscriptions import SubscriptionRunner
from serve_app.workflow.schedules import ScheduleRunner
from serve_app.workflow.spec import WorkflowSpec
from serve_app.workflow.store import open_store

logger = logging.getLogger("serveflow.coordinator")

# How long one readiness long poll may wait at the OrganismManager for a change.
READINESS_WAIT_S = 5.0


@serve.deployment(
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=256,
    health_check_period_s=2,
    health_check_timeout_s=10,
)
@serve.ingress()
class Coordinator:
    """Answers clients; routes each task to its pool once the pool is ready."""

    async def __init__(
        self,
        config: dict[str, Any],
        manager: DeploymentHandle,
        pools: dict[str, DeploymentHandle],
        workflows: dict[str, dict[str, Any]] | None = None,
        trace_exporter: str = "none",
        auth_token: str | None = None,
        database_url: str | None = None,
    ) -> None:
        tracing.configure(trace_exporter)
        self._config = AppConfig.from_args(config)
        self._manager = await local_handle(manager)
        self._pools = {name: await local_handle(handle) for name, handle in pools.items()}
        # A call that carries ObjectRefs (results kept by reference) goes as a Ray actor call,
        # where Ray counts the references in-band; over Serve's gRPC transport they would be
        # pickled out of band, which pins each object for the life of its worker (a leak).
        self._pools_by_ref = {name: by_reference(handle) for name, handle in self._pools.items()}
        self._since = time.time()
        self._identity = replica_identity()
        self._readiness = ReadinessBoard()
        self._readiness_version: str | None = None  # no version yet: the first poll answers at once
        self._stats = TaskStats()
        self._prometheus = ServeMetricsObserver()
        self._dispatcher = Dispatcher(
            self._config, self._readiness, self._call_pool, observer=FanOut([self._stats, self._prometheus])
        )
        wf = self._config.workflows
        self._store = await open_store(wf.store, path=wf.store_path, dsn=database_url)
        self._engine = RunEngine(
            self._store,
            self._dispatcher.submit,
            {name: WorkflowSpec.model_validate(doc) for name, doc in (workflows or {}).items()},
            owner=self._identity["replica_id"],
            lease_s=wf.lease_s,
            step_start_timeout_s=wf.step_start_timeout_s,
            max_inflight_steps=wf.max_inflight_steps,
            result_by_ref_bytes=wf.result_by_ref_bytes,
        )
        self._auth = BearerAuth(auth_token)
        self._schedules = ScheduleRunner(load_schedules(wf, self._engine.workflows), self._store, self._engine.start)
        self._subscriptions = SubscriptionRunner(
            load_subscriptions(wf, self._engine.workflows, self._config.routes()),
            self._store,
            self._engine.start,
            self._dispatcher.submit,
            owner=self._identity["replica_id"],
            lease_s=wf.lease_s,
        )
        self._backend = Backend(
            self._dispatcher,
            self._readiness,
            self.get_status,
            RunService(self._engine),
            ScheduleService(self._schedules),
            EventService(self._subscriptions, self._store),
        )
        self._grpc = GrpcIngress(self._backend, max_payload_bytes=self._config.max_body_bytes, auth=self._auth)
        # Renew our leases and claim runs whose owner is gone (e.g. a replica that died).
        self._workflow_loop = PeriodicTask(
            "workflow-leases", self._workflow_tick, wf.lease_s / 3, stall_after_s=max(30.0, 3 * wf.lease_s)
        )
        self._workflow_loop.start()
        # Every replica looks for due ticks; each tick is one run (its idempotency key), whoever fires it.
        self._schedule_loop = PeriodicTask(
            "schedules", self._fire_schedules, wf.schedule_poll_s, stall_after_s=max(30.0, 30 * wf.schedule_poll_s)
        )
        self._schedule_loop.start()
        # Every replica tries; one holds each subscription's lease and delivers it.
        self._subscription_loop = PeriodicTask(
            "subscriptions", self._subscriptions.tick, wf.subscription_poll_s, stall_after_s=max(60.0, 30 * wf.subscription_poll_s)
        )
        self._subscription_loop.start()
        poll = self._config.readiness_poll_s
        self._refresh = PeriodicTask(
            "readiness-refresh",
            self._refresh_readiness,
            poll,
            stall_after_s=max(30.0, 20 * poll),
            hurry=lambda: time.time() - self._since < STARTUP_HURRY_S and bool(self._readiness.not_ready_pools()),
        )
        # Never block construction on the manager: until it reports, requests get 503 not_ready.
        self._refresh.start()

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_http_app(self._backend, max_body_bytes=self._config.max_body_bytes, auth=self._auth)

    async def _fire_schedules(self) -> None:
        await self._schedules.tick()

    async def _workflow_tick(self) -> None:
        self._prometheus.publish()  # first: gauges stay current while the store is away
        await self._engine.renew_leases()
        await self._engine.resume()
        self._prometheus.active_runs(len(self._engine.active_runs))
        for sub in await self._subscriptions.describe():  # the lag metric, kept current without /v1/status
            self._prometheus.subscription_lag(sub["name"], sub["lag"])

    # gRPC methods: Serve's gRPC proxy calls the method named like the RPC.
    async def SubmitTask(self, request: Any, grpc_context: Any = None) -> pb.TaskResult:
        return await self._grpc.handle("SubmitTask", request, grpc_context)

    async def GetStatus(self, request: Any, grpc_context: Any = None) -> pb.StatusReply:
        return await self._grpc.handle("GetStatus", request, grpc_context)

    async def StartRun(self, request: Any, grpc_context: Any = None) -> pb.RunReply:
        return await self._grpc.handle("StartRun", request, grpc_context)

    async def GetRun(self, request: Any, grpc_context: Any = None) -> pb.RunReply:
        return await self._grpc.handle("GetRun", request, grpc_context)

    async def CancelRun(self, request: Any, grpc_context: Any = None) -> pb.RunReply:
        return await self._grpc.handle("CancelRun", request, grpc_context)

    async def ListRuns(self, request: Any, grpc_context: Any = None) -> pb.RunReply:
        return await self._grpc.handle("ListRuns", request, grpc_context)

    async def SendSignal(self, request: Any, grpc_context: Any = None) -> pb.RunReply:
        return await self._grpc.handle("SendSignal", request, grpc_context)

    async def AppendEvent(self, request: Any, grpc_context: Any = None) -> pb.EventReply:
        return await self._grpc.handle("AppendEvent", request, grpc_context)

    async def ListEvents(self, request: Any, grpc_context: Any = None) -> pb.EventReply:
        return await self._grpc.handle("ListEvents", request, grpc_context)

    async def ListDeadLetters(self, request: Any, grpc_context: Any = None) -> pb.EventReply:
        return await self._grpc.handle("ListDeadLetters", request, grpc_context)

    async def ReplayDeadLetter(self, request: Any, grpc_context: Any = None) -> pb.EventReply:
        return await self._grpc.handle("ReplayDeadLetter", request, grpc_context)

    async def ListSchedules(self, request: Any, grpc_context: Any = None) -> pb.ScheduleReply:
        return await self._grpc.handle("ListSchedules", request, grpc_context)

    async def PauseSchedule(self, request: Any, grpc_context: Any = None) -> pb.ScheduleReply:
        return await self._grpc.handle("PauseSchedule", request, grpc_context)

    async def ResumeSchedule(self, request: Any, grpc_context: Any = None) -> pb.ScheduleReply:
        return await self._grpc.handle("ResumeSchedule", request, grpc_context)

    async def TriggerSchedule(self, request: Any, grpc_context: Any = None) -> pb.ScheduleReply:
        return await self._grpc.handle("TriggerSchedule", request, grpc_context)

    async def _call_pool(self, pool: str, item: WorkItem) -> TaskResult:
        body = item.model_dump(mode="json")
        if item.refs:
            body["refs"] = item.refs  # object references travel as themselves, not as JSON
        handle = (self._pools_by_ref if item.moves_object_refs else self._pools)[pool]
        if item.affinity is not None:
            handle = handle.options(session_id=item.affinity)  # the pool's router keys on it
        raw = await await_response(handle.run.remote(body), target=pool_deployment_name(pool))
        object_ref = raw.pop("object_ref", None)
        result = TaskResult.model_validate(raw)
        result._object_ref = object_ref
        return result

    async def _refresh_readiness(self) -> None:
        # A long poll: the manager answers when readiness changes (or after READINESS_WAIT_S).
        try:
            report = await await_response(
                self._manager.readiness.remote(self._readiness_version, READINESS_WAIT_S),
                target="OrganismManager",
                timeout_s=READINESS_WAIT_S + self._config.probe_timeout_s,
            )
        except Exception as exc:
            self._readiness.update_failed(error_text(exc))
            raise
        self._readiness_version = report["version"]
        self._readiness.update(report["pools"])

    async def get_status(self) -> dict[str, Any]:
        """Own status plus the OrganismManager's roll-up (or why it cannot be had)."""
        state, error = coordinator_state(
            loop_problem=self._refresh.problem() or self._workflow_loop.problem() or self._schedule_loop.problem(),
            store_error=self._workflow_loop.last_error,
            readiness_error=self._readiness.last_error,
        )
        try:
            schedules: Any = await self._schedules.describe()  # next fire times
            subscriptions: Any = await self._subscriptions.describe()  # position and lag of each
        except Exception as exc:  # the store is away: already reported through the lease loop
            schedules = subscriptions = {"error": error_text(exc)}
        own = ComponentStatus(
            name="Coordinator",
            status=state,
            error=error,
            since=self._since,
            details={
                **self._identity,
                "readiness": self._readiness.snapshot(),
                "workflows": sorted(self._engine.workflows),
                "active_runs": len(self._engine.active_runs),
                # Step slots (workflows.max_inflight_steps): waiting > 0 means steps queue here by priority.
                "step_slots": {
                    "capacity": self._engine.gate.capacity,
                    "in_use": self._engine.gate.in_use,
                    "waiting": self._engine.gate.waiting,
                },
                "store": {"kind": self._config.workflows.store, "where": self._store.where},
                "schedules": schedules,
                "subscriptions": subscriptions,
            },
        )
        try:
            # The manager's roll-up includes the MetricsCollector's resources: one call, not two.
            rolled = await await_response(
                self._manager.get_status.remote(), target="OrganismManager", timeout_s=self._config.probe_timeout_s
            )
        except Exception as exc:
            reason = error_text(exc)
            rolled = {
                "status": HealthState.UNHEALTHY.value,
                "pools": {},
                "components": {
                    "OrganismManager": ComponentStatus(
                        name="OrganismManager", status=HealthState.UNHEALTHY, error=f"status unavailable: {reason}"
                    ).model_dump(mode="json")
                },
                "deployments": {},
                "resources": {"error": f"status unavailable: {reason}"},
            }
        rolled["components"]["Coordinator"] = own.model_dump(mode="json")
        rolled["tasks"] = self._stats.snapshot()
        if own.status is not HealthState.HEALTHY and rolled["status"] == HealthState.HEALTHY.value:
            rolled["status"] = HealthState.DEGRADED.value
        return rolled

    async def check_health(self) -> None:
        problem = (
            self._refresh.problem()
            or self._workflow_loop.problem()
            or self._schedule_loop.problem()
            or self._subscription_loop.problem()
        )
        if problem:
            raise RuntimeError(problem)

    async def __del__(self) -> None:
        # Graceful shutdown: stop the loops first (a lease tick after the release would claim the
        # runs again for this dying replica), then hand unfinished runs to the next owner at once.
        await self._workflow_loop.stop()
        await self._schedule_loop.stop()
        await self._subscription_loop.stop()
        await self._subscriptions.close()
        await self._refresh.stop()
        await self._engine.shutdown()
        await self._store.close()
