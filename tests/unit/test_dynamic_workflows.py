"""Map steps, child workflows and concurrency keys: definitions, and the engine on every store.

The engine runs in-process over the real dispatcher and handlers (no Ray); the
integration module runs the same features on real Serve.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from serve_app.core.errors import ValidationFailed
from serve_app.core.models import TaskRequest, TaskResult
from serve_app.runtime.config import AppConfig, WorkflowsConfig
from serve_app.testing import in_process_dispatcher
from serve_app.workflow import Workflow, WorkflowError, WorkflowSpec, validate
from serve_app.workflow.engine import RunEngine, child_run_id
from serve_app.workflow.loader import load_workflows
from serve_app.workflow.spec import validate_children
from serve_app.workflow.state import RunStatus, StepStatus
from serve_app.workflow.store import RunStore
from tests.conftest import StoreFactory, until

KNOWN = {"echo", "noop", "sleep", "fail", "fib", "flaky"}


def spec(name: str, steps: list[dict[str, Any]], **kw: Any) -> WorkflowSpec:
    s = WorkflowSpec.model_validate({"name": name, "steps": steps, **kw})
    validate(s, KNOWN)
    return s


WORKFLOWS = {
    s.name: s
    for s in [
        spec(
            "squares",
            [
                {"name": "make", "task_type": "echo", "input": {"message": "${input.tag}"}},
                {
                    "name": "each",
                    "task_type": "fib",
                    "map": {"over": "${input.ns}", "max_parallel": 4},
                    "input": {"n": "${item}"},
                    "depends_on": ["make"],
                },
                {"name": "after", "task_type": "echo", "input": {"message": "${steps.make.result.message}"}, "depends_on": ["each"]},
            ],
            output={"values": "${steps.each.result}"},
        ),
        spec(
            "echoes",
            [
                {
                    "name": "each",
                    "task_type": "echo",
                    "map": {"over": "${input.items}", "max_parallel": 3, "on_item_failure": "fail_step"},
                    "input": {"message": "${item.text}"},
                },
            ],
        ),
        spec(
            "echoes_continue",
            [
                {
                    "name": "each",
                    "task_type": "echo",
                    "map": {"over": "${input.items}", "max_parallel": 3, "on_item_failure": "continue"},
                    "input": {"message": "${item.text}"},
                },
                {"name": "after", "task_type": "echo", "input": {"message": "done"}, "depends_on": ["each"]},
            ],
        ),
        spec(
            "slow_map",
            [{"name": "each", "task_type": "sleep", "map": {"over": "${input.items}", "max_parallel": 2}, "input": {"seconds": "${item}"}}],
        ),
        spec("child", [{"name": "hello", "task_type": "echo", "input": {"message": "${input.text}"}}], output={"said": "${steps.hello.result.message}"}),
        spec("slow_child", [{"name": "nap", "task_type": "sleep", "input": {"seconds": "${input.seconds}"}}]),
        spec("failing_child", [{"name": "boom", "task_type": "fail", "input": {"message": "child broke"}}]),
        spec(
            "parent",
            [
                {"name": "call", "workflow": "child", "input": {"text": "${input.text}"}},
                {"name": "after", "task_type": "echo", "input": {"message": "${steps.call.result.said}"}},
            ],
            output={"child": "${steps.call.result}", "after": "${steps.after.result.message}"},
        ),
        spec("parent_slow", [{"name": "call", "workflow": "slow_child", "input": {"seconds": "${input.seconds}"}}]),
        spec("parent_failing", [{"name": "call", "workflow": "failing_child"}]),
        spec(
            "regions",
            [{"name": "per_region", "workflow": "child", "map": {"over": "${input.regions}", "max_parallel": 2}, "input": {"text": "${item}"}}],
        ),
        spec(
            "billing",
            [{"name": "bill", "task_type": "sleep", "input": {"seconds": "${input.seconds}"}}],
            concurrency={"key": "${input.customer}", "max_runs": 1},
        ),
        spec(
            "pair",
            [{"name": "work", "task_type": "sleep", "input": {"seconds": "${input.seconds}"}}],
            concurrency={"key": "${input.customer}", "max_runs": 2},
        ),
    ]
}
validate_children(WORKFLOWS)


# --------------------------------------------------------------------------- definitions


def problems(steps: list[dict[str, Any]], **kw: Any) -> str:
    with pytest.raises(WorkflowError) as exc:
        spec("bad", steps, **kw)
    return str(exc.value)


def test_map_definitions_are_checked_naming_the_step() -> None:
    assert "step 'm': map.over must be one reference" in problems(
        [{"name": "m", "task_type": "echo", "map": {"over": "not a ref"}, "input": {"message": "${item}"}}]
    )
    assert "step 'm' map.over: references unknown step 'ghost'" in problems(
        [{"name": "m", "task_type": "echo", "map": {"over": "${steps.ghost.result.x}"}}]
    )
    assert "step 'e': '${item}' is only defined in a map step" in problems(
        [{"name": "e", "task_type": "echo", "input": {"message": "${item}"}}]
    )
    assert "'${index}' is a number and has no fields" in problems(
        [{"name": "m", "task_type": "echo", "map": {"over": "${input.x}"}, "input": {"message": "${index.x}"}}]
    )
    # map.over reading an upstream result makes that step a dependency.
    ok = spec("ok", [{"name": "a", "task_type": "echo"}, {"name": "m", "task_type": "echo", "map": {"over": "${steps.a.result.xs}"}}])
    assert ok.dependencies()["m"] == {"a"}


def test_child_workflows_must_exist_and_must_not_recurse() -> None:
    def wf(name: str, child: str) -> WorkflowSpec:
        return spec(name, [{"name": "call", "workflow": child}])

    with pytest.raises(WorkflowError, match=r"step 'call': child workflow 'nowhere' is not defined"):
        validate_children({"a": wf("a", "nowhere")})
    with pytest.raises(WorkflowError, match=r"step 'call': child workflows recurse: a -> a"):
        validate_children({"a": wf("a", "a")})
    with pytest.raises(WorkflowError, match=r"child workflows recurse: a -> b -> a"):
        validate_children({"a": wf("a", "b"), "b": wf("b", "a")})
    with pytest.raises(ValueError, match="exactly one of task_type, workflow, sleep, sleep_until or wait_for"):
        spec("both", [{"name": "x", "task_type": "echo", "workflow": "child"}])
    # The loader checks children across every definition it loads.
    cfg = WorkflowsConfig(definitions=[{"name": "p", "steps": [{"name": "c", "workflow": "missing"}]}])
    with pytest.raises(WorkflowError, match="child workflow 'missing' is not defined"):
        load_workflows(cfg, KNOWN)


def test_concurrency_definitions() -> None:
    assert "concurrency.key: must read the run input" in problems(
        [{"name": "a", "task_type": "echo"}], concurrency={"key": "${steps.a.result.x}"}
    )
    assert spec("global", [{"name": "a", "task_type": "echo"}], concurrency={"max_runs": 2}).concurrency is not None
    with pytest.raises(Exception, match="less than or equal to 3"):
        spec("p", [{"name": "a", "task_type": "echo"}], priority=4)


def test_python_builder_matches_yaml() -> None:
    wf = Workflow("regions_py", concurrency={"key": "${input.customer}", "max_runs": 1}, priority=2)
    wf.step("per_region", workflow="child", map={"over": wf.input("regions"), "max_parallel": 2}, input={"text": wf.item()})
    built = wf.build(KNOWN)
    yaml_like = spec(
        "regions_py",
        [{"name": "per_region", "workflow": "child", "map": {"over": "${input.regions}", "max_parallel": 2}, "input": {"text": "${item}"}}],
        concurrency={"key": "${input.customer}", "max_runs": 1},
        priority=2,
    )
    assert built == yaml_like


# --------------------------------------------------------------------------- engine


class CountingSubmit:
    """The real dispatcher's submit, counting calls per task element and concurrency in flight."""

    def __init__(self, submit: Callable[[TaskRequest], Awaitable[TaskResult]]) -> None:
        self._submit = submit
        self.calls: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, req: TaskRequest) -> TaskResult:
        element = (req.task_id or "").rsplit(".", 1)[0]  # <run>.<step>[.i<index>]
        self.calls[element] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._submit(req)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def submit(config: AppConfig) -> AsyncIterator[CountingSubmit]:
    dispatcher, _, pools = in_process_dispatcher(config)
    yield CountingSubmit(dispatcher.submit)
    pools.close()


