"""Test helpers: run the real handler pools in-process, without Ray.

``InProcessPools(config)`` loads every pool's handler modules exactly as a
HandlerWorker does and is a drop-in :data:`serve_app.runtime.dispatch.PoolCaller`, so
the HTTP layer, the dispatcher and the handlers can be tested together fast.
"""

from __future__ import annotations

import itertools
import random
import socket
from typing import Any

from serve_app.runtime.config import AppConfig
from serve_app.runtime.dispatch import Dispatcher, ReadinessBoard
from serve_app.runtime.handlers import HandlerRegistry
from serve_app.core.models import TaskResult, WorkItem
from serve_app.runtime.recent import RecentValues
from serve_app.runtime.runner import HandlerRunner, ObjectLost


# Ports handed out for servers a test or benchmark starts (proxies, GCS, raylets, uvicorn), drawn
# below the kernel's ephemeral range (Linux 32768-60999, macOS 49152-65535) and above Ray's
# worker ports (10002-19999). A port the kernel gave out as "free" (bind to 0) sits in the
# ephemeral range, where any process's next outgoing connection or bind to 0 (every Ray
# component, every replica's gRPC server) may take it before the server that was meant to
# have it binds: a two-node test's gRPC proxy once failed that way.
_PORTS = range(20000, 32000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on now, on every address, not handed out before in this process."""
    for _ in range(200):
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        try:
            with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as s:
                s.bind(("", port))  # [::] (or 0.0.0.0): what Serve's gRPC proxy binds
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1}")


def haproxy_host_env(directory: str, *, http_ports: range, grpc_ports: range) -> dict[str, str]:
    """Serve's settings for a cluster that shares its host with another one under HAProxy (the
    default profile): HAProxy's config file, admin and metrics sockets and server state go under
    ``directory``; its stats and metrics ports and the fallback proxy's ports are free ones; the
    ingress replicas' own ports come from ``http_ports`` and ``grpc_ports``. Serve's defaults for
    all of these are fixed host-wide (``/tmp/haproxy-serve``, 8404, 9101, 8500, 9500, 30000-31000,
    40000-41000), so two clusters on one host overwrite each other's HAProxy config otherwise.
    Serve reads them when its processes start: put them in the environment of the command that
    starts the cluster (``ray start``, ``serve run`` or :func:`serve_app.core.connect.connect`).
    Keep ``directory`` short: Serve puts the sockets in a folder per node (56 characters) below it,
    and HAProxy refuses a socket path over 97 bytes."""
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{directory}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{directory}/admin.sock",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{directory}/metrics.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": directory,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{directory}/server-state",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http_ports.start),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http_ports.stop - 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_ports.start),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc_ports.stop - 1),
    }


class LocalObjects:
    """An in-process stand-in for Ray's object store (results kept by reference); ``clear`` loses
    every object the way a dead worker or node does."""

    def __init__(self) -> None:
        self.values: dict[int, Any] = {}
        self._ids = itertools.count(1)

    def put(self, value: Any) -> int:
        handle = next(self._ids)
        self.values[handle] = value
        return handle

    async def get(self, handle: Any) -> Any:
        if handle not in self.values:
            raise ObjectLost(f"object {handle} is gone")
        return self.values[handle]

    def key(self, handle: Any) -> Any:
        return handle

    def clear(self) -> None:
        self.values.clear()


class InProcessPools:
    """Every configured pool as a local HandlerRunner, set up as a HandlerWorker replica sets up
    its own (one replica per pool)."""

    def __init__(self, config: AppConfig, objects: LocalObjects | None = None) -> None:
        self.objects = objects or LocalObjects()
        self.runners = {
            name: HandlerRunner(
                HandlerRegistry.from_modules(pool.handler_modules, pool.task_types),
                max_concurrency=pool.max_concurrency,
                max_stuck_calls=pool.max_stuck_calls,
                objects=self.objects,
                recent=RecentValues(pool.reuse_results_bytes) if pool.reuse_results_bytes else None,
                replica_id=f"{name}-replica",
            )
            for name, pool in config.pools.items()
        }

    def lose_results(self) -> None:
        """Lose every result kept by reference, as when the workers that made them die: the
        object store's and those the workers hold themselves."""
        self.objects.clear()
        for runner in self.runners.values():
            runner.forget_held()

    async def __call__(self, pool: str, item: WorkItem) -> TaskResult:
        return await self.runners[pool].run(item)

    def readiness_report(self) -> dict[str, dict[str, object]]:
        """What the OrganismManager would report for these pools."""
        return {
            name: {"ready": runner.health_problem() is None, "status": "healthy", "error": runner.health_problem()}
            for name, runner in self.runners.items()
        }

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()


def in_process_dispatcher(config: AppConfig, *, ready: bool = True) -> tuple[Dispatcher, ReadinessBoard, InProcessPools]:
    """A Dispatcher over in-process pools; ``ready=False`` leaves readiness unknown."""
    pools = InProcessPools(config)
    board = ReadinessBoard()
    if ready:
        board.update(pools.readiness_report())
    return Dispatcher(config, board, pools), board, pools


def local_grpc_servicer(backend: Any, *, max_payload_bytes: int, auth_token: str | None = None) -> Any:
    """A plain grpc.aio servicer over ``backend`` (an ingress Backend), for testing the gRPC layer without Serve."""
    from serve_app.ingress.auth import BearerAuth
    from serve_app.ingress.grpc import RPCS, GrpcIngress
    from serve_app.proto import serveflow_pb2_grpc as pb_grpc

    ingress = GrpcIngress(backend, max_payload_bytes=max_payload_bytes, auth=BearerAuth(auth_token))

    def rpc(name: str) -> Any:
        async def method(request: Any, context: Any) -> Any:
            return await ingress.handle(name, request, context)

        return staticmethod(method)

    return type("LocalTaskServicer", (pb_grpc.TaskServiceServicer,), {name: rpc(name) for name in RPCS})()
