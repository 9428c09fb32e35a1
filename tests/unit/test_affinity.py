"""Routing a run's by-reference hand-offs to one replica: the ranking, the pools that use it,
the calls that carry a key, and the router class on a built app."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from serve_app.core.models import TaskRequest, TaskResult, WorkItem
from serve_app.runtime.affinity import rank
from serve_app.runtime.config import AppConfig, PoolConfig
from serve_app.runtime.dispatch import Dispatcher, ReadinessBoard

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


@pytest.mark.anyio
async def test_only_calls_that_make_or_read_a_held_result_carry_the_key() -> None:
    config = AppConfig.from_args(ARGS)
    board = ReadinessBoard()
    board.update({p: {"ready": True, "status": "healthy"} for p in config.pools})
    seen: list[WorkItem] = []

    async def call(pool: str, work: WorkItem) -> TaskResult:
        seen.append(work)
        return TaskResult(success=True)

    d = Dispatcher(config, board, call)
    make = TaskRequest(task_type="make_blob", payload={"size": 1})
    stats = TaskRequest(task_type="blob_stats", payload={"data": "marker"})
    await d.submit(make, by_ref_over=1, reader_task_types={"blob_stats"}, affinity="run1")  # maker, reader in its pool
    await d.submit(stats, refs={"make": object()}, affinity="run1")  # reader
    await d.submit(make, by_ref_over=1, reader_task_types={"echo"}, affinity="run1")  # read in another pool only
    await d.submit(make, affinity="run1")  # a step that keeps nothing
    await d.submit(TaskRequest(task_type="echo", payload={}), refs={"make": object()}, affinity="run1")  # a one-replica pool
    await d.submit(make, by_ref_over=1, reader_task_types={"blob_stats"})  # a plain task: no key given
    assert [w.affinity for w in seen] == ["run1", "run1", None, None, None, None]
    assert all("affinity" not in w.model_dump(mode="json") for w in seen)  # it routes; the worker never sees it


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
