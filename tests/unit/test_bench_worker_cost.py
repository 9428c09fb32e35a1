"""bench.worker_cost: the three workers differ only in what they run per task.

The benchmark itself runs outside the suite; this keeps its comparison fair: the same
ingress, the same CPU share and concurrency for every worker, and the task the ingress
sends is the one the Coordinator sends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.worker_cost import WORKERS, PlainWorker, build, probe_item
from serve_app.core.models import TaskResult, WorkItem
from serve_app.runtime import tracing

ROOT = Path(__file__).resolve().parents[2]


def _graph(worker: str) -> tuple[Any, Any]:
    ingress = build({"worker": worker})._bound_deployment
    (bound,) = ingress.init_args
    return ingress, bound._bound_deployment


def _options(d: Any) -> tuple[Any, ...]:
    return (d.name, d.ray_actor_options.get("num_cpus"), d.max_ongoing_requests, d.num_replicas)


def test_every_worker_gets_the_same_ingress_and_the_same_share() -> None:
    graphs = {w: _graph(w) for w in WORKERS}
    assert {_options(ingress) for ingress, _ in graphs.values()} == {("Ingress", 0.1, 256, 1)}
    assert {_options(worker) for _, worker in graphs.values()} == {("Worker", 0.1, 32, 1)}
    assert graphs["serveflow"][1].func_or_class.__name__ == "HandlerWorker"
    assert graphs["plain"][1].func_or_class is graphs["envelope"][1].func_or_class is PlainWorker.func_or_class


def test_the_worker_has_the_general_pools_share_in_serve_config() -> None:
    general = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]["pools"]["general"]
    _, worker = _graph("serveflow")
    assert (worker.ray_actor_options["num_cpus"], worker.max_ongoing_requests) == (
        general["num_cpus"],
        general["max_ongoing_requests"],
    )


def test_an_unknown_worker_is_refused() -> None:
    with pytest.raises(ValueError, match="worker must be one of"):
        build({"worker": "fast"})


def test_the_probe_is_a_work_item_as_the_coordinator_sends_it() -> None:
    item = probe_item({"x": 1})
    assert item == WorkItem.model_validate(item).model_dump(mode="json")
    with tracing.start_span("probe"):
        sent = WorkItem(task_id="t", task_type="noop", payload={}, timeout_s=30.0, trace_context=tracing.inject())
    assert set(item) == set(sent.model_dump(mode="json"))


@pytest.mark.parametrize("envelope", [False, True])
def test_plain_workers_answer_the_envelopes_fields(envelope: bool) -> None:
    worker = PlainWorker.func_or_class(envelope)
    answer = asyncio.run(worker.run(probe_item({})))
    assert TaskResult.model_validate(answer).success is True
    assert answer["result"] is None and answer["error"] is None
