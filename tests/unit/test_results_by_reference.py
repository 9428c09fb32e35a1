"""Results kept by reference: the marker, which steps may keep one, the worker's side and the
engine's (hold, pass, make again when gone), over every store, in-process (no Ray: the object
store is :class:`serve_app.testing.LocalObjects`). On real Serve: tests/integration."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, AsyncIterator

import pytest

from serve_app.core import jsonio, result_refs
from serve_app.core.models import TaskRequest, TaskResult, WorkItem
from serve_app.runtime.config import AppConfig
from serve_app.runtime.dispatch import Dispatcher, ReadinessBoard
from serve_app.runtime.handlers import HandlerRegistry
from serve_app.runtime.recent import RecentValues
from serve_app.runtime.runner import HandlerRunner
from serve_app.testing import LocalObjects, in_process_dispatcher
from serve_app.workflow import WorkflowSpec, validate
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.kept import KeptResults
from serve_app.workflow.state import RunStatus, StepStatus
from tests.conftest import STORE_KINDS, StoreFactory

pytestmark = pytest.mark.anyio

MB = 1 << 20
ARGS = {
    "pools": {
        "general": {"handler_modules": ["serve_app.examples.basic"], "task_types": ["echo", "sleep"]},
        "blobs": {
            "handler_modules": ["serve_app.examples.compute", "tests.unit.byref_handlers"],
            "task_types": ["make_blob", "blob_stats", "blob_once", "big_json", "text_length", "blob_echo"],
        },
    },
}


def spec(name: str, steps: list[dict[str, Any]], **kw: Any) -> WorkflowSpec:
    s = WorkflowSpec.model_validate({"name": name, "steps": steps, **kw})
    validate(s)
    return s


MAKE = {"name": "make", "task_type": "make_blob", "input": {"size": "${input.size}"}}
STATS = {"name": "stats", "task_type": "blob_stats", "input": {"data": "${steps.make.result}"}}
WORKFLOWS = {
    s.name: s
    for s in [
        spec("pair", [MAKE, STATS]),
        spec(
            "paused_pair",  # the reader starts after a pause: time to lose the result
            [MAKE, {"name": "pause", "task_type": "sleep", "input": {"seconds": "${input.pause}"}, "depends_on": ["make"]},
             {**STATS, "depends_on": ["pause"]}],
        ),
        spec("make_only", [MAKE], output={"made": "${steps.make.result}"}),  # only the output reads it
        spec(
            "two_readers",
            [MAKE, {"name": "pause", "task_type": "sleep", "input": {"seconds": "${input.pause}"}, "depends_on": ["make"]},
             {**STATS, "depends_on": ["pause"]}, {**STATS, "name": "stats2", "depends_on": ["pause"]}],
        ),
        spec(
            "once",
            [{"name": "make", "task_type": "blob_once", "input": {"size": 100, "key": "${input.key}"}},
             {"name": "pause", "task_type": "sleep", "input": {"seconds": 0.3}, "depends_on": ["make"]},
             {**STATS, "depends_on": ["pause"]}],
        ),
        spec(
            "mapped_readers",  # every element of a map reads the kept result whole
            [MAKE, {"name": "each", "task_type": "blob_stats", "map": {"over": "${input.items}"},
                    "input": {"data": "${steps.make.result}"}}],
        ),
        spec(
            "relay",  # make is read by relay and by a skipped step; relay is read after a pause
            [MAKE, {"name": "relay", "task_type": "blob_echo", "input": {"data": "${steps.make.result}"}},
             {"name": "gated", "task_type": "blob_stats", "input": {"data": "${steps.make.result}"}, "when": "input.size > `1000000000`"},
             {"name": "pause", "task_type": "sleep", "input": {"seconds": "${input.pause}"}, "depends_on": ["relay"]},
             {"name": "stats", "task_type": "blob_stats", "input": {"data": "${steps.relay.result}"}, "depends_on": ["pause"]}],
        ),
        spec("napping", [MAKE, {"name": "nap", "sleep": 0.3, "depends_on": ["make"]}, {**STATS, "depends_on": ["nap"]}]),
        spec(
            "json_pair",
            [{"name": "doc", "task_type": "big_json", "input": {"size": "${input.size}"}},
             {"name": "length", "task_type": "text_length", "input": {"doc": "${steps.doc.result}"}}],
        ),
    ]
}


# ------------------------------------------------------------------ pure parts


def test_marker_and_substitute() -> None:
    m = result_refs.marker(10, "bytes", "make")
    assert m == {"$serveflow_ref": {"bytes": 10, "kind": "bytes", "step": "make"}}
    assert result_refs.step_of(m) == "make" and result_refs.marker_of({"a": 1}) is None
    assert result_refs.step_of({**m, "extra": 1}) is None  # a marker is a dict of one key
    payload = {"data": m, "other": {"x": [1, m]}, "keep": {"y": 2}}
    out = result_refs.substitute(payload, {"make": b"abc"})
    assert out == {"data": b"abc", "other": {"x": [1, b"abc"]}, "keep": {"y": 2}}
    assert out["keep"] is payload["keep"]  # copied only along paths holding a marker
    assert result_refs.substitute(payload, {}) is payload
    assert result_refs.substitute(m, {"make": 5}) == 5


def test_keep_decision() -> None:
    class Array:  # NumPy-like: nbytes and __array__
        nbytes = 64

        def __array__(self) -> None: ...

    assert result_refs.keep_decision(b"ab", 1_000, jsonio.dumps) == (2, "bytes")  # not JSON: always kept
    assert result_refs.keep_decision(memoryview(b"abc"), 1_000, jsonio.dumps) == (3, "bytes")
    assert result_refs.keep_decision(Array(), 1_000, jsonio.dumps) == (64, "array")
    assert result_refs.keep_decision({"a": "x" * 10}, 1_000, jsonio.dumps) is None
    big = {"a": "é" * 600}  # 1,200 bytes as UTF-8
    assert result_refs.keep_decision(big, 1_000, jsonio.dumps) == (len(json.dumps(big, ensure_ascii=False, separators=(",", ":")).encode()), "json")
    assert result_refs.keep_decision(12345, 1, jsonio.dumps) is None  # scalars stay inline


def test_which_steps_may_keep_results_by_reference() -> None:
    s = spec(
        "mixed",
        [
            {"name": "whole", "task_type": "make_blob", "input": {"size": 1}},
            {"name": "path", "task_type": "echo", "input": {"message": "x"}},
            {"name": "cond", "task_type": "echo", "input": {"message": "x"}},
            {"name": "listed", "task_type": "echo", "input": {"message": "x"}},
            {"name": "child_in", "task_type": "echo", "input": {"message": "x"}},
            {"name": "mapped", "task_type": "echo", "map": {"over": "${input.xs}"}, "input": {"message": "${item}"}},
            {"name": "reader", "task_type": "blob_stats", "input": {"data": "${steps.whole.result}", "m": "${steps.path.result.message}"}},
            {"name": "gated", "task_type": "echo", "input": {"message": "y"}, "when": "steps.cond.result.message == 'x'"},
            {"name": "each", "task_type": "echo", "map": {"over": "${steps.listed.result}"}, "input": {"message": "${item}"}},
            {"name": "kid", "workflow": "pair", "input": {"size": "${steps.child_in.result}"}},
        ],
        output={"m": "${steps.mapped.result}", "r": "${steps.reader.result}"},
    )
    passable = s.passable_by_reference()
    assert {"whole", "reader", "gated"} <= passable
    assert not passable & {"path", "cond", "listed", "child_in", "mapped", "each", "kid"}


def test_which_calls_move_object_refs() -> None:
    """Those go as actor calls (Ray counts the references); the rest keep the cluster's transport."""
    base = {"task_id": "t", "task_type": "make_blob", "payload": {}, "timeout_s": 5}
    assert not WorkItem(**base).moves_object_refs  # a task, or a step nothing may keep
    assert WorkItem(**base, by_ref_over=MB).moves_object_refs  # a later step reads its kept result
    assert not WorkItem(**base, by_ref_over=MB, keep_object=False).moves_object_refs  # the marker alone
    assert WorkItem(**base, refs={"make": object()}).moves_object_refs  # kept inputs go in


