"""The one place that reads the process environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

# Serve's gRPC transport between replicas (its throughput mode) refuses a message larger than
# RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH (4 MiB unless set; read when a replica's process
# imports Serve): on the caller's side for answers, on the replica's own server for requests.
# Every message actor calls carry must get through over gRPC too, so serveflow wants the largest
# (what Serve's own servers allow) in every process of the cluster: its profiles set it, and
# replicas started without it get it through their runtime_env (``replica_env``).
GRPC_MESSAGE_ENV = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1)}

# Serve's own switches, by serveflow profile. Serve reads them when its processes start, so they
# only take effect for a cluster started with them in its environment (see ``connect``). Measured
# in bench/ingress.py; BENCHMARKS.md has the figures and the trade-offs.
SERVE_PROFILES: dict[str, dict[str, str]] = {
    # serveflow's default: Serve's throughput mode (gRPC between replicas, user code on the
    # replica's event loop, buffered access logs, GC frozen after start-up) with HAProxy in front
    # of the ingress replicas (Serve's bundled HAProxy 2.8): HTTP and gRPC reach the Coordinator
    # without Serve's Python proxy. An ingress replica that stops is drained for 2 s instead of
    # Serve's 30 (HAProxy takes it out of rotation within a reload, ~0.1 s, and retries a refused
    # connection on another replica). HAProxy keeps host-wide files and ports: a second cluster
    # on one host needs its own (``serve_app.testing.haproxy_host_env``). BENCHMARKS.md, "Ingress
    # modes", has the figures and the trade-offs.
    "haproxy": {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        **GRPC_MESSAGE_ENV,
    },
    # Serve's throughput mode behind Serve's own proxy (no direct ingress): the default before
    # HAProxy; nothing host-wide, and a stopping Coordinator is not drained.
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", **GRPC_MESSAGE_ENV},
    # Serve exactly as it ships.
    "serve-defaults": {},
}
DEFAULT_SERVE_PROFILE = "haproxy"


@dataclass(frozen=True)
class Settings:
    """Environment-derived settings for code that runs outside Serve replicas."""

    ray_address: str | None
    ray_namespace: str
    serveflow_url: str
    trace_exporter: str | None
    auth_token: str | None
    database_url: str | None = None
    serve_profile: str = DEFAULT_SERVE_PROFILE
    # Serve's own switches (RAY_SERVE_*) in this environment: on a worker of a cluster, what the
    # cluster was started with, and so what every replica there inherits.
    serve_switches: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            ray_address=env.get("RAY_ADDRESS") or None,
            ray_namespace=env.get("RAY_NAMESPACE") or "serveflow",
            serveflow_url=(env.get("SERVEFLOW_URL") or "http://127.0.0.1:8000").rstrip("/"),
            trace_exporter=env.get("SERVEFLOW_TRACE_EXPORTER") or None,
            auth_token=env.get("SERVEFLOW_AUTH_TOKEN") or None,
            database_url=env.get("SERVEFLOW_DATABASE_URL") or None,
            serve_profile=_profile(env.get("SERVEFLOW_SERVE_PROFILE") or DEFAULT_SERVE_PROFILE),
            serve_switches={k: v for k, v in env.items() if k.startswith("RAY_SERVE_")},
        )

    def replica_env(self) -> dict[str, str]:
        """What serveflow's replicas must be given through their ``runtime_env``: the variables of
        ``GRPC_MESSAGE_ENV`` the cluster's environment does not set (a value set there wins).

        Usually nothing: the profiles set them, and a replica inherits them from the cluster. A
        runtime_env costs start-up: such a replica cannot take one of the workers Ray starts in
        advance, and each one's environment is made by Ray's runtime-env agent first."""
        return {k: v for k, v in GRPC_MESSAGE_ENV.items() if k not in self.serve_switches}

    def serve_environment(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Serve's switches for this profile, less those the environment already sets (an explicit
        ``RAY_SERVE_...=0`` wins over the profile)."""
        env = os.environ if environ is None else environ
        return {k: v for k, v in SERVE_PROFILES[self.serve_profile].items() if k not in env}

    def export_serve_environment(self) -> dict[str, str]:
        """Put this profile's Serve switches into this process's environment (what a local
        cluster started from here inherits); returns what was added."""
        added = self.serve_environment()
        os.environ.update(added)
        return added


def _profile(name: str) -> str:
    if name not in SERVE_PROFILES:
        raise ValueError(f"SERVEFLOW_SERVE_PROFILE must be one of {sorted(SERVE_PROFILES)}, not {name!r}")
    return name