@pytest.fixture
async def engine(store: RunStore, submit: CountingSubmit) -> AsyncIterator[RunEngine]:
    eng = RunEngine(store, submit, WORKFLOWS, owner="test-owner", lease_s=5)
    yield eng
    await eng.shutdown()


async def finish(engine: RunEngine, name: str, inp: dict[str, Any], timeout: float = 30, **kw: Any):  # type: ignore[no-untyped-def]
    run, created = await engine.start(name, inp, **kw)
    assert created
    return await engine.wait(run.run_id, timeout)


@pytest.mark.anyio
async def test_map_gathers_results_in_input_order_within_max_parallel(engine: RunEngine, submit: CountingSubmit) -> None:
    ns = [9, 1, 7, 3, 0, 12, 5, 2, 8, 4, 6, 11]
    run = await finish(engine, "squares", {"tag": "t", "ns": ns})
    assert run.status is RunStatus.SUCCEEDED, run.error
    fib = {0: 0, 1: 1, 2: 1, 3: 2, 4: 3, 5: 5, 6: 8, 7: 13, 8: 21, 9: 34, 11: 89, 12: 144}
    assert [v["value"] for v in run.output["values"]] == [fib[n] for n in ns]
    each = run.step("each")
    assert each.map is not None and (each.map.total, each.map.succeeded, each.map.failed) == (12, 12, 0)
    assert run.public()["steps"][1]["map"]["done"] == 12
    assert submit.max_in_flight <= 4  # max_parallel (other steps do not overlap the map here)
    assert run.step("after").status is StepStatus.SUCCEEDED