async def test_the_worker_keeps_large_or_binary_results_and_reads_kept_inputs() -> None:
    objects = LocalObjects()
    registry = HandlerRegistry.from_modules(["serve_app.examples.compute", "tests.unit.byref_handlers"], ["make_blob", "blob_stats", "big_json"])
    runner = HandlerRunner(registry, max_concurrency=2, max_stuck_calls=2, objects=objects)

    def item(task_type: str, payload: dict[str, Any], **kw: Any) -> WorkItem:
        return WorkItem(task_id=uuid.uuid4().hex, task_type=task_type, payload=payload, timeout_s=5, **kw)

    plain = await runner.run(item("make_blob", {"size": 3}))  # a task, not a step: rendered as JSON as ever
    assert plain.success and plain.result == "\x00" * 3 and plain._object_ref is None and not objects.values
    kept = await runner.run(item("make_blob", {"size": 3}, by_ref_over=MB))
    assert kept.success and kept.result == result_refs.marker(3, "bytes") and objects.values[kept._object_ref] == bytes(3)
    small = await runner.run(item("big_json", {"size": 10}, by_ref_over=MB))
    assert small.result == {"text": "x" * 10} and small._object_ref is None
    large = await runner.run(item("big_json", {"size": 2000}, by_ref_over=1000))
    assert result_refs.marker_of(large.result) == {"bytes": 2011, "kind": "json"}
    assert objects.values[large._object_ref] == {"text": "x" * 2000}

    unread = await runner.run(item("make_blob", {"size": 5}, by_ref_over=MB, keep_object=False))
    assert unread.result == result_refs.marker(5, "bytes") and unread._object_ref is None  # no step reads it
    assert bytes(5) not in objects.values.values()

    marker = result_refs.marker(3, "bytes", "make")
    read = await runner.run(item("blob_stats", {"data": marker}, refs={"make": kept._object_ref}))
    assert read.success and read.result["bytes"] == 3
    objects.clear()
    lost = await runner.run(item("blob_stats", {"data": marker}, refs={"make": kept._object_ref}))
    assert lost.error is not None and lost.error.code == "unavailable" and lost.error.details["lost_result"] == "make"
    assert "no longer in Ray's object store" in lost.error.message
    runner.close()


