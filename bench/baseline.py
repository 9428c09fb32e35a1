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