@pytest.mark.anyio
async def test_map_over_an_empty_list_succeeds_with_an_empty_result(engine: RunEngine) -> None:
    run = await finish(engine, "squares", {"tag": "t", "ns": []})
    assert run.status is RunStatus.SUCCEEDED and run.output == {"values": []}


@pytest.mark.anyio
async def test_map_fail_step_names_the_element_and_stops(engine: RunEngine) -> None:
    items = [{"text": "a"}, {"text": "b"}, {"nope": 1}] + [{"text": str(i)} for i in range(30)]
    run = await finish(engine, "echoes", {"items": items})
    assert run.status is RunStatus.FAILED
    each = run.step("each")
    assert each.status is StepStatus.FAILED and each.error is not None
    assert each.error.details["index"] == 2 and "element 2" in each.error.message
    assert each.map is not None and each.map.failed == 1 and each.map.done < len(items)  # the rest stopped
    assert run.error is not None and run.error.details["step"] == "each"


@pytest.mark.anyio
async def test_map_continue_reports_which_elements_failed(engine: RunEngine) -> None:
    items = [{"text": "a"}, {"bad": 1}, {"text": "c"}, {"text": 5}]
    run = await finish(engine, "echoes_continue", {"items": items})
    assert run.status is RunStatus.SUCCEEDED, run.error
    each = run.step("each")
    assert each.result == [{"message": "a"}, None, {"message": "c"}, None]
    assert each.map is not None and (each.map.succeeded, each.map.failed) == (2, 2)
    assert [f["index"] for f in each.map.failed_items] == [1, 3]
    assert each.map.failed_items[0]["error"]["code"] == "validation_error"
    assert run.step("after").status is StepStatus.SUCCEEDED


@pytest.mark.anyio
async def test_map_over_something_that_is_not_a_list_fails_the_step_by_name(engine: RunEngine) -> None:
    for bad in ({"items": {"a": 1}}, {"items": "text"}, {}):
        run = await finish(engine, "echoes", bad)
        assert run.status is RunStatus.FAILED
        err = run.step("each").error
        assert err is not None and err.code == "validation_error" and "step 'each' map:" in err.message, err