# ------------------------------------------------------------------ the engine


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def setup(kind: str, store_factory: StoreFactory) -> AsyncIterator[Any]:
    config = AppConfig.from_args(ARGS)
    dispatcher, _, pools = in_process_dispatcher(config)
    engines: list[RunEngine] = []

    async def engine(owner: str = "one", threshold: int | None = MB) -> RunEngine:
        eng = RunEngine(
            await store_factory(kind), dispatcher.submit, WORKFLOWS, owner=owner, lease_s=1, result_by_ref_bytes=threshold
        )
        engines.append(eng)
        return eng

    yield engine, pools
    for eng in engines:
        await eng.shutdown()
    pools.close()


async def _until_running(engine: RunEngine, run_id: str, step: str, attempt: int = 1) -> None:
    for _ in range(500):
        st = (await engine.get(run_id)).step(step)
        if st.status is StepStatus.RUNNING and st.attempts == attempt:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{step} never running")


async def test_a_kept_result_reaches_the_next_step_and_only_its_marker_is_stored(setup: Any) -> None:
    make_engine, pools = setup
    engine = await make_engine()
    run, _ = await engine.start("pair", {"size": 3 * MB})
    run = await engine.wait(run.run_id, 20)
    assert run.status is RunStatus.SUCCEEDED, run.error
    marker = result_refs.marker(3 * MB, "bytes", "make")
    assert run.step("make").result == marker and run.step("stats").result["bytes"] == 3 * MB
    assert run.output == {"stats": run.step("stats").result}  # the default output: the final step
    stored = await engine.get(run.run_id)
    assert len(jsonio.dumps(stored.public())) < 10_000  # the 3 MB never reached the store
    assert run.step("make").attempts == 1
    assert engine._kept == {}  # released with the run: Ray frees the object
    # Its one reader is in the maker's pool: the bytes stayed in the maker's worker, with no copy
    # in the object store, and the reader took them there.
    assert not pools.objects.values and pools.runners["blobs"].reused_results == 1


