"""The engine over real stores and the real dispatcher/handlers, in-process (no Ray)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator

import pytest

from serve_app.runtime.config import AppConfig
from serve_app.core.errors import Conflict
from serve_app.workflow import WorkflowSpec, validate
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.state import RunStatus, StepState, StepStatus
from serve_app.workflow.store import Lease, MemoryRunStore, RunStore
from serve_app.testing import in_process_dispatcher

pytestmark = pytest.mark.anyio


def spec(name: str, steps: list[dict[str, Any]], **kw: Any) -> WorkflowSpec:
    s = WorkflowSpec.model_validate({"name": name, "steps": steps, **kw})
    validate(s)
    return s


WORKFLOWS = {
    s.name: s
    for s in [
        spec(
            "diamond",
            [
                {"name": "a", "task_type": "echo", "input": {"message": "${input.text}"}},
                {"name": "b", "task_type": "fib", "input": {"n": "${input.n}"}, "depends_on": ["a"]},
                {"name": "c", "task_type": "echo", "input": {"message": "${steps.a.result.message}"}},
                {"name": "d", "task_type": "echo", "input": {"message": "${steps.c.result.message}"}, "depends_on": ["b"]},
            ],
            output={"fib": "${steps.b.result.value}", "echo": "${steps.d.result.message}"},
        ),
        spec("fanout", [{"name": f"s{i}", "task_type": "sleep", "input": {"seconds": "${input.seconds}"}} for i in range(5)]
             + [{"name": "join", "task_type": "echo", "input": {"message": "joined"}, "depends_on": [f"s{i}" for i in range(5)]}]),
        spec(
            "retrying",
            [
                {
                    "name": "flaky",
                    "task_type": "flaky",
                    "input": {"key": "${input.key}", "fail_times": "${input.fail_times}"},
                    "retry": {"max_attempts": 3, "initial_backoff_s": 0.01},
                },
                {"name": "after", "task_type": "echo", "input": {"message": "ok"}, "depends_on": ["flaky"]},
            ],
        ),
        spec("timeout", [{"name": "slow", "task_type": "sleep", "input": {"seconds": 5}, "timeout_s": 0.1}]),
        spec(
            "long",
            [
                {"name": "first", "task_type": "sleep", "input": {"seconds": 30}},
                {"name": "second", "task_type": "echo", "input": {"message": "never"}, "depends_on": ["first"]},
            ],
        ),
        spec(
            "branches",
            [
                {"name": "bad", "task_type": "fail", "on_failure": "continue"},
                {"name": "after_bad", "task_type": "echo", "input": {"message": "x"}, "depends_on": ["bad"]},
                {"name": "good", "task_type": "fib", "input": {"n": 10}},
            ],
        ),
        spec(
            "chain",
            [
                {"name": "one", "task_type": "flaky", "input": {"key": "${input.key}", "fail_times": 0}},
                {"name": "two", "task_type": "sleep", "input": {"seconds": 1.0}, "depends_on": ["one"]},
            ],
        ),
    ]
}


@pytest.fixture
async def engine(store: RunStore, config: AppConfig) -> AsyncIterator[RunEngine]:
    dispatcher, _, pools = in_process_dispatcher(config)
    eng = RunEngine(store, dispatcher.submit, WORKFLOWS, owner="test-owner", lease_s=5)
    yield eng
    await eng.shutdown()
    pools.close()


async def run_to_end(engine: RunEngine, name: str, inp: dict[str, Any], timeout: float = 20):  # type: ignore[no-untyped-def]
    run, created = await engine.start(name, inp)
    assert created
    return await engine.wait(run.run_id, timeout)


async def test_diamond(engine: RunEngine) -> None:
    run = await run_to_end(engine, "diamond", {"text": "hi", "n": 10})
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.output == {"fib": 55, "echo": "hi"}
    assert all(s.status is StepStatus.SUCCEEDED and s.attempts == 1 for s in run.steps)
    a, b, c, d = (run.step(n) for n in "abcd")
    assert b.started_at >= a.finished_at and c.started_at >= a.finished_at  # type: ignore[operator]
    assert d.started_at >= max(b.finished_at, c.finished_at)  # type: ignore[operator,type-var]


async def test_fanout_runs_concurrently(engine: RunEngine) -> None:
    run = await run_to_end(engine, "fanout", {"seconds": 0.3})
    sleeps = [run.step(f"s{i}") for i in range(5)]
    # Every sleeping step started before any of them finished: they overlapped.
    assert max(s.started_at for s in sleeps) < min(s.finished_at for s in sleeps)  # type: ignore[type-var]
    assert run.step("join").started_at >= max(s.finished_at for s in sleeps)  # type: ignore[operator,type-var]


async def test_retry_then_success(engine: RunEngine) -> None:
    run = await run_to_end(engine, "retrying", {"key": uuid.uuid4().hex, "fail_times": 2})
    assert run.status is RunStatus.SUCCEEDED
    assert run.step("flaky").attempts == 3 and run.step("flaky").result == {"calls": 3}


async def test_retry_exhausted_fails_run_and_skips_dependants(engine: RunEngine) -> None:
    run = await run_to_end(engine, "retrying", {"key": uuid.uuid4().hex, "fail_times": 5})
    assert run.status is RunStatus.FAILED
    flaky = run.step("flaky")
    assert flaky.status is StepStatus.FAILED and flaky.attempts == 3 and flaky.error.code == "handler_error"  # type: ignore[union-attr]
    assert run.step("after").status is StepStatus.SKIPPED and run.step("after").attempts == 0
    assert run.error is not None and run.error.details["step"] == "flaky" and "step 'flaky' failed" in run.error.message


async def test_step_timeout(engine: RunEngine) -> None:
    run = await run_to_end(engine, "timeout", {})
    assert run.status is RunStatus.FAILED and run.step("slow").error.code == "timeout"  # type: ignore[union-attr]


async def test_cancel_mid_run(engine: RunEngine) -> None:
    run, _ = await engine.start("long", {})
    for _ in range(100):
        if (await engine.get(run.run_id)).step("first").status is StepStatus.RUNNING:
            break
        await asyncio.sleep(0.02)
    cancelled = await engine.cancel(run.run_id)
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.step("first").status is StepStatus.CANCELLED and cancelled.step("first").attempts == 1
    assert cancelled.step("second").status is StepStatus.CANCELLED and cancelled.step("second").attempts == 0
    assert (await engine.cancel(run.run_id)).status is RunStatus.CANCELLED  # idempotent


async def test_continue_on_failure(engine: RunEngine) -> None:
    run = await run_to_end(engine, "branches", {})
    assert run.status is RunStatus.SUCCEEDED
    assert run.step("bad").status is StepStatus.FAILED
    assert run.step("after_bad").status is StepStatus.SKIPPED
    assert run.step("good").result == {"n": 10, "value": 55}
    assert run.output == {"good": {"n": 10, "value": 55}}


async def test_idempotent_start(engine: RunEngine) -> None:
    key = uuid.uuid4().hex
    first, created = await engine.start("diamond", {"text": "a", "n": 3}, idempotency_key=key)
    again, created_again = await engine.start("diamond", {"text": "a", "n": 3}, idempotency_key=key)
    assert created and not created_again and again.run_id == first.run_id
    with pytest.raises(Conflict):
        await engine.start("diamond", {"text": "DIFFERENT", "n": 3}, idempotency_key=key)
    await engine.wait(first.run_id, 10)
    assert len(await engine.list(workflow="diamond")) == 1


@pytest.mark.parametrize(
    "inp, key",
    [({"text": float("nan"), "n": 3}, None), ({"text": "\ud800", "n": 3}, None), ({"text": "a", "n": 2**64}, None), ({"text": "a", "n": 3}, "k\udfff")],
    ids=["nan-input", "lone-surrogate-input", "int-out-of-range", "lone-surrogate-key"],
)
async def test_what_cannot_be_rendered_is_refused_and_not_stored(engine: RunEngine, inp: dict[str, Any], key: str | None) -> None:
    """Only the caller's values (input, idempotency key) can carry what no encoder renders; the
    start refuses them before anything is stored, so no later read can break on them."""
    from serve_app.core.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="cannot be stored"):
        await engine.start("diamond", inp, idempotency_key=key)
    assert await engine.list(workflow="diamond") == []


async def test_unknown_workflow_and_run(engine: RunEngine) -> None:
    from serve_app.core.errors import NotFound

    with pytest.raises(NotFound):
        await engine.start("nope", {})
    with pytest.raises(NotFound):
        await engine.get("missing")


async def test_resume_after_owner_stops(store: RunStore, config: AppConfig) -> None:
    """A run whose owner dies mid-run is claimed by another owner; finished steps are not re-run."""
    dispatcher, _, pools = in_process_dispatcher(config)
    key = uuid.uuid4().hex
    first = RunEngine(store, dispatcher.submit, WORKFLOWS, owner="first", lease_s=0.2)
    run, _ = await first.start("chain", {"key": key})
    for _ in range(200):
        if (await first.get(run.run_id)).step("two").status is StepStatus.RUNNING:
            break
        await asyncio.sleep(0.02)
    # Stop before step "two" finishes; the store still says running.
    await first.shutdown()
    mid = await store.get_run(run.run_id)
    assert mid is not None and mid.status is RunStatus.RUNNING and mid.step("one").status is StepStatus.SUCCEEDED
    second = RunEngine(store, dispatcher.submit, WORKFLOWS, owner="second", lease_s=5)
    await asyncio.sleep(0.3)  # the first owner's 0.2 s lease lapses
    assert await second.resume() == [run.run_id]
    assert await second.resume() == []  # already ours and running
    done = await second.wait(run.run_id, 10)
    assert done.status is RunStatus.SUCCEEDED
    assert done.step("one").attempts == 1 and done.step("one").result == {"calls": 1}  # not re-run
    assert done.step("two").attempts == 2  # was in flight: runs again (at-least-once)
    await second.shutdown()
    pools.close()


class SlowSuccessStore(MemoryRunStore):
    """Opens the window where the race lived: step 'c' is slow to record its success,
    and step 'b' (also needed by 'd') finishes inside that window."""

    async def save_step(self, run_id: str, step: StepState, lease: Lease) -> None:
        if step.name == "c" and step.status is StepStatus.SUCCEEDED:
            await asyncio.sleep(0.5)
        if step.name == "b" and step.status is StepStatus.RUNNING:
            await asyncio.sleep(0.1)
        await super().save_step(run_id, step, lease)


async def test_dependant_waits_for_recorded_result_not_status(config: AppConfig) -> None:
    dispatcher, _, pools = in_process_dispatcher(config)
    eng = RunEngine(SlowSuccessStore(), dispatcher.submit, WORKFLOWS, owner="o", lease_s=5)
    run = await run_to_end(eng, "diamond", {"text": "race", "n": 5})
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.output == {"fib": 5, "echo": "race"}
    await eng.shutdown()
    pools.close()


async def test_cancel_through_another_replica_is_seen_within_the_poll_interval(store: RunStore, config: AppConfig) -> None:
    dispatcher, _, pools = in_process_dispatcher(config)
    owner = RunEngine(store, dispatcher.submit, WORKFLOWS, owner="a", cancel_poll_s=0.2)
    other = RunEngine(store, dispatcher.submit, WORKFLOWS, owner="b")
    run, _ = await owner.start("long", {})
    for _ in range(100):
        if (await owner.get(run.run_id)).step("first").status is StepStatus.RUNNING:
            break
        await asyncio.sleep(0.02)
    await other.cancel(run.run_id, wait_s=0)  # not executing there: only recorded in the store
    done = await owner.wait(run.run_id, 5)
    assert done.status is RunStatus.CANCELLED and done.step("first").status is StepStatus.CANCELLED
    await owner.shutdown()
    pools.close()


BRANCHY = spec(
    "branchy",
    [
        {"name": "check", "task_type": "echo", "input": {"message": "${input.tier}"}},
        {"name": "gold", "task_type": "echo", "input": {"message": "vip"}, "when": "steps.check.result.message == 'gold'"},
        {"name": "after_gold", "task_type": "echo", "input": {"message": "${steps.gold.result.message}"}},
        {"name": "big", "task_type": "fib", "input": {"n": 5}, "when": "input.amount > `100`"},
        {"name": "always", "task_type": "echo", "input": {"message": "done"}, "depends_on": ["check"]},
    ],
)


async def test_when_skips_or_runs_a_step_and_a_missing_value_fails_it(store: RunStore, config: AppConfig) -> None:
    dispatcher, _, pools = in_process_dispatcher(config)
    eng = RunEngine(store, dispatcher.submit, {"branchy": BRANCHY}, owner="o")
    gold = await run_to_end(eng, "branchy", {"tier": "gold", "amount": 500})
    assert gold.status is RunStatus.SUCCEEDED, gold.error
    assert {s.name: s.status.value for s in gold.steps} == {
        "check": "succeeded", "gold": "succeeded", "after_gold": "succeeded", "big": "succeeded", "always": "succeeded",
    }
    plain = await run_to_end(eng, "branchy", {"tier": "silver", "amount": 5})
    assert plain.status is RunStatus.SUCCEEDED, plain.error
    states = {s.name: s for s in plain.steps}
    assert states["gold"].status is StepStatus.SKIPPED and states["gold"].attempts == 0  # never sent to a pool
    assert states["after_gold"].status is StepStatus.SKIPPED  # its dependant, like any skipped upstream
    assert states["big"].status is StepStatus.SKIPPED and states["always"].status is StepStatus.SUCCEEDED
    missing = await run_to_end(eng, "branchy", {"tier": "gold"})  # no amount
    big = missing.step("big")
    assert missing.status is RunStatus.FAILED and big.status is StepStatus.FAILED
    assert big.error is not None and big.error.code == "validation_error" and "step 'big' when:" in big.error.message
    await eng.shutdown()
    pools.close()
