from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from serve_app.runtime.config import WorkflowsConfig
from serve_app.workflow import StepRetry, Workflow, WorkflowError, WorkflowSpec, validate
from serve_app.workflow.loader import load_workflows
from serve_app.workflow.spec import MissingValue, find_cycle, resolve

KNOWN = {"echo", "fib", "sleep"}


def _spec(steps: list[dict], **kw: object) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"name": "wf", "steps": steps, **kw})


def test_references_add_dependencies() -> None:
    spec = _spec(
        [
            {"name": "a", "task_type": "echo"},
            {"name": "b", "task_type": "echo", "input": {"m": "${steps.a.result.message}"}},
            {"name": "c", "task_type": "echo", "depends_on": ["a"], "input": {"x": ["${steps.b.result}"]}},
        ]
    )
    assert spec.dependencies() == {"a": set(), "b": {"a"}, "c": {"a", "b"}}
    assert spec.final_steps() == ["c"]
    validate(spec, KNOWN)
    # Derived once per (frozen) definition, read-only, and never part of what is dumped or stored.
    assert spec.dependencies() is spec.dependencies() and isinstance(spec.dependencies()["c"], frozenset)
    assert spec.input_reads() == {"a": set(), "b": {"a"}, "c": {"b"}} and spec.read_by_steps() == {"a", "b"}
    assert spec.passable_by_reference() == {"b", "c"}  # a's result is read by a path into it: inline
    assert spec.reader_task_types() == {"a": {"echo"}, "b": {"echo"}} and spec.reader_task_types() is spec.reader_task_types()
    assert set(spec.model_dump()) == set(type(spec).model_fields) and "_dependencies" not in spec.model_dump_json()
    assert type(spec).model_validate_json(spec.model_dump_json()) == spec


def test_resolve_keeps_types_and_paths() -> None:
    tpl = {"n": "${input.n}", "first": "${steps.a.result.items.0}", "lit": "x ${input.n}", "nested": {"all": "${steps.a.result}"}}
    out = resolve(tpl, {"n": 3}, {"a": {"items": [{"k": 1}]}})
    assert out == {"n": 3, "first": {"k": 1}, "lit": "x ${input.n}", "nested": {"all": {"items": [{"k": 1}]}}}
    with pytest.raises(MissingValue, match="run input has no value at 'missing'"):
        resolve({"v": "${input.missing}"}, {}, {})


@pytest.mark.parametrize(
    "steps, message",
    [
        ([{"name": "a", "task_type": "teleport"}], "step 'a': unknown task type 'teleport'"),
        ([{"name": "a", "task_type": "echo", "depends_on": ["zz"]}], "step 'a': depends_on unknown step 'zz'"),
        ([{"name": "a", "task_type": "echo", "input": {"x": "${steps.zz.result}"}}], "step 'a': references unknown step 'zz'"),
        ([{"name": "a", "task_type": "echo", "input": {"x": "${steps.a.output}"}}], "must look like"),
        ([{"name": "a", "task_type": "echo", "input": {"x": "${nothing.here}"}}], "must look like"),
        ([{"name": "a", "task_type": "echo"}, {"name": "a", "task_type": "echo"}], "step 'a' is defined more than once"),
        (
            [
                {"name": "a", "task_type": "echo", "depends_on": ["c"]},
                {"name": "b", "task_type": "echo", "depends_on": ["a"]},
                {"name": "c", "task_type": "echo", "input": {"x": "${steps.b.result}"}},
            ],
            "steps form a cycle: a -> c -> b -> a",
        ),
    ],
)
def test_validation_names_the_step(steps: list[dict], message: str) -> None:
    with pytest.raises(WorkflowError) as info:
        validate(_spec(steps), KNOWN)
    assert message in str(info.value)


def test_bad_policies_rejected() -> None:
    with pytest.raises(ValidationError, match="max_backoff_s must be >= initial_backoff_s"):
        StepRetry(initial_backoff_s=5, max_backoff_s=1)
    with pytest.raises(ValidationError, match="unknown error codes"):
        StepRetry(retry_on=["sometimes"])
    with pytest.raises(ValidationError):
        _spec([{"name": "a", "task_type": "echo", "on_failure": "shrug"}])


def test_retry_policy() -> None:
    r = StepRetry(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=0.3)
    assert [r.backoff(a) for a in (1, 2, 3)] == [0.1, 0.2, 0.3]
    assert r.should_retry(1, "timeout", False) and r.should_retry(2, "handler_error", True)
    assert not r.should_retry(3, "timeout", True)
    assert not StepRetry(max_attempts=3, retry_retryable=False).should_retry(1, "handler_error", True)


def test_find_cycle_none_for_dag() -> None:
    assert find_cycle({"a": set(), "b": {"a"}, "c": {"a", "b"}}) is None