async def test_a_result_no_step_reads_is_its_marker_and_makes_no_object(setup: Any) -> None:
    """Only the output reads it (or nobody): the marker is all the store and the API would show,
    so the worker makes no object (and the call needs no ObjectRef on the wire)."""
    make_engine, pools = setup
    engine = await make_engine()
    run, _ = await engine.start("make_only", {"size": 2 * MB})
    run = await engine.wait(run.run_id, 20)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.step("make").result == result_refs.marker(2 * MB, "bytes", "make")
    assert run.output == {"made": result_refs.marker(2 * MB, "bytes", "make")}
    assert not pools.objects.values
    kept = engine._kept.get(run.run_id)
    assert kept is None  # released with the run


async def test_a_large_json_result_is_kept_and_read_whole(setup: Any) -> None:
    make_engine, _ = setup
    engine = await make_engine(threshold=1000)
    run, _ = await engine.start("json_pair", {"size": 5000})
    run = await engine.wait(run.run_id, 20)
    assert run.status is RunStatus.SUCCEEDED and run.step("length").result == {"length": 5000}
    assert result_refs.step_of(run.step("doc").result) == "doc"
    inline = await make_engine(owner="two", threshold=None)  # by reference off: inline as before
    run, _ = await inline.start("json_pair", {"size": 5000})
    run = await inline.wait(run.run_id, 20)
    assert run.step("doc").result == {"text": "x" * 5000} and run.step("length").result == {"length": 5000}


async def test_a_lost_result_is_made_again_before_its_reader_runs(setup: Any) -> None:
    make_engine, pools = setup
    engine = await make_engine()
    run, _ = await engine.start("paused_pair", {"size": 1000, "pause": 0.3})
    await _until_running(engine, run.run_id, "pause")
    pools.lose_results()  # the producer's worker died: its result is gone
    run = await engine.wait(run.run_id, 20)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.step("make").attempts == 2 and run.step("stats").result["bytes"] == 1000
    # The reader was sent twice (the first found its input gone), though its policy allows one
    # attempt: a lost input is not the reader's failure.
    assert run.step("stats").attempts == 2


async def test_after_a_coordinator_restart_the_producer_runs_again(setup: Any) -> None:
    make_engine, _ = setup
    first = await make_engine("first")
    run, _ = await first.start("paused_pair", {"size": 1000, "pause": 0.5})
    await _until_running(first, run.run_id, "pause")
    await first.shutdown()  # its in-memory references go with it
    second = await make_engine("second")
    assert run.run_id in await second.resume()
    await _until_running(second, run.run_id, "pause", attempt=2)
    assert (await second.get(run.run_id)).step("make").attempts == 1  # made again only when read
    run = await second.wait(run.run_id, 20)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.step("make").attempts == 2 and run.step("stats").result["bytes"] == 1000
    assert run.step("stats").attempts == 1  # the reader found its input before it was sent


async def test_two_readers_of_a_lost_result_make_it_again_once(setup: Any) -> None:
    make_engine, pools = setup
    engine = await make_engine()
    run, _ = await engine.start("two_readers", {"size": 10, "pause": 0.3})
    await _until_running(engine, run.run_id, "pause")
    pools.lose_results()
    run = await engine.wait(run.run_id, 20)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.step("make").attempts == 2  # once, for both readers
    assert run.step("stats").result == run.step("stats2").result == {"bytes": 10, "adler32": run.step("stats").result["adler32"]}


async def test_a_producer_that_cannot_be_made_again_fails_its_reader_with_its_error(setup: Any) -> None:
    make_engine, pools = setup
    engine = await make_engine()
    run, _ = await engine.start("once", {"key": uuid.uuid4().hex})
    await _until_running(engine, run.run_id, "pause")
    pools.lose_results()
    run = await engine.wait(run.run_id, 20)
    assert run.status is RunStatus.FAILED
    stats = run.step("stats")
    assert stats.status is StepStatus.FAILED and stats.error is not None
    assert stats.error.code == "handler_error" and "made again" in stats.error.message
    assert stats.error.details["step"] == "make" and run.step("make").attempts == 2


async def test_every_element_of_a_map_reads_a_kept_result(setup: Any) -> None:
    make_engine, pools = setup
    engine = await make_engine()
    run, _ = await engine.start("mapped_readers", {"size": 2 * MB, "items": list(range(5))})
    run = await engine.wait(run.run_id, 20)
    assert run.status is RunStatus.SUCCEEDED, run.error
    each = run.step("each").result
    assert len(each) == 5 and all(r["bytes"] == 2 * MB for r in each) and run.step("make").attempts == 1


