from __future__ import annotations

import asyncio

import pytest

from serve_app.runtime.health import ChangeFeed, ComponentTracker, deployment_states, rollup
from serve_app.core.models import ComponentStatus, HealthState


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_initializing_until_first_healthy_report() -> None:
    clock = FakeClock()
    t = ComponentTracker("p", clock=clock)
    t.observe_failure("no status answer within 2s")
    assert t.state is HealthState.INITIALIZING and not t.ready
    clock.t = 105
    t.observe_report({"status": "healthy"})
    snap = t.snapshot()
    assert snap.status is HealthState.HEALTHY and snap.since == 105 and snap.error is None and t.ready


def test_failure_after_healthy_is_unhealthy_with_error_and_since() -> None:
    clock = FakeClock()
    t = ComponentTracker("p", clock=clock)
    t.observe_report({"status": "healthy"})
    clock.t = 110
    t.observe_failure("the replica died")
    snap = t.snapshot()
    assert snap.status is HealthState.UNHEALTHY and snap.error == "the replica died" and snap.since == 110
    assert snap.details["last_error_at"] == 110


def test_reported_unhealthy_keeps_its_reason() -> None:
    t = ComponentTracker("p")
    t.observe_report({"status": "unhealthy", "error": "handler module 'x' failed to import"})
    assert t.snapshot().error == "handler module 'x' failed to import"


def test_serve_failing_replicas_degrade_a_healthy_probe() -> None:
    t = ComponentTracker("p")
    t.observe_report({"status": "healthy"})
    t.observe_serve("UNHEALTHY", "replica failed health check", {"RUNNING": 1, "STARTING": 1})
    snap = t.snapshot()
    assert snap.status is HealthState.DEGRADED and snap.error == "replica failed health check" and t.ready


def _c(state: HealthState) -> ComponentStatus:
    return ComponentStatus(name="x", status=state)


def test_rollup() -> None:
    H, D, U, I = HealthState.HEALTHY, HealthState.DEGRADED, HealthState.UNHEALTHY, HealthState.INITIALIZING
    assert rollup([]) is I
    assert rollup([_c(I), _c(I)]) is I
    assert rollup([_c(H), _c(H)]) is H
    assert rollup([_c(H), _c(U)]) is D
    assert rollup([_c(H), _c(D)]) is D
    assert rollup([_c(U), _c(I)]) is U


def test_coordinator_state_degrades_for_the_store_and_fails_for_dead_loops() -> None:
    from serve_app.runtime.health import coordinator_state

    assert coordinator_state(loop_problem=None, store_error=None, readiness_error=None) == (HealthState.HEALTHY, None)
    state, error = coordinator_state(loop_problem=None, store_error="the run store (postgres at h) is unavailable", readiness_error=None)
    assert state is HealthState.DEGRADED and error == "run store unavailable: the run store (postgres at h) is unavailable"
    assert coordinator_state(loop_problem="workflow-leases loop exited", store_error="x", readiness_error=None)[0] is HealthState.UNHEALTHY


def test_redacted_dsn_never_shows_the_password() -> None:
    from serve_app.workflow.store_postgres import redact_dsn

    assert redact_dsn("postgresql://app:s3cret@db:5432/serveflow") == "postgresql://app:***@db:5432/serveflow"
    assert redact_dsn("postgresql://app@db/serveflow") == "postgresql://app@db/serveflow"


def test_a_pool_scaled_to_zero_is_ready() -> None:
    t = ComponentTracker("gpu", clock=lambda: 1.0)
    assert not t.ready  # initializing until someone says otherwise
    t.observe_serve("HEALTHY", "", {})
    t.observe_scaled_to_zero()
    assert t.ready and t.snapshot().details["reported"] == {"scaled_to_zero": True}
    t.observe_serve("DEPLOY_FAILED", "import failed", {})
    t.observe_scaled_to_zero()
    assert t.state is HealthState.DEGRADED  # Serve's failure still shows


