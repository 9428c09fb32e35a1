"""Fault-injection helpers for integration tests: find replicas, SIGKILL them, run load beside."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import signal
from typing import Any

import httpx
import ray

from serve_app.client.load import LoadConfig, LoadReport, run_load


def replica_actors(deployment: str, app: str = "serveflow") -> dict[str, Any]:
    """Replica actor name -> actor handle, for one deployment."""
    return {
        a["name"]: ray.get_actor(a["name"], namespace=a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if f"{app}#{deployment}#" in a["name"]
    }


def replica_pids(deployment: str, app: str = "serveflow") -> dict[str, int]:
    """Replica actor name -> process id, for one deployment."""
    out = {}
    for name, actor in replica_actors(deployment, app).items():
        try:
            out[name] = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
        except Exception:  # dying or not started yet
            continue
    return out


def sigkill_replica(deployment: str) -> int:
    """SIGKILL one running replica of ``deployment``; returns its pid."""
    pids = replica_pids(deployment)
    assert pids, f"no running replica of {deployment}"
    pid = next(iter(pids.values()))
    os.kill(pid, signal.SIGKILL)
    return pid


def pool_settled(http: httpx.Client, deployment: str, pool: str) -> bool:
    """The OrganismManager's last probe of ``pool`` was answered by a replica that is alive now,
    Serve runs nothing but healthy replicas of it, and the Coordinator routes to it.

    ``/readyz`` alone can say 200 from a probe answered before a kill was noticed; a test that
    needs tasks in flight on the replacement waits for this instead."""
    live = {name.rsplit("#", 1)[-1] for name in replica_pids(deployment)}
    status = http.get("/v1/status").json()
    info = status["pools"][pool]
    reported = info["details"]["reported"].get("details", {})
    states = status["deployments"].get(deployment, {}).get("replica_states", {})
    return (
        info["status"] == "healthy"
        and reported.get("replica_id") in live
        and set(states) == {"RUNNING"}
        and http.get("/readyz").status_code == 200
    )


def start_load(pool: cf.ThreadPoolExecutor, cfg: LoadConfig) -> "cf.Future[LoadReport]":
    return pool.submit(lambda: asyncio.run(run_load(cfg)))


def report_line(name: str, report: LoadReport) -> str:
    s = report.summary()
    return (
        f"{name}: sent={s['sent']} ok={s['ok']} structured={s['structured_errors']} "
        f"transport={s['transport_errors']} lost={s['lost']} hung={s['hung']} p50={s['p50_ms']} p99={s['p99_ms']}"
    )


def assert_nothing_lost(report: LoadReport, *, allowed_codes: set[str]) -> None:
    assert report.lost == 0, report.summary()
    assert report.hung == 0, report.summary()
    assert not report.transport, report.summary()
    assert set(report.structured) <= allowed_codes, report.summary()


def load(target: str, **kw: Any) -> LoadConfig:
    kw.setdefault("request_timeout_s", 60.0)
    kw.setdefault("duration_s", 60.0)
    return LoadConfig(target=target, **kw)