async def test_a_run_that_parks_between_producer_and_reader_makes_the_result_again(setup: Any) -> None:
    make_engine, _ = setup
    engine = await make_engine()
    run, _ = await engine.start("napping", {"size": 1000})
    for _ in range(300):  # parked on the sleep: nothing of the run is held while it waits
        if run.run_id not in engine.active_runs and (await engine.get(run.run_id)).step("nap").wake_at:
            break
        await asyncio.sleep(0.01)
    assert run.run_id not in engine._kept
    for _ in range(300):  # due: claimed again by the lease loop's resume
        await engine.resume()
        got = await engine.get(run.run_id)
        if got.status.terminal:
            break
        await asyncio.sleep(0.05)
    run = await engine.wait(run.run_id, 20)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.step("make").attempts == 2 and run.step("stats").result["bytes"] == 1000


class CountingObjects(LocalObjects):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, handle: Any) -> Any:
        self.reads += 1
        return await super().get(handle)


async def test_a_reader_on_the_same_worker_takes_a_bytes_result_without_the_object_store() -> None:
    objects = CountingObjects()
    registry = HandlerRegistry.from_modules(["serve_app.examples.compute", "tests.unit.byref_handlers"], ["make_blob", "blob_stats", "big_json", "text_length"])
    runner = HandlerRunner(registry, max_concurrency=2, max_stuck_calls=2, objects=objects, recent=RecentValues(64 * MB))

    def item(task_type: str, payload: dict[str, Any], **kw: Any) -> WorkItem:
        return WorkItem(task_id=uuid.uuid4().hex, task_type=task_type, payload=payload, timeout_s=5, **kw)

    def read(handle: Any) -> WorkItem:
        return item("blob_stats", {"data": result_refs.marker(3 * MB, "bytes", "make")}, refs={"make": handle})

    made = await runner.run(item("make_blob", {"size": 3 * MB}, by_ref_over=MB, keep_local=True))
    assert objects.values[made._object_ref] == bytes(3 * MB)  # in the object store all the same
    first = await runner.run(read(made._object_ref))
    assert first.success and first.result["bytes"] == 3 * MB
    assert objects.reads == 0 and runner.reused_results == 1  # taken from this replica's memory
    second = await runner.run(read(made._object_ref))  # a second reader (or a retry) reads the store
    assert second.result == first.result and objects.reads == 1

    elsewhere = await runner.run(item("make_blob", {"size": 3 * MB}, by_ref_over=MB))  # no reader in this pool
    await runner.run(read(elsewhere._object_ref))
    assert objects.reads == 2 and runner.reused_results == 1
    kept_json = await runner.run(item("big_json", {"size": 2000}, by_ref_over=1000, keep_local=True))
    text = await runner.run(item("text_length", {"doc": result_refs.marker(2011, "json", "make")}, refs={"make": kept_json._object_ref}))
    assert text.success and objects.reads == 3 and runner.reused_results == 1  # JSON values are mutable: never held
    runner.close()


def test_a_result_held_alone_is_named_by_its_replica() -> None:
    name = result_refs.local_handle("abc123")
    assert result_refs.local_replica(name) == "abc123" and name != result_refs.local_handle("abc123")
    for other in (object(), 7, "abc123", "local:", "local::x", None):
        assert result_refs.local_replica(other) is None
    base = {"task_id": "t", "task_type": "blob_stats", "payload": {}, "timeout_s": 5}
    # A reader of such results alone moves no ObjectRef: it keeps the cluster's transport.
    assert not WorkItem(**base, refs={"make": name}).moves_object_refs
    # Nor does a hand-off's maker: whatever it keeps, it answers with a name.
    assert not WorkItem(**base, by_ref_over=MB, keep_local=True, hand_off=True).moves_object_refs
    assert WorkItem(**base, refs={"make": name, "other": object()}).moves_object_refs