@pytest.mark.anyio
async def test_resume_mid_map_runs_only_unfinished_elements(store: RunStore, submit: CountingSubmit) -> None:
    first = RunEngine(store, submit, WORKFLOWS, owner="first", lease_s=0.3)
    items = [0.01] * 10 + [5.0] * 2 + [0.01] * 8  # elements 10 and 11 are still running when the owner stops
    run, _ = await first.start("slow_map", {"items": items})

    async def most_done() -> bool:
        each = (await first.get(run.run_id)).step("each")
        return each.map is not None and each.map.done >= 10

    await until(most_done)
    await first.shutdown()
    before = dict(submit.calls)
    second = RunEngine(store, submit, WORKFLOWS, owner="second", lease_s=5)
    await asyncio.sleep(0.4)
    assert await second.resume() == [run.run_id]
    done = await second.wait(run.run_id, 30)
    await second.shutdown()
    assert done.status is RunStatus.SUCCEEDED, done.error
    assert len(done.step("each").result) == 20
    again = {k: v - before.get(k, 0) for k, v in submit.calls.items() if v - before.get(k, 0)}
    finished_first = {f"{run.run_id}.each.i{i}" for i in range(20)} - set(again)
    # Every element that had finished ran exactly once; only unfinished ones ran again.
    assert all(submit.calls[k] == 1 for k in finished_first) and len(finished_first) >= 10
    assert all(f"{run.run_id}.each.i{i}" in again for i in (10, 11))


@pytest.mark.anyio
async def test_large_map_holds(store: RunStore, config: AppConfig) -> None:
    """2,000 elements with group-committed records (the benchmark goes to 10,000)."""

    async def instant(req: TaskRequest) -> TaskResult:
        return TaskResult(success=True, result={"i": req.payload.get("n"), "message": "m"})

    eng = RunEngine(store, instant, WORKFLOWS, owner="o", lease_s=5)
    n = 2000
    run, _ = await eng.start("squares", {"tag": "t", "ns": list(range(n))})
    done = await eng.wait(run.run_id, 60)
    await eng.shutdown()
    assert done.status is RunStatus.SUCCEEDED
    assert [v["i"] for v in done.output["values"]] == list(range(n))
    assert done.step("each").map.succeeded == n  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_child_workflow_is_a_real_run_with_a_derived_id(engine: RunEngine) -> None:
    run = await finish(engine, "parent", {"text": "hi"})
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.output == {"child": {"said": "hi"}, "after": "hi"}
    call = run.step("call")
    assert call.task_type == "workflow:child" and call.child_run_id == child_run_id(run.run_id, "call")
    child = await engine.get(call.child_run_id)
    assert child.status is RunStatus.SUCCEEDED and (child.parent_run_id, child.parent_step) == (run.run_id, "call")
    assert [c.run_id for c in await engine.list(parent_run_id=run.run_id)] == [child.run_id]


@pytest.mark.anyio
async def test_child_failure_fails_the_step_with_the_childs_error(engine: RunEngine) -> None:
    run = await finish(engine, "parent_failing", {})
    assert run.status is RunStatus.FAILED
    err = run.step("call").error
    assert err is not None and err.code == "handler_error" and "child broke" in err.message
    assert err.details["child_run_id"] == run.step("call").child_run_id


@pytest.mark.anyio
async def test_bad_child_input_fails_the_step_not_the_engine(engine: RunEngine) -> None:
    run = await finish(engine, "parent", {})  # ${input.text} missing: the step fails by name
    assert run.status is RunStatus.FAILED and "step 'call'" in run.error.message  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_cancelling_the_parent_cancels_the_child(engine: RunEngine) -> None:
    run, _ = await engine.start("parent_slow", {"seconds": 30})
    child_id = child_run_id(run.run_id, "call")

    async def child_running() -> bool:
        try:
            return (await engine.get(child_id)).step("nap").status is StepStatus.RUNNING
        except Exception:
            return False

    await until(child_running)
    assert (await engine.cancel(run.run_id)).status is RunStatus.CANCELLED

    async def child_cancelled() -> bool:
        return (await engine.get(child_id)).status is RunStatus.CANCELLED

    await until(child_cancelled)


