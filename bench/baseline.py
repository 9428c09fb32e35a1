"""The hand-written Ray Serve baseline: ingress deployment -> worker deployment, no serveflow code.

Same hops as serveflow's single-task path (proxy -> Coordinator -> HandlerWorker),
same CPU shares and concurrency limits; it only does less per request.
"""

from __future__ import annotations

import json
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=32)
class BaselineWorker:
    async def run(self, payload: Any) -> Any:
        return None  # the "noop" handler


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class BaselineIngress:
    def __init__(self, worker: DeploymentHandle) -> None:
        self._worker = worker

    async def __call__(self, request: Request) -> JSONResponse:
        body = await request.json()
        result = await self._worker.run.remote(body.get("payload"))
        return JSONResponse({"success": True, "result": result})

    async def SubmitTask(self, request: Any) -> Any:  # gRPC, same proto as serveflow
        from serve_app.proto import serveflow_pb2 as pb

        result = await self._worker.run.remote(json.loads(request.payload_json or "{}"))
        return pb.TaskResult(success=True, result_json=json.dumps(result))


def build_baseline(args: dict[str, Any] | None = None) -> Any:
    """Serve's application builder (``import_path: bench.baseline:build_baseline`` takes no arguments)."""
    return BaselineIngress.bind(BaselineWorker.bind())


@serve.deployment(max_ongoing_requests=32)
class IdleDeployment:
    """A replica that only answers: one per OrganismManager, MetricsCollector and pool."""

    async def ping(self) -> bool:
        return True


@serve.deployment(max_ongoing_requests=256)
class IdleIngress:
    """Ready (HTTP 200 on any path) once every other deployment of the graph answers."""

    def __init__(self, *others: DeploymentHandle) -> None:
        self._others = others

    async def __call__(self, request: Request) -> JSONResponse:
        for other in self._others:
            await other.ping.remote()
        return JSONResponse({"ready": True})


def build_startup_floor(args: dict[str, Any]) -> Any:
    """serveflow's graph with no serveflow code: from the same ``args`` as ``serve_config.yaml``,
    one deployment per serveflow deployment with the same name, replica count and CPU share
    (Coordinator, OrganismManager, MetricsCollector, one per pool). Its start-up is what Ray
    and Serve take for that graph on this machine; serveflow's start-up above it is its own."""
    from serve_app.runtime.config import AppConfig, pool_deployment_name

    config = AppConfig.from_args(args)
    others = [
        IdleDeployment.options(name=pool_deployment_name(name), **pool.deployment_options()).bind()
        for name, pool in config.pools.items()
    ]
    others.append(IdleDeployment.options(name="MetricsCollector", ray_actor_options={"num_cpus": config.metrics_cpus}).bind())
    others.append(IdleDeployment.options(name="OrganismManager", ray_actor_options={"num_cpus": config.manager_cpus}).bind())
    return IdleIngress.options(name="Coordinator", **config.coordinator.deployment_options()).bind(*others)