async def test_a_hand_off_keeps_bytes_in_the_makers_worker_alone_until_its_reader_takes_them() -> None:
    objects = CountingObjects()
    modules = ["serve_app.examples.compute", "tests.unit.byref_handlers"]
    types = ["make_blob", "blob_stats", "big_json", "text_length", "blob_flaky"]

    def worker(replica: str, cap: int = 8 * MB) -> HandlerRunner:
        registry = HandlerRegistry.from_modules(modules, types)
        return HandlerRunner(registry, max_concurrency=2, max_stuck_calls=2, objects=objects, recent=RecentValues(cap), replica_id=replica)

    def item(task_type: str, payload: dict[str, Any], **kw: Any) -> WorkItem:
        return WorkItem(task_id=uuid.uuid4().hex, task_type=task_type, payload=payload, timeout_s=5, **kw)

    def make(size: int) -> WorkItem:
        return item("make_blob", {"size": size}, by_ref_over=MB, keep_local=True, hand_off=True)

    marker = result_refs.marker(3 * MB, "bytes", "make")
    here, there = worker("r1"), worker("r2")
    made = await here.run(make(3 * MB))
    assert made.result == result_refs.marker(3 * MB, "bytes") and result_refs.local_replica(made._object_ref) == "r1"
    assert not objects.values  # no copy in the object store
    # The reader sent elsewhere (its replica gone, say) finds nothing: its maker is made again.
    lost = await there.run(item("blob_stats", {"data": marker}, refs={"make": made._object_ref}))
    assert lost.error is not None and lost.error.details["lost_result"] == "make"
    assert "not held by this replica" in lost.error.message
    # A reader that fails on the maker's replica leaves the value held, for its retry.
    key = uuid.uuid4().hex
    flaky = item("blob_flaky", {"data": marker, "key": key}, refs={"make": made._object_ref})
    first = await here.run(flaky)
    assert first.error is not None and first.error.code == "handler_error"
    retried = await here.run(flaky)
    assert retried.success and retried.result == {"bytes": 3 * MB} and here.reused_results == 2
    assert (await here.run(flaky)).error.details["lost_result"] == "make"  # taken by the one that succeeded
    assert objects.reads == 0

    # No room beside the values already held alone, or not bytes: into the object store, and the
    # worker holds the reference under the name it answers with (no ObjectRef on the wire).
    small = worker("r3", cap=4 * MB)
    held = await small.run(make(3 * MB))
    full = await small.run(make(2 * MB))
    doc = await small.run(item("big_json", {"size": 2000}, by_ref_over=1000, keep_local=True, hand_off=True))
    assert {result_refs.local_replica(r._object_ref) for r in (held, full, doc)} == {"r3"}
    assert sorted(map(str, objects.values.values())) == sorted([str(bytes(2 * MB)), str({"text": "x" * 2000})])
    assert small.held_alone_bytes == 3 * MB  # references take none of the room
    read_full = item("blob_flaky", {"data": result_refs.marker(2 * MB, "bytes", "make"), "key": uuid.uuid4().hex}, refs={"make": full._object_ref})
    assert (await small.run(read_full)).error.code == "handler_error"  # fails once: the reference is held again
    assert (await small.run(read_full)).result == {"bytes": 2 * MB} and objects.reads == 2
    text = await small.run(item("text_length", {"doc": result_refs.marker(2011, "json", "doc")}, refs={"doc": doc._object_ref}))
    assert text.result == {"length": 2000}
    # Without hand_off (several readers, or one in another pool) the object store has it too.
    shared = await here.run(item("make_blob", {"size": 10}, by_ref_over=MB, keep_local=True))
    assert objects.values[shared._object_ref] == bytes(10)
    for runner in (here, there, small):
        runner.close()


def recording_dispatcher(args: dict[str, Any]) -> tuple[Dispatcher, list[WorkItem]]:
    """A Dispatcher over ready pools whose calls are only recorded (and succeed)."""
    config = AppConfig.from_args(args)
    board = ReadinessBoard()
    board.update({p: {"ready": True, "status": "healthy"} for p in config.pools})
    seen: list[WorkItem] = []

    async def call(pool: str, work: WorkItem) -> TaskResult:
        seen.append(work)
        return TaskResult(success=True)

    return Dispatcher(config, board, call), seen


