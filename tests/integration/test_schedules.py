"""Cron schedules on real Serve: listed with next fire times over HTTP and gRPC, pause/resume/trigger,
and one run per tick across a Coordinator kill."""

from __future__ import annotations

import collections
import time
from typing import Any

import httpx
import pytest
import ray

from serve_app.client.sdk import ServeflowClient
from tests.integration.conftest import wait_until

PERIOD_S = 3


def _tick_runs(http: httpx.Client) -> list[dict[str, Any]]:
    runs = http.get("/v1/runs", params={"workflow": "tick", "limit": 1000}).json()["runs"]
    return [r for r in runs if (r["idempotency_key"] or "").startswith("schedule.ticker.")]


def _scheduled(runs: list[dict[str, Any]]) -> list[int]:
    """Tick times (ms) of the runs the cron fired (not manual triggers)."""
    return sorted(int(r["idempotency_key"].rsplit(".", 1)[1]) for r in runs if ".manual." not in r["idempotency_key"])


def test_a_schedule_fires_every_tick_once_and_can_be_paused_resumed_and_triggered(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    (ticker,) = http.get("/v1/schedules").json()["schedules"]
    assert ticker["name"] == "ticker" and ticker["next_fire"] > time.time() - 1 and ticker["paused"] is False
    before = len(_scheduled(_tick_runs(http)))
    wait_until(lambda: len(_scheduled(_tick_runs(http))) >= before + 2, 30, what="two more ticks")
    ticks = _scheduled(_tick_runs(http))
    assert len(ticks) == len(set(ticks)) and all(t % (PERIOD_S * 1000) == 0 for t in ticks)  # on the cron, once each
    paused = http.post("/v1/schedules/ticker/pause").json()
    assert paused["success"] and paused["schedule"]["paused"] is True and paused["schedule"]["next_fire"] is None
    time.sleep(1)
    frozen = len(_tick_runs(http))
    time.sleep(2 * PERIOD_S)
    assert len(_tick_runs(http)) == frozen  # paused: nothing fires
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        resumed = client.resume_schedule("ticker")
        assert resumed.success and resumed.schedule is not None and resumed.schedule["paused"] is False
        missing = client.trigger_schedule("nope")
        assert not missing.success and missing.error is not None and missing.error.code == "not_found"
        listed = client.list_schedules()
        assert listed.success and [s["name"] for s in listed.schedules or []] == ["ticker"]
    triggered = http.post("/v1/schedules/ticker/trigger").json()
    assert triggered["success"] and triggered["run_id"]
    run = wait_until(lambda: (r := http.get(f"/v1/runs/{triggered['run_id']}").json()["run"])["status"] == "succeeded" and r, 30, what="the triggered run")
    assert run["idempotency_key"].startswith("schedule.ticker.manual.")
    wait_until(lambda: len(_tick_runs(http)) > frozen + 1, 30, what="ticks after the resume")
    status = http.get("/v1/status").json()["components"]["Coordinator"]["details"]["schedules"]
    assert status[0]["name"] == "ticker" and status[0]["next_fire"] is not None


@pytest.mark.faults
def test_ticks_fire_once_across_a_coordinator_kill(http: httpx.Client) -> None:
    wait_until(lambda: len(_scheduled(_tick_runs(http))) >= 2, 30, what="the schedule running")
    (actor,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if "serveflow#Coordinator" in a["name"]]
    killed_at = time.time()
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    wait_until(lambda: http.get("/readyz").status_code == 200, 120, what="a new Coordinator")
    wait_until(lambda: sum(t / 1000 > killed_at for t in _scheduled(_tick_runs(http))) >= 4, 90, what="ticks again")
    ticks = _scheduled(_tick_runs(http))
    counts = collections.Counter(ticks)
    assert all(n == 1 for n in counts.values())  # never twice, whoever fired it
    after = [t / 1000 for t in ticks if t / 1000 > killed_at]
    gaps = [b - a for a, b in zip(after, after[1:], strict=False)]
    print(f"schedule across a Coordinator kill: {len(after)} ticks since, gaps {gaps}")
    # Back on every tick; the outage costs at most the ticks missed while no Coordinator lived
    # (catch_up: last fires the latest of those once).
    assert len(after) >= 4 and all(g == PERIOD_S for g in gaps[1:]), gaps
