"""All Ray/Serve API calls made by the deployments live here.

Keeping them in one module keeps the deployments thin and gives one place
where Ray's exceptions become ServeflowErrors.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError, RayActorError, TaskCancelledError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from serve_app.runtime.health import deployment_states
from serve_app.core.aio import within
from serve_app.core.codec import over_message_limit
from serve_app.core.errors import Cancelled, Internal, Overloaded, PayloadTooLarge, ServeflowError, Unavailable
from serve_app.runtime.runner import ObjectLost

logger = logging.getLogger("serveflow.ray_calls")


def downstream_error(exc: BaseException, *, target: str) -> ServeflowError:
    """Map an exception from a deployment-handle call to a ServeflowError."""
    if isinstance(exc, ServeflowError):
        return exc
    if isinstance(exc, BackPressureError):
        return Overloaded(f"{target} is overloaded; retry later", details={"target": target}, retry_after_s=1.0)
    if isinstance(exc, DeploymentUnavailableError):
        return Unavailable(f"{target} is unavailable", details={"target": target})
    if isinstance(exc, (ActorDiedError, RayActorError, ActorUnavailableError)):
        return Unavailable(f"the {target} replica handling this request died", details={"target": target})
    if isinstance(exc, (RequestCancelledError, TaskCancelledError)):
        return Cancelled(f"request to {target} was cancelled", details={"target": target})
    if _refused_for_size(exc):
        return PayloadTooLarge(
            f"a message to or from {target} is larger than Serve's gRPC transport between replicas allows"
            " (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH in the cluster's environment)",
            details={"target": target},
        )
    logger.error("unexpected error calling %s", target, exc_info=exc)
    return Internal(f"unexpected error calling {target}", details={"target": target})


def _refused_for_size(exc: BaseException | None) -> bool:
    # Serve's gRPC transport raises the channel's own error (or one caused by it).
    seen = 0
    while exc is not None and seen < 5:
        code, details = getattr(exc, "code", None), getattr(exc, "details", None)
        if callable(code) and callable(details) and over_message_limit(code(), details()):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


async def local_handle(handle: DeploymentHandle) -> DeploymentHandle:
    """The same deployment's handle, made in this replica.

    A handle bound into the graph is made in the process that built the app, and it keeps
    that process's transport: Serve picks gRPC or actor calls from its ``RAY_SERVE_*``
    environment when ``ray.serve`` is first imported. A driver that imported Serve before
    :func:`serve_app.core.connect.connect` set serveflow's profile builds handles that use
    actor calls (about 0.5 ms more per call on 2 cores). Made here, a handle follows the
    cluster's profile, whoever built the app. (A thread: the lookup asks the controller.)
    """
    return await asyncio.to_thread(serve.get_deployment_handle, handle.deployment_name, handle.app_name)


def by_reference(handle: DeploymentHandle) -> DeploymentHandle:
    """The handle as Ray actor calls, whatever the cluster's transport: the one on which
    ObjectRefs in requests and answers are reference-counted (Serve's gRPC transport pickles
    them out of band, and Ray then pins each object for the life of the process)."""
    return handle.options(_by_reference=True)


async def await_response(response: DeploymentResponse, *, target: str, timeout_s: float | None = None) -> Any:
    """Await a handle call; cancelling the caller cancels the downstream request.

    With ``timeout_s`` it raises ``asyncio.TimeoutError`` after that long (and
    cancels the downstream request).
    """

    async def wait() -> Any:
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as exc:
            raise downstream_error(exc, target=target) from exc

    return await (wait() if timeout_s is None else within(wait(), timeout_s))


class RayObjects:
    """Results kept by reference live in Ray's object store, owned by the worker that made them:
    they last as long as that worker process (and its node) and someone holds the reference."""

    def put(self, value: Any) -> ray.ObjectRef:
        return ray.put(value)

    def key(self, handle: ray.ObjectRef) -> bytes:
        return handle.binary()  # the id alone: holding it does not keep the object

    async def get(self, handle: Any) -> Any:
        try:
            return await handle
        except ObjectLostError as exc:  # also OwnerDiedError, ObjectReconstructionFailedError
            raise ObjectLost(str(exc).splitlines()[0]) from exc


def replica_identity() -> dict[str, str]:
    """Who is answering: app, deployment and replica id of this replica."""
    ctx = serve.get_replica_context()
    return {
        "app": ctx.app_name,
        "deployment": ctx.deployment,
        "replica_id": ctx.replica_id.unique_id,
    }


def serve_deployment_states() -> dict[str, dict[str, Any]]:
    """Serve's view of every deployment of this replica's app (blocking; run in a thread):
    state, message, replicas by state and the target replica count (autoscaling's current goal).

    ``serve.status()`` is built from these same details but drops the target, so they are
    read from the controller's details (one controller call either way)."""
    from ray.serve.context import _get_global_client

    return deployment_states(_get_global_client().get_serve_details(), serve.get_replica_context().app_name)


def cluster_resources() -> tuple[dict[str, float], dict[str, float], list[dict[str, Any]]]:
    """Totals, availability and nodes from Ray (blocking; run in a thread).

    Verifies Ray is connected before asking, so this raises a clear error
    instead of Ray's "Ray has not been started yet".
    """
    if not ray.is_initialized():
        raise RuntimeError("this process is not connected to Ray")
    from ray.util.state import list_nodes

    nodes = list_nodes(timeout=5, raise_on_missing_output=False)
    return ray.cluster_resources(), ray.available_resources(), [_node_dict(n) for n in nodes]


def _node_dict(node: Any) -> dict[str, Any]:
    if isinstance(node, dict):
        return node
    return {k: getattr(node, k, None) for k in ("node_id", "state", "node_ip", "is_head_node", "resources_total")}