async def test_the_dispatcher_asks_for_a_local_hold_only_when_a_reader_is_served_by_the_same_pool() -> None:
    d, seen = recording_dispatcher(ARGS)
    make = TaskRequest(task_type="make_blob", payload={"size": 1})
    await d.submit(make, by_ref_over=MB, reader_task_types={"echo", "blob_stats"})
    await d.submit(make, by_ref_over=MB, reader_task_types={"echo"})  # read in another pool only
    await d.submit(make, reader_task_types={"blob_stats"})  # not a step that keeps its result
    assert [w.keep_local for w in seen] == [True, False, False]
    seen.clear()
    await d.submit(make, by_ref_over=MB, reader_task_types={"blob_stats"}, hand_off=True)
    await d.submit(make, by_ref_over=MB, reader_task_types={"echo"}, hand_off=True)  # its reader is elsewhere
    assert [w.hand_off for w in seen] == [True, False]
    no_reuse, seen = recording_dispatcher({"pools": {**ARGS["pools"], "blobs": {**ARGS["pools"]["blobs"], "reuse_results_bytes": 0}}})
    await no_reuse.submit(make, by_ref_over=MB, reader_task_types={"blob_stats"}, hand_off=True)
    assert not seen[0].hand_off and seen[0].moves_object_refs  # a pool that holds nothing: the object store


def test_the_task_types_that_read_a_result() -> None:
    s = spec(
        "readers",
        [
            MAKE,
            STATS,
            {"name": "shout", "task_type": "echo", "input": {"message": "${steps.make.result}"}},
            {"name": "after", "task_type": "echo", "input": {"message": "x"}, "depends_on": ["make"]},  # order only
            {"name": "kid", "workflow": "pair", "input": {"size": "${steps.stats.result.bytes}"}},
        ],
    )
    types = s.reader_task_types()
    assert types["make"] == {"blob_stats", "echo"}
    assert types["stats"] == set()  # read by a child run only, which has no task type
    assert "after" not in types and "shout" not in types
    assert s.readers() == {"make": {"stats", "shout"}, "stats": {"kid"}}


async def test_a_kept_result_is_let_go_once_every_step_that_reads_it_is_done(setup: Any) -> None:
    """Not held until the run ends: a chain of large results keeps only what a step still needs."""
    make_engine, _ = setup
    engine = await make_engine()
    run, _ = await engine.start("relay", {"size": 1000, "pause": 0.3})
    await _until_running(engine, run.run_id, "pause")
    kept = engine._kept[run.run_id]
    assert not kept.held("make")  # read by relay (succeeded) and by gated (skipped): let go
    assert kept.held("relay")  # stats reads it after the pause
    run = await engine.wait(run.run_id, 20)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.step("gated").status is StepStatus.SKIPPED and run.step("stats").result["bytes"] == 1000
    assert run.step("make").attempts == 1  # never needed again, so never made again


def test_release_read_lets_go_only_when_all_readers_are_done() -> None:
    s = WORKFLOWS["two_readers"]
    kept = KeptResults(s, MB)
    made = TaskResult(success=True, result=result_refs.marker(10, "bytes"))
    made._object_ref = "ref"
    kept.keep("make", made)
    assert kept.held("make")
    done = {"stats"}
    assert kept.release_read("stats", done.__contains__) == [] and kept.held("make")  # stats2 still reads it
    done.add("stats2")
    assert kept.release_read("stats2", done.__contains__) == ["make"] and not kept.held("make")
    assert kept.release_read("pause", done.__contains__) == []  # reads nothing