@pytest.mark.anyio
async def test_resumed_parent_does_not_start_its_child_twice(store: RunStore, submit: CountingSubmit) -> None:
    first = RunEngine(store, submit, WORKFLOWS, owner="first", lease_s=0.3)
    run, _ = await first.start("parent_slow", {"seconds": 0.6})
    child_id = child_run_id(run.run_id, "call")

    async def child_exists() -> bool:
        return bool(await store.list_runs(parent_run_id=run.run_id))

    await until(child_exists)
    await first.shutdown()  # parent and child both stop mid-flight
    second = RunEngine(store, submit, WORKFLOWS, owner="second", lease_s=5)
    await asyncio.sleep(0.4)
    assert set(await second.resume()) == {run.run_id, child_id}
    done = await second.wait(run.run_id, 30)
    await second.shutdown()
    assert done.status is RunStatus.SUCCEEDED, done.error
    assert [c.run_id for c in await store.list_runs(parent_run_id=run.run_id)] == [child_id]
    assert done.output == {"call": {"nap": {"slept": 0.6}}}


@pytest.mark.anyio
async def test_map_over_child_workflows(engine: RunEngine) -> None:
    run = await finish(engine, "regions", {"regions": ["eu", "us", "ap"]})
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.step("per_region").result == [{"said": "eu"}, {"said": "us"}, {"said": "ap"}]
    children = await engine.list(parent_run_id=run.run_id)
    assert sorted(c.run_id for c in children) == sorted(child_run_id(run.run_id, "per_region", i) for i in range(3))


@pytest.mark.anyio
async def test_concurrency_key_queues_fifo_with_positions(engine: RunEngine) -> None:
    customer = uuid.uuid4().hex
    first, _ = await engine.start("billing", {"customer": customer, "seconds": 0.4})
    second, _ = await engine.start("billing", {"customer": customer, "seconds": 0.01})
    third, _ = await engine.start("billing", {"customer": customer, "seconds": 0.01})
    other, _ = await engine.start("billing", {"customer": "someone-else", "seconds": 0.01})
    assert first.status is RunStatus.PENDING and other.status is RunStatus.PENDING
    assert (second.status, second.queue_position) == (RunStatus.QUEUED, 1)
    assert (third.status, third.queue_position) == (RunStatus.QUEUED, 2)
    assert (await engine.wait(other.run_id, 10)).status is RunStatus.SUCCEEDED  # another key is not held up
    runs = [await engine.wait(r.run_id, 20) for r in (first, second, third)]
    assert all(r.status is RunStatus.SUCCEEDED for r in runs)
    # One at a time, in order: each started after the previous one finished.
    assert runs[1].started_at >= runs[0].finished_at and runs[2].started_at >= runs[1].finished_at  # type: ignore[operator]


@pytest.mark.anyio
async def test_priority_orders_the_queue_and_queued_runs_can_be_cancelled(engine: RunEngine) -> None:
    customer = uuid.uuid4().hex
    holder, _ = await engine.start("billing", {"customer": customer, "seconds": 0.4})
    low, _ = await engine.start("billing", {"customer": customer, "seconds": 0.01})
    dropped, _ = await engine.start("billing", {"customer": customer, "seconds": 0.01})
    high, _ = await engine.start("billing", {"customer": customer, "seconds": 0.01}, priority=3)
    assert (await engine.get(high.run_id)).queue_position == 1
    assert (await engine.get(low.run_id)).queue_position == 2
    cancelled = await engine.cancel(dropped.run_id)
    assert cancelled.status is RunStatus.CANCELLED and cancelled.started_at is None
    assert [s.status for s in cancelled.steps] == [StepStatus.PENDING]  # it never ran
    done = {r.run_id: await engine.wait(r.run_id, 20) for r in (holder, low, high)}
    assert done[high.run_id].started_at < done[low.run_id].started_at  # type: ignore[operator]
    assert [r.run_id for r in await engine.list(status=RunStatus.QUEUED)] == []


