"""The event log and subscriptions on real Serve, over HTTP and gRPC: events start runs in order,
a poison event lands in the dead letters while the others flow, replay, lag in status, bad input."""

from __future__ import annotations

import collections
import uuid
from typing import Any

import httpx
import pytest
import ray

from serve_app.client.sdk import ServeflowClient
from tests.integration.conftest import wait_until


def _order_runs(http: httpx.Client, tag: str) -> list[dict[str, Any]]:
    runs = http.get("/v1/runs", params={"workflow": "on_order", "limit": 1000}).json()["runs"]
    return [r for r in runs if r["input"].get("key") == tag]


def test_events_start_runs_in_order_and_a_poison_event_is_dead_lettered(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:10]
    ids = []
    for i in range(5):
        payload = {"amount": "poison"} if i == 2 else {"amount": i}
        r = http.post("/v1/events", json={"type": "order.placed", "key": tag, "id": f"{tag}-{i}", "payload": payload})
        assert r.status_code == 200 and r.json()["created"] is True, r.text
        ids.append(r.json()["event"]["id"])
    dup = http.post("/v1/events", json={"type": "order.placed", "key": tag, "id": f"{tag}-0", "payload": {"amount": 0}})
    assert dup.json()["created"] is False
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        sent = client.send_event("order.placed", {"amount": 5}, key=tag, event_id=f"{tag}-5")
        assert sent.success and sent.created is True and sent.event is not None
        ids.append(sent.event["id"])
        listed = client.list_events(type="order.placed", after=0, limit=1000)
        assert listed.success and set(ids) <= {e["id"] for e in listed.events or []}
    wait_until(lambda: len(_order_runs(http, tag)) == 5, 60, what="the good events delivered")
    runs = sorted(_order_runs(http, tag), key=lambda r: r["created_at"])
    assert [r["input"]["id"] for r in runs] == [i for n, i in enumerate(ids) if n != 2]  # in order, the poison left out
    letters = http.get("/v1/dead-letters", params={"subscription": "orders"}).json()["dead_letters"]
    poison = [d for d in letters if d["event"]["id"] == f"{tag}-2"]
    assert poison and poison[0]["error"]["code"] == "validation_error" and poison[0]["attempts"] == 1
    replay = http.post(f"/v1/dead-letters/orders/{poison[0]['event']['seq']}/replay")
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "conflict"  # still poison: said, kept
    subs = {s["name"]: s for s in http.get("/v1/status").json()["components"]["Coordinator"]["details"]["subscriptions"]}
    wait_until(lambda: {s["name"]: s for s in http.get("/v1/status").json()["components"]["Coordinator"]["details"]["subscriptions"]}["orders"]["lag"] == 0, 30, what="no lag")
    assert subs["orders"]["target"] == "workflow:on_order"


def test_bad_events_get_structured_answers_and_nothing_is_appended(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    before = len(http.get("/v1/events", params={"limit": 1000}).json()["events"])
    for body, status in (
        ({"payload": 1}, 422),  # no type
        ({"type": "bad type!", "payload": 1}, 422),
        ({"type": "t", "id": "x" * 65}, 422),
        ({"type": "t", "payload": "x" * 70000}, 413),
        ({"type": "t", "extra": 1}, 422),
    ):
        r = http.post("/v1/events", json=body)
        assert r.status_code == status and r.json()["success"] is False, (body, r.text[:200])
    r = http.post("/v1/events", content=b'{"type": "t", "payload": NaN}', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert http.post("/v1/dead-letters/orders/abc/replay").status_code == 404
    assert http.post("/v1/dead-letters/nope/1/replay").status_code == 404
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        bad = client.send_event("bad type!", {})
        assert bad.error is not None and bad.error.code == "validation_error"
    assert len(http.get("/v1/events", params={"limit": 1000}).json()["events"]) == before


@pytest.mark.faults
def test_delivery_survives_a_coordinator_kill_at_least_once(http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:10]
    for i in range(30):
        http.post("/v1/events", json={"type": "order.placed", "key": tag, "id": f"{tag}-{i}", "payload": {"amount": i}})
    (actor,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if "serveflow#Coordinator" in a["name"]]
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)  # mid-stream
    wait_until(lambda: http.get("/readyz").status_code == 200, 120, what="a new Coordinator")
    wait_until(lambda: len(_order_runs(http, tag)) == 30, 120, what="every event delivered")
    runs = _order_runs(http, tag)
    per_event = collections.Counter(r["input"]["id"] for r in runs)
    assert set(per_event) == {f"{tag}-{i}" for i in range(30)} and set(per_event.values()) == {1}  # one run per event
