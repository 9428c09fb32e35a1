"""Pools on Serve's own autoscaling: a pool scaled to zero is ready, and its first request starts it."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.integration.conftest import wait_until


def _cold(http: httpx.Client) -> dict[str, Any]:
    return http.get("/v1/status").json()["pools"]["cold"]


def test_a_pool_at_zero_is_ready_and_its_first_request_cold_starts_it(http: httpx.Client) -> None:
    # The session app deployed the pool with no replica; readiness knows that is by design.
    assert http.get("/readyz").status_code == 200
    pool = wait_until(lambda: (p := _cold(http))["replicas"] and p, 30, what="Serve's view of the cold pool")
    assert pool["replicas"] == {"target": 0, "running": 0}, pool
    assert pool["status"] == "healthy" and pool["details"]["reported"] == {"scaled_to_zero": True}

    started = time.monotonic()
    r = http.post("/v1/tasks", json={"task_type": "tokenize", "payload": {"text": "hello there world"}, "timeout_s": 60})
    cold_start_s = time.monotonic() - started
    assert r.status_code == 200 and r.json()["result"] == {"ids": [0, -1, 1]}, r.text
    print(f"cold start of a pool at zero: first request answered in {cold_start_s:.1f}s")

    pool = wait_until(lambda: (p := _cold(http))["replicas"]["running"] == 1 and p, 30, what="the cold pool running")
    assert pool["replicas"] == {"target": 1, "running": 1} and pool["status"] == "healthy"
    warm = http.post("/v1/tasks", json={"task_type": "tokenize", "payload": {"text": "world"}})
    assert warm.status_code == 200 and warm.json()["result"] == {"ids": [1]}
