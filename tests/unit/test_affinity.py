"""Routing a by-reference hand-off to one replica: the ranking, the pools that use it and the
router class on a built app (which calls carry a key: test_results_by_reference)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from serve_app.runtime.affinity import rank
from serve_app.runtime.config import PoolConfig

REPLICAS = ["r1a2b3", "x9y8z7", "k4l5m6"]


def test_every_router_ranks_a_key_alike_and_keys_spread_over_the_replicas() -> None:
    firsts = Counter(rank(f"run-{i}", REPLICAS)[0] for i in range(3000))
    assert set(firsts) == set(REPLICAS) and min(firsts.values()) > 850, firsts  # ~1000 each
    for i in range(50):
        order = rank(f"run-{i}", REPLICAS)
        assert sorted(order) == sorted(REPLICAS)
        assert rank(f"run-{i}", list(reversed(REPLICAS))) == order  # the order they come in does not matter


def test_a_replica_leaving_moves_only_the_keys_it_ranked_first() -> None:
    for i in range(300):
        key = f"run-{i}"
        first = rank(key, REPLICAS)[0]
        for gone in REPLICAS:
            rest = [r for r in REPLICAS if r != gone]
            if gone != first:
                assert rank(key, rest)[0] == first
            else:
                assert rank(key, rest)[0] == rank(key, REPLICAS)[1]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, False),  # one replica: nothing to choose
        ({"num_replicas": 2}, True),
        ({"num_replicas": 2, "reuse_results_bytes": 0}, False),  # nothing held to find
        ({"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}, True),
        ({"autoscaling_config": {"min_replicas": 0, "max_replicas": 1}}, False),
    ],
)
def test_a_pool_routes_by_key_when_it_holds_results_and_can_have_several_replicas(options: dict[str, Any], expected: bool) -> None:
    pool = PoolConfig.model_validate({"handler_modules": ["m"], "task_types": ["t"], **options})
    assert pool.result_affinity is expected


ARGS = {
    "pools": {
        "blobs": {"handler_modules": ["serve_app.examples.compute"], "task_types": ["make_blob", "blob_stats"], "num_replicas": 2},
        "single": {"handler_modules": ["serve_app.examples.basic"], "task_types": ["echo"]},
    },
}


def test_a_pool_with_several_replicas_gets_the_affinity_router_and_a_single_one_serves_default() -> None:
    from ray.serve._private.build_app import build_app as serve_build

    from deployments.affinity_router import AFFINITY_ROUTER
    from graphs.serveflow import build_app

    built = serve_build(build_app(ARGS), name="serveflow")
    routers = {
        d.name: d._deployment_config.request_router_config.request_router_class
        for d in built.deployments
        if d.name.startswith("HandlerWorker_")
    }
    assert routers["HandlerWorker_blobs"] == AFFINITY_ROUTER
    assert routers["HandlerWorker_single"] != AFFINITY_ROUTER


@pytest.mark.anyio
async def test_the_router_sends_a_keyed_call_to_its_replica_then_the_next_two_and_routes_the_rest_as_serve_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

    from deployments.affinity_router import FALLBACK_REPLICAS, ResultAffinityRouter

    replicas = [SimpleNamespace(replica_id=SimpleNamespace(unique_id=u)) for u in ["a1", "b2", "c3", "d4"]]
    by_id = {r.replica_id.unique_id: r for r in replicas}
    router = object.__new__(ResultAffinityRouter)  # its keyed path reads nothing but its arguments
    keyed = SimpleNamespace(metadata=SimpleNamespace(session_id="run-7/make"))
    order = rank("run-7/make", by_id)
    # Ranks, as Serve's router takes them: the first replica alone, then the next two if it is full.
    assert await router.choose_replicas(replicas, keyed) == [[by_id[order[0]]], [by_id[u] for u in order[1 : 1 + FALLBACK_REPLICAS]]]
    assert await router.choose_replicas(list(reversed(replicas)), keyed) == await router.choose_replicas(replicas, keyed)

    # No key, or a single replica: Serve's power of two choices decides (recorded here, not run).
    seen: list[Any] = []

    async def stock(self: Any, candidate_replicas: Any, pending_request: Any = None) -> Any:
        seen.append(pending_request)
        return [candidate_replicas[:2]]

    monkeypatch.setattr(PowerOfTwoChoicesRequestRouter, "choose_replicas", stock)
    unkeyed = SimpleNamespace(metadata=SimpleNamespace(session_id=""))
    assert await router.choose_replicas(replicas, unkeyed) == [replicas[:2]]
    assert await router.choose_replicas(replicas[:1], keyed) == [replicas[:1]]
    assert await router.choose_replicas(replicas, None) == [replicas[:2]]
    assert seen == [unkeyed, keyed, None]


@pytest.mark.anyio
async def test_a_call_keyed_by_a_replica_id_goes_to_that_replica_only() -> None:
    """The reader of a result held in its maker's process alone: that replica or nowhere (it waits
    while the replica is full). A replica that is gone leaves the key to rank as any other."""
    from types import SimpleNamespace

    from deployments.affinity_router import ResultAffinityRouter

    replicas = [SimpleNamespace(replica_id=SimpleNamespace(unique_id=u)) for u in ["a1", "b2", "c3"]]
    router = object.__new__(ResultAffinityRouter)
    held = SimpleNamespace(metadata=SimpleNamespace(session_id="b2"))
    assert await router.choose_replicas(replicas, held) == [[replicas[1]]]
    gone = [replicas[0], replicas[2]]
    ranked = await router.choose_replicas(gone, held)
    assert ranked[0] == [{r.replica_id.unique_id: r for r in gone}[rank("b2", ["a1", "c3"])[0]]]