def test_a_maker_and_its_one_reader_share_a_key_along_a_chain_and_no_one_else_gets_one() -> None:
    hand_offs = {name: s.hand_offs() for name, s in WORKFLOWS.items()}
    assert hand_offs["pair"] == {"make": "make", "stats": "make"}
    assert hand_offs["two_readers"] == {}  # only one reader could take the maker's object
    assert hand_offs["mapped_readers"] == {}  # a map's elements are better spread
    assert hand_offs["json_pair"] == {"doc": "doc", "length": "doc"}
    chain = spec(
        "chain",
        [MAKE, {"name": "b", "task_type": "blob_echo", "input": {"data": "${steps.make.result}"}},
         {"name": "c", "task_type": "blob_echo", "input": {"data": "${steps.b.result}"}},
         {"name": "d", "task_type": "blob_stats", "input": {"data": "${steps.c.result}"}}],
    )
    assert chain.hand_offs() == {"make": "make", "b": "make", "c": "make", "d": "make"}
    two_makers = spec(
        "two_makers",
        [MAKE, {**MAKE, "name": "other"},
         {"name": "both", "task_type": "blob_echo", "input": {"data": ["${steps.make.result}", "${steps.other.result}"]}}],
    )
    # The reader goes where the first maker ran; the second maker keeps a key of its own.
    assert two_makers.hand_offs() == {"make": "make", "other": "other", "both": "make"}
    # Only a maker whose reader follows it may keep its value in its own process alone.
    assert two_makers.hand_off_makers() == {"make"}
    assert chain.hand_off_makers() == {"make", "b", "c"}
    assert WORKFLOWS["pair"].hand_off_makers() == {"make"}
    assert WORKFLOWS["two_readers"].hand_off_makers() == WORKFLOWS["mapped_readers"].hand_off_makers() == frozenset()
    maybe = spec("maybe", [MAKE, {**STATS, "when": "input.size > `10`"}])  # its reader may never come
    assert maybe.hand_offs() == {"make": "make", "stats": "make"} and maybe.hand_off_makers() == frozenset()


async def test_the_engine_keys_the_calls_of_a_hand_off_by_run_and_maker(kind: str, store_factory: StoreFactory) -> None:
    config = AppConfig.from_args(ARGS)
    dispatcher, _, pools = in_process_dispatcher(config)
    keys: dict[str, str | None] = {}
    hand_offs: dict[str, bool] = {}

    async def submit(req: TaskRequest, **kw: Any) -> TaskResult:
        keys[req.task_id.split(".")[-2]] = kw.get("affinity")
        hand_offs[req.task_id.split(".")[-2]] = kw.get("hand_off", False)
        return await dispatcher.submit(req, **kw)

    engine = RunEngine(await store_factory(kind), submit, WORKFLOWS, owner="one", lease_s=1, result_by_ref_bytes=MB)
    try:
        run, _ = await engine.start("pair", {"size": 2 * MB})
        assert (await engine.wait(run.run_id, 20)).status is RunStatus.SUCCEEDED
        assert keys == {"make": f"{run.run_id}/make", "stats": f"{run.run_id}/make"}
        assert hand_offs == {"make": True, "stats": False}
        keys.clear()
        hand_offs.clear()
        run, _ = await engine.start("two_readers", {"size": 2 * MB, "pause": 0})
        assert (await engine.wait(run.run_id, 20)).status is RunStatus.SUCCEEDED
        assert set(keys) == {"make", "pause", "stats", "stats2"} and set(keys.values()) == {None}
        assert not any(hand_offs.values())
    finally:
        await engine.shutdown()
        pools.close()


async def test_only_calls_that_make_or_read_a_held_result_in_a_pool_of_several_replicas_carry_the_key() -> None:
    args = {"pools": {**ARGS["pools"], "blobs": {**ARGS["pools"]["blobs"], "num_replicas": 2}}}
    d, seen = recording_dispatcher(args)
    make = TaskRequest(task_type="make_blob", payload={"size": 1})
    stats = TaskRequest(task_type="blob_stats", payload={"data": "marker"})
    await d.submit(make, by_ref_over=1, reader_task_types={"blob_stats"}, affinity="run1/make")  # maker, reader in its pool
    await d.submit(stats, refs={"make": object()}, affinity="run1/make")  # its reader
    await d.submit(make, by_ref_over=1, reader_task_types={"echo"}, affinity="run1/make")  # read in another pool only
    await d.submit(make, affinity="run1/make")  # a step that keeps nothing
    await d.submit(TaskRequest(task_type="echo", payload={}), refs={"make": object()}, affinity="run1/make")  # one replica
    await d.submit(make, by_ref_over=1, reader_task_types={"blob_stats"})  # no key given
    await d.submit(stats, refs={"make": result_refs.local_handle("b2")}, affinity="run1/make")  # its maker held it alone
    await d.submit(make, by_ref_over=1, reader_task_types={"blob_stats"}, affinity="run1/make", hand_off=True)
    assert [w.affinity for w in seen] == ["run1/make", "run1/make", None, None, None, None, "b2", "run1/make"]
    assert seen[-1].hand_off and not seen[0].hand_off
    assert all("affinity" not in w.model_dump(mode="json") for w in seen)  # it routes; the worker never sees it