def test_serve_messages_lose_their_tracebacks() -> None:
    from serve_app.runtime.health import summarize

    message = (
        "A replica failed the health check 3 times in a row, marking it unhealthy. Traceback (most recent call last):\n"
        '  File "/x/site-packages/ray/serve/_private/replica.py", line 10, in check_health\nRuntimeError: stuck'
    )
    assert summarize(message) == "A replica failed the health check 3 times in a row, marking it unhealthy. RuntimeError: stuck"
    t = ComponentTracker("p", clock=lambda: 1.0)
    t.observe_report({"status": "healthy"})
    t.observe_serve("UNHEALTHY", message, {"RUNNING": 1})
    snap = t.snapshot()
    assert "Traceback" not in snap.model_dump_json() and snap.error == summarize(message)
    assert summarize("Traceback (most recent call last):\n  File x") == "see the replica's logs"
    failed_import = (
        "The deployment failed to start 3 times in a row. Traceback (most recent call last):\n"
        '  File "/w/handler_worker.py", line 40, in __init__\n    registry = ...\n'
        "serve_app.runtime.handlers.HandlerLoadError: pool 'broken' failed to import serve_app.examples.nope"
    )
    assert summarize(failed_import) == (
        "The deployment failed to start 3 times in a row. "
        "serve_app.runtime.handlers.HandlerLoadError: pool 'broken' failed to import serve_app.examples.nope"
    )


@pytest.mark.anyio
async def test_change_feed_long_poll() -> None:
    feed = ChangeFeed()
    assert feed.publish({"general": {"ready": False}})
    assert not feed.publish({"general": {"ready": False}})  # same value: no new version
    version, value = await feed.read(None)
    assert value == {"general": {"ready": False}} and version.endswith(".1")
    # Up to date: waits until the next change, which answers at once.
    waiting = asyncio.ensure_future(feed.read(version, wait_s=10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    feed.publish({"general": {"ready": True}})
    v2 = feed.version
    assert v2 != version and await asyncio.wait_for(waiting, 1) == (v2, {"general": {"ready": True}})
    # Up to date and nothing changes: the answer comes after wait_s with the same version.
    started = asyncio.get_running_loop().time()
    assert await feed.read(v2, wait_s=0.1) == (v2, {"general": {"ready": True}})
    assert asyncio.get_running_loop().time() - started >= 0.09
    # A stale reader is answered at once.
    assert await asyncio.wait_for(feed.read(version, wait_s=10), 1) == (v2, {"general": {"ready": True}})
    # A feed made again (the manager's replica restarted) never repeats a version, so a reader
    # holding one of the old feed's is answered at once, not after wait_s.
    again = ChangeFeed()
    again.publish({"general": {"ready": True}})
    assert again.version != v2 and again.version.endswith(".1")
    assert await asyncio.wait_for(again.read(version, wait_s=10), 1) == (again.version, {"general": {"ready": True}})


def test_deployment_states_read_serves_details_as_json() -> None:
    """The controller's details hold Serve's str enums (or their text, once through JSON)."""
    from enum import Enum

    class DeploymentStatus(str, Enum):
        HEALTHY = "HEALTHY"
        UNHEALTHY = "UNHEALTHY"

    class ReplicaState(str, Enum):
        RUNNING = "RUNNING"
        STARTING = "STARTING"

    details = {
        "applications": {
            "serveflow": {
                "deployments": {
                    "Coordinator": {
                        "status": DeploymentStatus.HEALTHY,
                        "message": "",
                        "replicas": [{"state": ReplicaState.RUNNING}, {"state": ReplicaState.STARTING}, {"state": "RUNNING"}],
                        "target_num_replicas": 3,
                    },
                    "HandlerWorker_general": {
                        "status": "UNHEALTHY",
                        "message": "replica failed\nTraceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom",
                    },
                }
            }
        }
    }
    states = deployment_states(details, "serveflow")
    assert states["Coordinator"] == {
        "status": "HEALTHY",
        "message": "",
        "replica_states": {"RUNNING": 2, "STARTING": 1},
        "target_replicas": 3,
    }
    general = states["HandlerWorker_general"]
    assert general["status"] == "UNHEALTHY" and general["replica_states"] == {} and general["target_replicas"] is None
    assert general["message"] == "replica failed ValueError: boom"  # never the frames
    assert deployment_states(details, "other") == {} and deployment_states({}, "serveflow") == {}
