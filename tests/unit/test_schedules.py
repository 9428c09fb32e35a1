"""Cron schedules: due ticks by policy (pure), and firing through the engine on every store with
an injected clock: one run per tick across Coordinators and restarts, overlap, pause/resume/trigger."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import pytest

from serve_app.core.errors import Conflict, NotFound
from serve_app.runtime.config import AppConfig, WorkflowsConfig
from serve_app.testing import in_process_dispatcher
from serve_app.workflow import WorkflowError, WorkflowSpec, validate
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.loader import load_schedules
from serve_app.workflow.schedules import ScheduleRunner, ScheduleSpec
from serve_app.workflow.state import RunStatus
from serve_app.workflow.store import RunStore

EVERY_10S = "*/10 * * * * *"  # six fields: seconds first


def sched(**kw: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"name": "s", "workflow": "job", "cron": EVERY_10S, **kw})


def test_due_ticks_by_catch_up_policy() -> None:
    assert sched().ticks_after(1000, 1035, 100) == [1010, 1020, 1030]
    assert sched(misfire_grace_s=6).due(1000, 1035) == ([1030], 1030)  # on time enough
    assert sched(misfire_grace_s=3).due(1000, 1035) == ([], 1030)  # too late: passed over
    assert sched(catch_up="last", misfire_grace_s=3).due(1000, 1035) == ([1030], 1030)
    assert sched(catch_up="all").due(1000, 1035) == ([1010, 1020, 1030], 1030)
    assert sched(catch_up="all", max_catch_up=2).due(1000, 1035) == ([1010, 1020], 1020)  # the rest next time
    assert sched().due(1030, 1035) == ([], None)
    assert sched().run_key(1030.0) == "schedule.s.1030000"


def test_time_zones_and_bad_definitions() -> None:
    nightly = sched(cron="0 2 * * *", timezone="Europe/Berlin")
    noon = datetime(2026, 11, 23, 12, tzinfo=timezone.utc).timestamp()
    assert datetime.fromtimestamp(nightly.next_after(noon), timezone.utc).hour == 1  # 02:00 CET is 01:00 UTC
    with pytest.raises(ValueError, match="not a cron expression"):
        sched(cron="every minute")
    with pytest.raises(ValueError, match="not a time zone"):
        sched(timezone="Mars/Olympus")
    cfg = WorkflowsConfig(
        schedules=[
            {"name": "a", "workflow": "nope", "cron": "* * * * *"},
            {"name": "b", "workflow": "typed", "cron": "* * * * *", "input": {"n": "x"}},
            {"name": "c", "workflow": "job", "cron": "bad"},
        ]
    )
    with pytest.raises(WorkflowError) as exc:
        load_schedules(cfg, WORKFLOWS)
    text = str(exc.value)
    assert "schedule 'a': unknown workflow 'nope'" in text and "schedule 'b': input:" in text and "schedule 'c': cron" in text


def _spec(name: str, steps: list[dict[str, Any]], **kw: Any) -> WorkflowSpec:
    s = WorkflowSpec.model_validate({"name": name, "steps": steps, **kw})
    validate(s)
    return s


WORKFLOWS = {
    w.name: w
    for w in [
        _spec("job", [{"name": "work", "task_type": "sleep", "input": {"seconds": "${input.seconds}"}}]),
        _spec(
            "typed",
            [{"name": "x", "task_type": "echo", "input": {"message": "m"}}],
            input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
        ),
    ]
}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engines(store: RunStore, config: AppConfig) -> AsyncIterator[list[RunEngine]]:
    dispatcher, _, pools = in_process_dispatcher(config)
    made = [RunEngine(store, dispatcher.submit, WORKFLOWS, owner=f"c{i}", lease_s=5) for i in range(2)]
    yield made
    for e in made:
        await e.shutdown()
    pools.close()


def runner(store: RunStore, engine: RunEngine, clock: Clock, **kw: Any) -> ScheduleRunner:
    return ScheduleRunner([sched(input={"seconds": 0.01}, **kw)], store, engine.start, clock=clock)


async def _schedule_runs(store: RunStore) -> list[Any]:
    return [r for r in await store.list_runs(workflow="job", limit=1000) if (r.idempotency_key or "").startswith("schedule.s.")]


@pytest.mark.anyio
async def test_each_tick_fires_once_across_two_coordinators_and_a_restart(store: RunStore, engines: list[RunEngine]) -> None:
    clock = Clock(1_800_000_000.0)  # on a 10-second boundary
    a, b = (runner(store, e, clock, catch_up="all", overlap="allow") for e in engines)
    assert await a.tick() == [] and await b.tick() == []  # first sight: from now on
    for _ in range(3):
        clock.now += 10
        fired = await asyncio.gather(a.tick(), b.tick())  # both Coordinators look at the same instant
        assert sum(len(f) for f in fired) == 1, fired
        await asyncio.sleep(0.05)
    clock.now += 35  # both down for three ticks; a new Coordinator comes up
    dispatcher_engine = engines[0]
    later = runner(store, dispatcher_engine, clock, catch_up="all", overlap="allow")
    assert len(await later.tick()) == 3  # catch_up: all fires the missed ticks, once each
    assert await later.tick() == [] and await a.tick() == []
    runs = await _schedule_runs(store)
    keys = [r.idempotency_key for r in runs]
    assert len(runs) == 6 and len(set(keys)) == 6
    assert sorted(keys) == sorted(f"schedule.s.{int((1_800_000_000 + 10 * i) * 1000)}" for i in range(1, 7))


@pytest.mark.anyio
async def test_overlap_skip_and_queue(store: RunStore, engines: list[RunEngine]) -> None:
    clock = Clock(1_800_000_000.0)
    slow = ScheduleRunner([sched(input={"seconds": 1.0}, overlap="skip")], store, engines[0].start, clock=clock)
    await slow.tick()
    clock.now += 10
    assert len(await slow.tick()) == 1
    clock.now += 10
    assert await slow.tick() == []  # the first run is still going: skipped
    queued = ScheduleRunner(
        [ScheduleSpec(name="q", workflow="job", cron=EVERY_10S, input={"seconds": 0.5}, overlap="queue")], store, engines[0].start, clock=clock
    )
    await queued.tick()
    clock.now += 10
    first = await queued.tick()
    clock.now += 10
    second = await queued.tick()
    assert len(first) == len(second) == 1
    assert (await engines[0].get(second[0])).status is RunStatus.QUEUED  # one at a time, in line
    done = [await engines[0].wait(r, 10) for r in (*first, *second)]
    assert all(r.status is RunStatus.SUCCEEDED for r in done) and done[1].started_at >= done[0].finished_at  # type: ignore[operator]


@pytest.mark.anyio
async def test_pause_resume_and_trigger(store: RunStore, engines: list[RunEngine]) -> None:
    clock = Clock(1_800_000_000.0)
    r = runner(store, engines[0], clock)
    await r.tick()
    await r.set_paused("s", True)
    clock.now += 30
    assert await r.tick() == []
    (described,) = await r.describe()
    assert described["paused"] is True and described["next_fire"] is None
    await r.set_paused("s", False)  # catch_up: none: nothing from the pause fires
    assert await r.tick() == []
    clock.now += 10
    assert len(await r.tick()) == 1
    (described,) = await r.describe()
    assert described["paused"] is False and described["next_fire"] == clock.now + 10
    await engines[0].wait((await _schedule_runs(store))[0].run_id, 10)
    run_id = await r.trigger("s")
    assert (await engines[0].get(run_id)).idempotency_key.startswith("schedule.s.manual.")  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        await r.trigger("s")  # overlap: skip, and the triggered run is still going
    with pytest.raises(NotFound):
        await r.set_paused("nope", True)
