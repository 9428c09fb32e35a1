"""The event log and subscriptions over every store (in-process pools, no Ray): append and
dedupe, delivery in order at least once, dead letters and replay, two Coordinators, lag."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator

import pytest

from serve_app.core.errors import Conflict, NotFound
from serve_app.runtime.config import AppConfig
from serve_app.testing import in_process_dispatcher
from serve_app.workflow import WorkflowSpec, validate
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.store import RunStore
from serve_app.workflow.subscriptions import SubscriptionRunner, SubscriptionSpec

pytestmark = pytest.mark.anyio

WORKFLOWS = {
    w.name: w
    for w in [
        WorkflowSpec.model_validate(
            {
                "name": "on_order",
                "input_schema": {
                    "type": "object",
                    "properties": {"payload": {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "integer"}}}},
                },
                "steps": [{"name": "note", "task_type": "echo", "input": {"message": "${input.id}"}}],
            }
        )
    ]
}
for _w in WORKFLOWS.values():
    validate(_w)

SUBS = [
    SubscriptionSpec(name="orders", types=["order.placed"], workflow="on_order"),
    SubscriptionSpec(name="flaky_task", types=["ping"], task_type="flaky", max_attempts=2, backoff_s=0),
    SubscriptionSpec(name="echoes", types=["order.placed", "ping"], task_type="echo", max_attempts=3, backoff_s=0),
]


@pytest.fixture
async def parts(store: RunStore, config: AppConfig) -> AsyncIterator[tuple[RunEngine, Any]]:
    dispatcher, _, pools = in_process_dispatcher(config)
    engine = RunEngine(store, dispatcher.submit, WORKFLOWS, owner="c1", lease_s=5)
    yield engine, dispatcher
    await engine.shutdown()
    pools.close()


def runner(store: RunStore, engine: RunEngine, dispatcher: Any, owner: str = "c1", subs: list[SubscriptionSpec] = SUBS) -> SubscriptionRunner:
    return SubscriptionRunner(subs, store, engine.start, dispatcher.submit, owner=owner, lease_s=5)


async def full_round(r: SubscriptionRunner) -> None:
    await r.tick()
    await r.drain()


async def test_a_slow_subscription_never_holds_up_another(store: RunStore, parts: Any) -> None:
    engine, dispatcher = parts
    subs = [
        SubscriptionSpec(name="slow", types=["nap"], task_type="sleep"),
        SubscriptionSpec(name="orders", types=["order.placed"], workflow="on_order"),
    ]
    r = runner(store, engine, dispatcher, subs=subs)
    await r.append("nap", {"seconds": 1.5})
    await r.tick()  # the slow round starts and is not awaited
    await asyncio.sleep(0.05)
    for i in range(3):
        await r.append("order.placed", {"amount": i})
        await r.tick()  # a new round for orders each time; slow is still in its first
        await asyncio.sleep(0.1)
    runs = await engine.list(workflow="on_order", limit=10)
    assert len(runs) == 3  # delivered while the slow subscription was busy
    await r.drain()
    assert (await store.subscription_lag("slow", ["nap"]))[1] == 0
    await r.close()


async def test_append_is_durable_ordered_and_deduplicated_by_id(store: RunStore) -> None:
    first, created = await store.append_event("e1", "order.placed", "acme", {"amount": 1}, 1.0)
    again, created_again = await store.append_event("e1", "order.placed", "acme", {"amount": 999}, 2.0)
    assert created and not created_again and again == first and again.payload == {"amount": 1}
    await store.append_event("e2", "ping", None, None, 3.0)
    await store.append_event("e3", "order.placed", "acme", {"amount": 3}, 4.0)
    assert [e.event_id for e in await store.read_events(0, None, 10)] == ["e1", "e2", "e3"]
    assert [e.event_id for e in await store.read_events(0, ["order.placed"], 10)] == ["e1", "e3"]
    assert [e.event_id for e in await store.read_events(first.seq, ["order.placed"], 1)] == ["e3"]


async def test_subscriptions_deliver_in_order_and_a_poison_event_goes_to_the_dead_letters(store: RunStore, parts: Any) -> None:
    engine, dispatcher = parts
    r = runner(store, engine, dispatcher)
    good = [await r.append("order.placed", {"amount": i}, key="acme") for i in range(3)]
    poison, _ = await r.append("order.placed", {"amount": "lots"}, key="acme")  # the workflow's schema refuses it
    after, _ = await r.append("order.placed", {"amount": 9}, key="acme")
    await full_round(r)
    runs = sorted(await engine.list(workflow="on_order", limit=100), key=lambda x: x.created_at)
    assert [x.input["id"] for x in runs] == [e.event_id for e, _ in good] + [after.event_id]  # in order, poison left out
    assert all(x.idempotency_key == f"event.orders.{x.input['id']}" for x in runs)
    letters = await store.list_dead_letters("orders", 10)
    assert [d["event"]["id"] for d in letters] == [poison.event_id] and letters[0]["error"]["code"] == "validation_error"
    assert letters[0]["attempts"] == 1  # not retryable: no attempts wasted
    await full_round(r)
    assert len(await engine.list(workflow="on_order", limit=100)) == 4  # a second round delivers nothing twice
    lags = {d["name"]: d for d in await r.describe()}
    assert lags["orders"]["lag"] == 0 and lags["orders"]["position"] == after.seq
    # The task subscription to echo gets the same events: its payloads lack "message", so each is dead too.
    assert {d["event"]["id"] for d in await store.list_dead_letters("echoes", 10)} == {e.event_id for e, _ in good} | {poison.event_id, after.event_id}


async def test_a_failing_subscription_retries_then_dead_letters_and_replay_works(store: RunStore, parts: Any) -> None:
    engine, dispatcher = parts
    r = runner(store, engine, dispatcher)
    key = uuid.uuid4().hex
    ping, _ = await r.append("ping", {"key": key, "fail_times": 2})
    await full_round(r)  # attempt 1 fails (retryable): the subscription waits, in order
    assert await store.list_dead_letters("flaky_task", 10) == []
    await full_round(r)  # attempt 2 fails: max_attempts reached
    (letter,) = await store.list_dead_letters("flaky_task", 10)
    assert letter["event"]["id"] == ping.event_id and letter["attempts"] == 2 and letter["replayed_at"] is None
    replayed = await r.replay("flaky_task", ping.seq)  # the third call succeeds
    assert replayed["replayed_at"] is not None
    assert (await store.list_dead_letters("flaky_task", 10))[0]["replayed_at"] is not None
    with pytest.raises(NotFound):
        await r.replay("flaky_task", 10_000)
    with pytest.raises(NotFound):
        await r.replay("nope", ping.seq)
    bad, _ = await r.append("ping", {"key": uuid.uuid4().hex, "fail_times": 99})
    await full_round(r)
    await full_round(r)
    with pytest.raises(Conflict, match="failed again"):
        await r.replay("flaky_task", bad.seq)


async def test_two_coordinators_deliver_each_event_once_per_lease(store: RunStore, parts: Any) -> None:
    engine, dispatcher = parts
    subs = [SubscriptionSpec(name="orders", types=["order.placed"], workflow="on_order")]
    a, b = runner(store, engine, dispatcher, "c1", subs), runner(store, engine, dispatcher, "c2", subs)
    events = [(await a.append("order.placed", {"amount": i}, key=f"k{i % 3}"))[0] for i in range(20)]
    for _ in range(3):
        await asyncio.gather(a.tick(), b.tick())
        await asyncio.gather(a.drain(), b.drain())
    runs = await engine.list(workflow="on_order", limit=100)
    assert sorted(x.input["id"] for x in runs) == sorted(e.event_id for e in events)  # every event, one run each
    assert a.delivered + b.delivered == 20 and 0 in (a.delivered, b.delivered)  # one deliverer holds the lease


def test_subscription_definitions_are_checked_at_deploy() -> None:
    from serve_app.runtime.config import WorkflowsConfig
    from serve_app.workflow import WorkflowError
    from serve_app.workflow.loader import load_subscriptions

    cfg = WorkflowsConfig(
        subscriptions=[
            {"name": "a", "types": ["x"], "workflow": "nope"},
            {"name": "b", "types": ["x"], "task_type": "nope"},
            {"name": "c", "types": [], "task_type": "echo"},
            {"name": "d", "types": ["x"], "task_type": "echo", "workflow": "on_order"},
        ]
    )
    with pytest.raises(WorkflowError) as exc:
        load_subscriptions(cfg, WORKFLOWS, {"echo"})
    text = str(exc.value)
    for part in ("subscription 'a': unknown workflow 'nope'", "subscription 'b': unknown task type 'nope'", "subscription 'c': types", "subscription 'd'"):
        assert part in text, (part, text)