@pytest.mark.anyio
async def test_missing_concurrency_key_is_refused_before_anything_is_stored(engine: RunEngine) -> None:
    with pytest.raises(ValidationFailed, match="concurrency key"):
        await engine.start("billing", {"seconds": 0.01})
    with pytest.raises(ValidationFailed, match="must be a string, number or boolean"):
        await engine.start("billing", {"customer": {"nested": 1}, "seconds": 0.01})
    assert await engine.list(workflow="billing") == []


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])  # stores several Coordinators can share
async def test_two_engines_share_a_concurrency_key(kind: str, store_factory: StoreFactory, submit: CountingSubmit) -> None:
    """Two Coordinators over one store: never more than max_runs of a key at once, none lost."""
    store = await store_factory(kind)
    engines = [RunEngine(store, submit, WORKFLOWS, owner=f"coord-{i}", lease_s=5) for i in range(2)]
    customer = uuid.uuid4().hex
    started = await asyncio.gather(
        *(engines[i % 2].start("pair", {"customer": customer, "seconds": 0.15}) for i in range(8))
    )
    ids = [r.run_id for r, _ in started]
    peak = 0
    for _ in range(400):
        runs = await store.list_runs(workflow="pair", limit=100)
        running = sum(1 for r in runs if r.run_id in ids and r.status in (RunStatus.PENDING, RunStatus.RUNNING))
        peak = max(peak, running)
        if all(r.status.terminal for r in runs if r.run_id in ids):
            break
        for e in engines:  # what the lease loop does on each replica
            await e.resume()
        await asyncio.sleep(0.02)
    runs = {r.run_id: r for r in await store.list_runs(workflow="pair", limit=100)}
    for e in engines:
        await e.shutdown()
    assert all(runs[i].status is RunStatus.SUCCEEDED for i in ids)
    assert 1 <= peak <= 2
    spans = sorted((runs[i].started_at, runs[i].finished_at) for i in ids)
    for i, (start, _) in enumerate(spans):  # at any start, at most 2 runs of the key were running
        assert sum(1 for s, f in spans[:i + 1] if f > start) <= 2  # type: ignore[operator]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])  # stores that outlive a Coordinator
async def test_queued_runs_survive_a_restart_and_are_admitted_by_the_next_coordinator(
    kind: str, store_factory: StoreFactory, submit: CountingSubmit
) -> None:
    store = await store_factory(kind)
    first = RunEngine(store, submit, WORKFLOWS, owner="first", lease_s=0.3)
    customer = uuid.uuid4().hex
    holder, _ = await first.start("billing", {"customer": customer, "seconds": 1.5})
    waiting = [(await first.start("billing", {"customer": customer, "seconds": 0.01}))[0] for _ in range(2)]
    assert [w.queue_position for w in waiting] == [1, 2]
    await first.shutdown()  # the holder stops mid-run; the queued ones are nobody's yet
    second = RunEngine(store, submit, WORKFLOWS, owner="second", lease_s=5)
    await asyncio.sleep(0.4)
    assert await second.resume() == [holder.run_id]  # the holder is claimed; the key stays held
    assert [(await second.get(w.run_id)).status for w in waiting] == [RunStatus.QUEUED] * 2
    runs = [await second.wait(r.run_id, 30) for r in (holder, *waiting)]
    await second.shutdown()
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 3
    assert runs[0].finished_at <= runs[1].started_at and runs[1].finished_at <= runs[2].started_at  # type: ignore[operator]


@pytest.mark.anyio
async def test_item_writer_group_commits_and_bounds_what_is_unwritten() -> None:
    """Finished elements share store writes, and no more than max_unwritten wait for one."""
    from serve_app.workflow.engine import _ItemWriter
    from serve_app.workflow.store import ItemOutcome, Lease

    class SlowStore:
        def __init__(self) -> None:
            self.batches: list[int] = []
            self.written: set[int] = set()

        async def save_items(self, run_id: str, step: str, items: list[ItemOutcome], lease: Lease) -> None:
            await asyncio.sleep(0.005)
            self.batches.append(len(items))
            self.written.update(i.index for i in items)

    store = SlowStore()
    writer = _ItemWriter(store, "r", "s", Lease("o", 1), max_unwritten=16)  # type: ignore[arg-type]
    peak = 0

    async def worker(start: int) -> None:
        nonlocal peak
        for i in range(start, 1000, 50):
            await writer.record(ItemOutcome(i, StepStatus.SUCCEEDED, 1, i))
            peak = max(peak, len(writer._batch))

    await asyncio.gather(*(worker(w) for w in range(50)))
    await writer.flush()
    assert store.written == set(range(1000))
    assert len(store.batches) < 200  # shared round trips, not one per element
    assert max(store.batches) <= 16 + 50 and peak <= 16 + 50  # the bound plus the workers in flight


