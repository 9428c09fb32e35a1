"""Durable sleep and signals: the engine over every store (in-process pools, no Ray).

A waiting run is parked: no lease, no Coordinator task; it is claimed again when it
is due or when a signal it waits for arrives, by whichever engine is alive.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import pytest

from serve_app.core.errors import Conflict, NotFound
from serve_app.runtime.config import AppConfig
from serve_app.testing import in_process_dispatcher
from serve_app.workflow import WorkflowSpec, validate
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.spec import parse_duration, parse_instant
from serve_app.workflow.state import RunStatus, StepStatus
from serve_app.workflow.store import RunStore
from tests.conftest import until

pytestmark = pytest.mark.anyio


def spec(name: str, steps: list[dict[str, Any]]) -> WorkflowSpec:
    s = WorkflowSpec.model_validate({"name": name, "steps": steps})
    validate(s, {"echo", "sleep"})
    return s


WORKFLOWS = {
    s.name: s
    for s in [
        spec("nap", [{"name": "nap", "sleep": "${input.seconds}"}, {"name": "after", "task_type": "echo", "input": {"message": "up"}, "depends_on": ["nap"]}]),
        spec("nap_until", [{"name": "until", "sleep_until": "${input.at}"}]),
        spec(
            "approval",
            [
                {"name": "ask", "task_type": "echo", "input": {"message": "asked"}},
                {"name": "approve", "wait_for": {"signal": "approved"}, "depends_on": ["ask"]},
                {"name": "second", "wait_for": {"signal": "approved"}, "depends_on": ["approve"]},
            ],
        ),
        spec("early", [{"name": "pause", "sleep": 0.3}, {"name": "approve", "wait_for": {"signal": "approved"}, "depends_on": ["pause"]}]),
        spec("strict", [{"name": "approve", "wait_for": {"signal": "approved", "timeout": 0.3}}]),
        spec(
            "lenient",
            [
                {"name": "approve", "wait_for": {"signal": "approved", "timeout": "0.3s", "on_timeout": "skip"}},
                {"name": "after", "task_type": "echo", "input": {"message": "x"}, "depends_on": ["approve"]},
                {"name": "other", "task_type": "echo", "input": {"message": "y"}},
            ],
        ),
        spec("busy", [{"name": "nap", "sleep": 0.4}, {"name": "work", "task_type": "sleep", "input": {"seconds": 0.1}}]),
        spec(
            "early_task",
            [
                {"name": "work", "task_type": "sleep", "input": {"seconds": 0.5}},
                {"name": "approve", "wait_for": {"signal": "approved"}, "depends_on": ["work"]},
            ],
        ),
    ]
}


def test_durations_and_instants() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration("2d") == 172800 and parse_duration(1.5) == 1.5
    assert parse_duration("10m") == 600 and parse_duration(" 90s ") == 90
    for bad in ("ten", "", "-5", -1, True, "400d", None):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_instant("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    assert parse_instant(1700000000) == 1700000000.0
    with pytest.raises(ValueError, match="no time zone"):
        parse_instant("2026-01-01T00:00:00")
    with pytest.raises(ValueError, match="exactly one of"):
        spec("x", [{"name": "a", "sleep": "1m", "task_type": "echo"}])
    with pytest.raises(ValueError, match="not a duration"):
        spec("x", [{"name": "a", "sleep": "soon"}])
    with pytest.raises(ValueError, match="map runs a task_type"):
        spec("x", [{"name": "a", "sleep": "1m", "map": {"over": "${input.xs}"}}])


@pytest.fixture
async def engine(store: RunStore, config: AppConfig) -> AsyncIterator[RunEngine]:
    dispatcher, _, pools = in_process_dispatcher(config)
    eng = RunEngine(store, dispatcher.submit, WORKFLOWS, owner="one", lease_s=5, cancel_poll_s=0.05)
    yield eng
    await eng.shutdown()
    pools.close()


async def test_a_sleep_holds_no_task_and_wakes_on_time(engine: RunEngine) -> None:
    started = time.time()
    run, _ = await engine.start("nap", {"seconds": 0.5})

    async def parked() -> bool:
        return run.run_id not in engine.active_runs

    await until(parked)
    mid = await engine.get(run.run_id)
    nap = mid.step("nap")
    assert mid.status is RunStatus.RUNNING and nap.status is StepStatus.RUNNING and nap.wake_at is not None
    assert engine.active_runs == []  # nothing of this run is in the Coordinator while it sleeps
    done = await engine.wait(run.run_id, 10)
    assert done.status is RunStatus.SUCCEEDED, done.error
    woke = done.step("nap").result["woke_at"]
    assert nap.wake_at <= woke < nap.wake_at + 1.0 and woke - started >= 0.5
    assert done.step("after").result == {"message": "up"}


async def test_sleep_until_a_timestamp_from_the_input(engine: RunEngine) -> None:
    at = datetime.fromtimestamp(time.time() + 0.4, tz=timezone.utc).isoformat()
    run, _ = await engine.start("nap_until", {"at": at})
    done = await engine.wait(run.run_id, 10)
    assert done.status is RunStatus.SUCCEEDED and done.step("until").result["woke_at"] >= parse_instant(at)
    past, _ = await engine.start("nap_until", {"at": "2000-01-01T00:00:00Z"})  # already due: no wait
    assert (await engine.wait(past.run_id, 5)).status is RunStatus.SUCCEEDED
    bad, _ = await engine.start("nap_until", {"at": "tomorrow"})
    failed = await engine.wait(bad.run_id, 5)
    err = failed.step("until").error
    assert failed.status is RunStatus.FAILED and err is not None and "step 'until' sleep:" in err.message


async def test_a_sleep_wakes_after_its_coordinator_is_gone(store: RunStore, config: AppConfig) -> None:
    dispatcher, _, pools = in_process_dispatcher(config)
    first = RunEngine(store, dispatcher.submit, WORKFLOWS, owner="first", lease_s=5)
    run, _ = await first.start("nap", {"seconds": 0.6})

    async def parked() -> bool:
        return run.run_id not in first.active_runs and (await first.get(run.run_id)).step("nap").wake_at is not None

    await until(parked)
    due = (await first.get(run.run_id)).step("nap").wake_at
    await first.shutdown()  # the Coordinator is gone while the run sleeps
    second = RunEngine(store, dispatcher.submit, WORKFLOWS, owner="second", lease_s=5)
    assert await second.resume() == []  # not due yet: nobody takes it
    await asyncio.sleep(max(0.0, due - time.time()) + 0.05)  # type: ignore[operator]
    assert await second.resume() == [run.run_id]  # the lease loop's claim, once due
    done = await second.wait(run.run_id, 10)
    await second.shutdown()
    pools.close()
    assert done.status is RunStatus.SUCCEEDED and done.step("nap").result["due_at"] == due


async def test_a_signal_sent_before_the_step_is_kept(engine: RunEngine) -> None:
    run, _ = await engine.start("early", {})
    _, created = await engine.signal(run.run_id, "approved", {"by": "ada"}, signal_id="sig-1")
    assert created
    done = await engine.wait(run.run_id, 10)
    assert done.status is RunStatus.SUCCEEDED and done.step("approve").result == {"by": "ada"}


async def test_a_signal_sent_while_only_a_task_runs_does_not_spin_the_drive(engine: RunEngine) -> None:
    # The signal pokes the drive; with no step waiting for one there is nothing to look at
    # until the wait begins (it reads the stored signal then), so the drive must not wake
    # over and over meanwhile (it did: the poke stayed set and every turn returned at once).
    run, _ = await engine.start("early_task", {})
    await engine.signal(run.run_id, "approved", {"by": "ada"})
    cpu = time.process_time()
    done = await engine.wait(run.run_id, 10)
    assert done.status is RunStatus.SUCCEEDED and done.step("approve").result == {"by": "ada"}
    assert time.process_time() - cpu < 0.25  # a spinning drive burns the whole 0.5 s task


async def test_a_signal_wakes_a_parked_run_and_duplicates_are_ignored(engine: RunEngine) -> None:
    run, _ = await engine.start("approval", {})

    async def waiting() -> bool:
        r = await engine.get(run.run_id)
        return r.step("approve").status is StepStatus.RUNNING and run.run_id not in engine.active_runs

    await until(waiting)
    sent = time.monotonic()
    _, first = await engine.signal(run.run_id, "approved", {"n": 1}, signal_id="s1")
    _, again = await engine.signal(run.run_id, "approved", {"n": "dup"}, signal_id="s1")
    assert first and not again
    await until(lambda: _step_status(engine, run.run_id, "approve", StepStatus.SUCCEEDED))
    assert time.monotonic() - sent < 2.0  # woken by the signal, not by a lease tick
    _, second = await engine.signal(run.run_id, "approved", {"n": 2}, signal_id="s2")
    done = await engine.wait(run.run_id, 10)
    assert second and done.status is RunStatus.SUCCEEDED
    assert done.step("approve").result == {"n": 1} and done.step("second").result == {"n": 2}  # in order, each once
    with pytest.raises(Conflict):
        await engine.signal(run.run_id, "approved", {})  # finished: 409
    with pytest.raises(NotFound, match="waits for no signal 'rejected'"):
        await engine.signal(run.run_id, "rejected", {})
    with pytest.raises(NotFound):
        await engine.signal("no-such-run", "approved", {})


async def _step_status(engine: RunEngine, run_id: str, step: str, status: StepStatus) -> bool:
    return (await engine.get(run_id)).step(step).status is status


async def test_a_wait_that_times_out_fails_or_skips_by_policy(engine: RunEngine) -> None:
    strict, _ = await engine.start("strict", {})
    failed = await engine.wait(strict.run_id, 10)
    err = failed.step("approve").error
    assert failed.status is RunStatus.FAILED and err is not None and err.code == "timeout" and "'approved'" in err.message
    lenient, _ = await engine.start("lenient", {})
    done = await engine.wait(lenient.run_id, 10)
    assert done.status is RunStatus.SUCCEEDED
    assert [done.step(n).status for n in ("approve", "after", "other")] == [StepStatus.SKIPPED, StepStatus.SKIPPED, StepStatus.SUCCEEDED]


async def test_a_sleep_beside_running_steps_wakes_on_time(engine: RunEngine) -> None:
    run, _ = await engine.start("busy", {})
    done = await engine.wait(run.run_id, 10)
    assert done.status is RunStatus.SUCCEEDED
    nap = done.step("nap")
    assert nap.result["woke_at"] - nap.wake_at < 0.5  # type: ignore[operator]


async def test_cancelling_a_parked_run(engine: RunEngine) -> None:
    run, _ = await engine.start("approval", {})
    await until(lambda: _step_status(engine, run.run_id, "approve", StepStatus.RUNNING))

    async def parked() -> bool:
        return run.run_id not in engine.active_runs

    await until(parked)
    cancelled = await engine.cancel(run.run_id)
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.step("approve").status is StepStatus.CANCELLED and cancelled.step("second").status is StepStatus.CANCELLED


# --------------------------------------------------------------------------- the signal route, HTTP and gRPC


@pytest.fixture
def http_and_grpc(config: AppConfig, tmp_path: Any) -> Any:
    from starlette.testclient import TestClient

    from serve_app.ingress.http import build_http_app
    from serve_app.ingress.operations import Backend
    from serve_app.testing import local_grpc_servicer
    from serve_app.workflow.api import RunService
    from serve_app.workflow.store import SqliteRunStore

    async def status() -> dict[str, Any]:
        return {"status": "healthy"}

    dispatcher, board, pools = in_process_dispatcher(config)
    store = SqliteRunStore(str(tmp_path / "runs.sqlite3"))
    backend = Backend(dispatcher, board, status, RunService(RunEngine(store, dispatcher.submit, WORKFLOWS, owner="t", lease_s=5)))
    app = build_http_app(backend, max_body_bytes=4096)
    with TestClient(app) as client:
        yield client, local_grpc_servicer(backend, max_payload_bytes=4096)
    pools.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_signals_over_http_get_the_same_structured_answers(http_and_grpc: Any, anyio_backend: str) -> None:
    client, _ = http_and_grpc
    run_id = client.post("/v1/workflows/approval/runs", json={"input": {}}).json()["run_id"]
    ok = client.post(f"/v1/runs/{run_id}/signals/approved", json={"payload": {"ok": True}, "signal_id": "a1"})
    assert ok.status_code == 200 and ok.json()["created"] is True, ok.text
    dup = client.post(f"/v1/runs/{run_id}/signals/approved", json={"payload": {"ok": False}, "signal_id": "a1"})
    assert dup.status_code == 200 and dup.json()["created"] is False
    cases = [
        (f"/v1/runs/{run_id}/signals/rejected", {"payload": 1}, 404, "not_found"),
        ("/v1/runs/missing/signals/approved", {"payload": 1}, 404, "not_found"),
        (f"/v1/runs/{run_id}/signals/approved", {"payload": "x" * 5000}, 413, "payload_too_large"),
        (f"/v1/runs/{run_id}/signals/approved", {"payload": 1, "extra": 2}, 422, "validation_error"),
        (f"/v1/runs/{run_id}/signals/approved", {"signal_id": "has space"}, 422, "validation_error"),
    ]
    for path, body, status, code in cases:
        r = client.post(path, json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, r.text)
    bad = client.post(f"/v1/runs/{run_id}/signals/approved", content=b'{"payload": NaN}', headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    client.post(f"/v1/runs/{run_id}/signals/approved", json={"payload": 2, "signal_id": "a2"})
    for _ in range(200):
        if client.get(f"/v1/runs/{run_id}").json()["run"]["status"] == "succeeded":
            break
        time.sleep(0.05)
    late = client.post(f"/v1/runs/{run_id}/signals/approved", json={"payload": 3})
    assert late.status_code == 409 and late.json()["error"]["code"] == "conflict"
    steps = {s["name"]: s for s in client.get(f"/v1/runs/{run_id}").json()["run"]["steps"]}
    assert steps["approve"]["result"] == {"ok": True} and steps["second"]["result"] == 2
    assert client.get("/v1/runs", params={"limit": 1000}).status_code == 200  # nothing refused broke a read


async def test_a_retried_signal_to_a_finished_run_gets_the_same_answer(engine: RunEngine) -> None:
    run, _ = await engine.start("strict", {})
    _, created = await engine.signal(run.run_id, "approved", {"ok": 1}, signal_id="once")
    done = await engine.wait(run.run_id, 10)
    assert created and done.status is RunStatus.SUCCEEDED
    again, created_again = await engine.signal(run.run_id, "approved", {"ok": 1}, signal_id="once")
    assert not created_again and again.status is RunStatus.SUCCEEDED  # a retry, not a conflict
    with pytest.raises(Conflict):
        await engine.signal(run.run_id, "approved", {"ok": 2}, signal_id="another")