def test_builder() -> None:
    wf = Workflow("diamond")
    a = wf.step("a", "echo", {"message": Workflow.input("text")})
    b = wf.step("b", "fib", {"n": 5}, depends_on=[a])
    c = wf.step("c", "echo", {"message": a.result("message")})
    wf.step("d", "echo", {"message": "done"}, depends_on=[b, c], retry={"max_attempts": 2})
    wf.output({"fib": b.result("value")})
    spec = wf.build(KNOWN)
    assert spec.dependencies()["d"] == {"b", "c"} and spec.step("d").retry.max_attempts == 2
    bad = Workflow("bad")
    bad.step("a", "nope")
    with pytest.raises(WorkflowError, match="step 'a': unknown task type 'nope'"):
        bad.build(KNOWN)


def test_loader_reads_definitions_files_and_modules(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "wf.yaml"
    f.write_text("workflows:\n  - name: from_file\n    steps:\n      - {name: s, task_type: echo, input: {message: hi}}\n")
    cfg = WorkflowsConfig(
        definitions=[{"name": "inline", "steps": [{"name": "s", "task_type": "fib", "input": {"n": 1}}]}],
        files=[str(f)],
        modules=["serve_app.examples.workflows"],
    )
    specs = load_workflows(cfg, {"echo", "fib", "sleep"})
    assert set(specs) == {"inline", "from_file", "fanout", "fib_chain", "fib_many"}


def test_loader_reports_schema_problems_with_origin() -> None:
    cfg = WorkflowsConfig(definitions=[{"name": "w", "steps": [{"name": "s"}]}])
    with pytest.raises(WorkflowError, match=r"workflow 'w' is invalid: \(serve_config definitions\) steps.0: Value error, a step has exactly one of task_type, workflow, sleep, sleep_until or wait_for"):
        load_workflows(cfg, KNOWN)


def test_input_schemas_are_checked_at_deploy_time() -> None:
    steps = [{"name": "a", "task_type": "echo"}]
    with pytest.raises(WorkflowError, match="input_schema: not a valid JSON Schema at properties/n/type"):
        validate(WorkflowSpec.model_validate({"name": "w", "steps": steps, "input_schema": {"properties": {"n": {"type": "integr"}}}}))
    with pytest.raises(WorkflowError, match="input_schema: a run input is a JSON object, but the schema's type is 'array'"):
        validate(WorkflowSpec.model_validate({"name": "w", "steps": steps, "input_schema": {"type": "array"}}))


def test_a_pydantic_model_declares_the_input_in_python() -> None:
    from pydantic import BaseModel, Field

    class Order(BaseModel):
        customer: str
        amount: float = Field(gt=0)

    wf = Workflow("orders", input_model=Order)
    wf.step("a", "echo", {"message": Workflow.input("customer")})
    spec = wf.build({"echo"})
    assert spec.input_schema is not None and spec.input_schema["required"] == ["customer", "amount"]


def _when(expr: str, **extra: object) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {
            "name": "w",
            "steps": [
                {"name": "check", "task_type": "echo", "input": {"message": "x"}},
                {"name": "go", "task_type": "echo", "input": {"message": "y"}, "when": expr, **extra},
            ],
        }
    )


def test_conditions_are_parsed_and_checked_at_deploy_time_with_the_step_named() -> None:
    spec = _when("input.amount > `100` && steps.check.result.message == 'x'")
    validate(spec)
    assert spec.dependencies()["go"] == {"check"}  # what a condition reads is waited for
    for expr, message in [
        ("input.amount >", "step 'go': when is not a valid JMESPath expression"),
        ("steps.nope.result.ok", "step 'go': when reads unknown step 'nope'"),
        ("steps.go.result.ok", "step 'go': when reads its own result"),
        ("env.HOME == 'x'", "when reads 'env.HOME': a condition reads only input.* and steps.<name>.result.*"),
        ("steps.check.status == 'ok'", "a step is read as steps.<name>.result[.x]"),
    ]:
        with pytest.raises(WorkflowError, match=re.escape(message)):
            validate(_when(expr))


def test_conditions_evaluate_with_jmespath_truth_and_refuse_missing_values() -> None:
    from serve_app.workflow.conditions import compile_condition

    c = compile_condition("contains(`[\"eu\", \"us\"]`, input.region) && !(input.n < `3`)")
    assert c.evaluate({"region": "eu", "n": 3}, {}) is True
    assert c.evaluate({"region": "cn", "n": 3}, {}) is False
    assert compile_condition("input.n").evaluate({"n": 0}, {}) is True  # JMESPath: 0 is true
    assert compile_condition("input.tags").evaluate({"tags": []}, {}) is False
    # Projections and filters read their elements relative to the list, not from the root.
    items = compile_condition("length(input.items[?price > `5`]) > `0` && contains(input.items[*].sku, 'a')")
    assert items.paths == (("input", "items"), ("input", "items"))
    assert items.evaluate({"items": [{"price": 9, "sku": "a"}]}, {}) is True
    with pytest.raises(MissingValue, match="input.region"):
        c.evaluate({"n": 5}, {})
    with pytest.raises(MissingValue, match="step 'check' has no result"):
        compile_condition("steps.check.result.ok").evaluate({}, {})