@pytest.mark.anyio
async def test_item_writer_batches_elements_ending_together_even_on_an_instant_store() -> None:
    """A write that completes without yielding (SQLite on the loop) must not turn group commit
    into one commit per element: elements ending in the same turn share the write."""
    from serve_app.workflow.engine import _ItemWriter
    from serve_app.workflow.store import ItemOutcome, Lease

    batches: list[int] = []

    class InstantStore:
        async def save_items(self, run_id: str, step: str, items: list[ItemOutcome], lease: Lease) -> None:
            batches.append(len(items))

    writer = _ItemWriter(InstantStore(), "r", "s", Lease("o", 1))  # type: ignore[arg-type]
    await asyncio.gather(*(writer.record(ItemOutcome(i, StepStatus.SUCCEEDED, 1, i)) for i in range(16)))
    await writer.flush()
    assert sum(batches) == 16 and len(batches) == 1, batches


@pytest.mark.anyio
async def test_a_map_started_for_the_first_time_reads_no_finished_elements(store: RunStore, submit: CountingSubmit) -> None:
    """Elements are recorded only after the step's write-ahead, so a first start skips the read;
    a resumed map still reads them (test_resume_mid_map_runs_only_unfinished_elements)."""
    reads: list[str] = []
    load_items = store.load_items

    async def counted(run_id: str, step: str) -> Any:
        reads.append(step)
        return await load_items(run_id, step)

    store.load_items = counted  # type: ignore[method-assign]
    eng = RunEngine(store, submit, WORKFLOWS, owner="o", lease_s=5)
    run = await finish(eng, "squares", {"tag": "t", "ns": [1, 2, 3]})
    await eng.shutdown()
    assert run.status is RunStatus.SUCCEEDED and len(run.step("each").result) == 3
    assert reads == []


@pytest.mark.anyio
async def test_step_priority_when_the_step_slots_are_saturated(store: RunStore, submit: CountingSubmit) -> None:
    """One step slot: while it is taken, the higher-priority run's step goes first, whatever the order."""
    eng = RunEngine(store, submit, WORKFLOWS, owner="o", lease_s=5, max_inflight_steps=1)
    holder, _ = await eng.start("slow_child", {"seconds": 0.3})

    async def holding() -> bool:
        return eng.gate.in_use == 1

    await until(holding)
    low, _ = await eng.start("child", {"text": "low"}, priority=1)
    mid, _ = await eng.start("child", {"text": "mid"}, priority=2)
    high, _ = await eng.start("child", {"text": "high"}, priority=3)

    async def all_waiting() -> bool:
        return eng.gate.waiting == 3

    await until(all_waiting)
    done = [await eng.wait(r.run_id, 20) for r in (holder, low, mid, high)]
    await eng.shutdown()
    assert all(r.status is RunStatus.SUCCEEDED for r in done)
    starts = {r.input.get("text"): r.step("hello").finished_at for r in done[1:]}
    assert starts["high"] < starts["mid"] < starts["low"]  # type: ignore[operator]


@pytest.mark.anyio
async def test_listing_pages_with_before(engine: RunEngine) -> None:
    ids = []
    for i in range(5):
        run, _ = await engine.start("child", {"text": f"t{i}"})
        ids.append(run.run_id)
        await asyncio.sleep(0.002)  # distinct created_at
    seen: list[str] = []
    before = None
    while True:
        page = await engine.list(workflow="child", limit=2, before=before)
        if not page:
            break
        seen += [r.run_id for r in page]
        before = page[-1].created_at
    assert seen == list(reversed(ids))  # every run once, newest first
