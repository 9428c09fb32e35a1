"""Workflow definitions: models, input references, validation and a Python builder.

A workflow is a DAG of steps. A step runs one task type; its ``input`` is a JSON
object whose values may be references resolved at run time:

- ``"${input.path.to.value}"`` — from the run's input;
- ``"${steps.<name>.result.path}"`` — from an upstream step's result (which
  also makes ``<name>`` a dependency).

A reference must be the whole string value; it keeps the referenced value's
JSON type. Everything here is pure and validated before anything runs.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.core.errors import ErrorCode
from serve_app.core.retry import Backoff
from serve_app.core.models import NAME_PATTERN
from serve_app.workflow.conditions import Condition, ConditionError, compile_condition

_REF = re.compile(r"^\$\{([^{}]+)\}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]+$")

DEFAULT_RETRY_ON = (ErrorCode.TIMEOUT.value, ErrorCode.UNAVAILABLE.value, ErrorCode.NOT_READY.value, ErrorCode.OVERLOADED.value)


class WorkflowError(ValueError):
    """A workflow definition is invalid; ``problems`` name each step at fault."""

    def __init__(self, workflow: str, problems: list[str]) -> None:
        self.workflow = workflow
        self.problems = problems
        super().__init__(f"workflow {workflow!r} is invalid: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepRetry(_Strict):
    """How a step is retried after a failed attempt."""

    max_attempts: int = Field(1, ge=1, le=100, description="Total attempts, first included.")
    initial_backoff_s: float = Field(0.5, ge=0, le=3600)
    max_backoff_s: float = Field(30.0, ge=0, le=3600)
    multiplier: float = Field(2.0, ge=1, le=10)
    retry_on: list[str] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_ON), description="Error codes that are retried."
    )
    retry_retryable: bool = Field(True, description="Also retry any error the handler marked retryable.")

    @model_validator(mode="after")
    def _check(self) -> StepRetry:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("max_backoff_s must be >= initial_backoff_s")
        unknown = sorted(set(self.retry_on) - {c.value for c in ErrorCode})
        if unknown:
            raise ValueError(f"retry_on has unknown error codes {unknown}")
        return self

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (the shared :class:`Backoff` formula)."""
        return Backoff(self.initial_backoff_s, self.max_backoff_s, self.multiplier).delay(attempt)

    def should_retry(self, attempt: int, code: str, retryable: bool) -> bool:
        return attempt < self.max_attempts and (code in self.retry_on or (self.retry_retryable and retryable))


class StepSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    task_type: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    input: dict[str, Any] = Field(default_factory=dict, description="Handler payload; values may be ${...} references.")
    depends_on: list[str] = Field(default_factory=list)
    timeout_s: float | None = Field(None, gt=0, le=3600, description="Deadline per attempt.")
    retry: StepRetry = Field(default_factory=StepRetry)
    on_failure: Literal["fail_run", "continue"] = Field(
        "fail_run", description="fail_run: the run fails; continue: dependants are skipped, other branches go on."
    )
    when: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="JMESPath condition over input.* and steps.<name>.result.*; false skips the step "
        "(and so its dependants).",
    )

    def condition(self) -> Condition | None:
        return compile_condition(self.when) if self.when else None


class WorkflowSpec(_Strict):
    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    description: str = ""
    input_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema (2020-12) the run input must match; a run that does not is refused with 422 "
        "naming the field, and no run is created.",
    )
    steps: list[StepSpec] = Field(min_length=1, max_length=1000)
    output: dict[str, Any] | None = Field(
        None, description="Run output mapping (references allowed); default: the results of the final steps."
    )

    def step(self, name: str) -> StepSpec:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def dependencies(self) -> dict[str, set[str]]:
        """step -> every step it waits for (explicit depends_on, references, and what its condition reads)."""
        return {
            s.name: set(s.depends_on)
            | {ref[1] for ref in step_refs(s.input) if ref[0] == "steps"}
            | (_condition_steps(s))
            for s in self.steps
        }

    def final_steps(self) -> list[str]:
        deps = self.dependencies()
        upstream = set().union(*deps.values()) if deps else set()
        return [s.name for s in self.steps if s.name not in upstream]


def _condition_steps(step: StepSpec) -> set[str]:
    try:
        condition = step.condition()
    except ConditionError:
        return set()  # reported by validate(), with the step named
    return condition.steps if condition is not None else set()


# --------------------------------------------------------------------------- references


def parse_ref(value: Any) -> list[str] | None:
    """``"${a.b.c}"`` -> ``["a", "b", "c"]``; anything else -> None."""
    if not isinstance(value, str):
        return None
    m = _REF.match(value.strip())
    return m.group(1).strip().split(".") if m else None


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def step_refs(template: Any) -> list[list[str]]:
    return [ref for ref in (parse_ref(v) for v in _walk(template)) if ref is not None]


class MissingValue(LookupError):
    """A reference points at a value that is not there at run time."""


def lookup(root: Any, path: list[str], what: str) -> Any:
    cur = root
    for seg in path:
        if isinstance(cur, Mapping) and seg in cur:
            cur = cur[seg]
        elif isinstance(cur, list) and seg.isdigit() and int(seg) < len(cur):
            cur = cur[int(seg)]
        else:
            raise MissingValue(f"{what} has no value at {'.'.join(path)!r}")
    return cur


def resolve(template: Any, run_input: Mapping[str, Any], results: Mapping[str, Any]) -> Any:
    """Substitute references in ``template`` with values from the input and step results."""
    ref = parse_ref(template)
    if ref is not None:
        if ref[0] == "input":
            return lookup(run_input, ref[1:], "run input")
        name = ref[1]
        if name not in results:
            raise MissingValue(f"step {name!r} has no result")
        return lookup(results[name], ref[3:], f"result of step {name!r}")
    if isinstance(template, Mapping):
        return {k: resolve(v, run_input, results) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve(v, run_input, results) for v in template]
    return template


# --------------------------------------------------------------------------- validation


def _check_ref(where: str, ref: list[str], names: set[str]) -> str | None:
    if any(not _SEGMENT.match(seg) for seg in ref):
        return f"{where}: malformed reference '${{{'.'.join(ref)}}}'"
    if ref[0] == "input":
        return None
    if ref[0] != "steps" or len(ref) < 3 or ref[2] != "result":
        return f"{where}: reference '${{{'.'.join(ref)}}}' must look like ${{input.x}} or ${{steps.<name>.result[.x]}}"
    if ref[1] not in names:
        return f"{where}: references unknown step {ref[1]!r}"
    return None


def find_cycle(deps: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle as a list of step names (first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(deps.get(node, ())):
            if nxt not in deps:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(deps):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def _condition_problems(where: str, step: StepSpec, names: set[str]) -> list[str]:
    try:
        condition = step.condition()
    except ConditionError as exc:
        return [f"{where}: when {exc}"]
    if condition is None:
        return []
    problems = [f"{where}: when reads unknown step {name!r}" for name in sorted(condition.steps - names)]
    if step.name in condition.steps:
        problems.append(f"{where}: when reads its own result")
    return problems


def input_schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why ``schema`` is not a usable JSON Schema for a run input, or None."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        return f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}"
    declared = schema.get("type")
    if declared is not None and declared != "object" and "object" not in (declared if isinstance(declared, list) else []):
        return f"a run input is a JSON object, but the schema's type is {declared!r}"
    return None


def validate(spec: WorkflowSpec, known_task_types: Iterable[str] | None = None) -> None:
    """Raise :class:`WorkflowError` listing every problem, each naming its step."""
    problems: list[str] = []
    names = [s.name for s in spec.steps]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            problems.append(f"step {n!r} is defined more than once")
        seen.add(n)
    known = set(known_task_types) if known_task_types is not None else None
    for s in spec.steps:
        where = f"step {s.name!r}"
        if known is not None and s.task_type not in known:
            problems.append(f"{where}: unknown task type {s.task_type!r}")
        for dep in s.depends_on:
            if dep not in seen:
                problems.append(f"{where}: depends_on unknown step {dep!r}")
            if dep == s.name:
                problems.append(f"{where}: depends on itself")
        for ref in step_refs(s.input):
            problem = _check_ref(where, ref, seen)
            if problem:
                problems.append(problem)
        problems.extend(_condition_problems(where, s, set(names)))
    for ref in step_refs(spec.output or {}):
        problem = _check_ref("output", ref, seen)
        if problem:
            problems.append(problem)
    if spec.input_schema is not None:
        problem = input_schema_problem(spec.input_schema)
        if problem:
            problems.append(f"input_schema: {problem}")
    if not problems:
        cycle = find_cycle(spec.dependencies())
        if cycle:
            problems.append(f"steps form a cycle: {' -> '.join(cycle)}")
    if problems:
        raise WorkflowError(spec.name, problems)


# --------------------------------------------------------------------------- builder


class StepRef:
    """A step in a :class:`Workflow` being built; ``.result("x")`` references its output."""

    def __init__(self, name: str) -> None:
        self.name = name

    def result(self, path: str = "") -> str:
        return "${steps." + self.name + ".result" + (f".{path}" if path else "") + "}"


class Workflow:
    """Build a :class:`WorkflowSpec` in Python::

        wf = Workflow("diamond")
        a = wf.step("a", "echo", {"message": wf.input("text")})
        b = wf.step("b", "fib", {"n": 10}, depends_on=[a])
        spec = wf.build(known_task_types)
    """

    def __init__(self, name: str, description: str = "", *, input_model: type[BaseModel] | None = None) -> None:
        self.name = name
        self.description = description
        # A pydantic model declares the run input; it is kept as its JSON Schema (one check for both).
        self._input_schema = input_model.model_json_schema() if input_model is not None else None
        self._steps: list[dict[str, Any]] = []
        self._output: dict[str, Any] | None = None

    @staticmethod
    def input(path: str) -> str:
        return "${input." + path + "}"

    def step(
        self,
        name: str,
        task_type: str,
        input: Mapping[str, Any] | None = None,
        *,
        depends_on: Iterable[StepRef | str] = (),
        timeout_s: float | None = None,
        retry: StepRetry | Mapping[str, Any] | None = None,
        on_failure: Literal["fail_run", "continue"] = "fail_run",
        when: str | None = None,
    ) -> StepRef:
        self._steps.append(
            {
                "name": name,
                "task_type": task_type,
                "input": dict(input or {}),
                "depends_on": [d.name if isinstance(d, StepRef) else d for d in depends_on],
                "timeout_s": timeout_s,
                "retry": retry if retry is not None else {},
                "on_failure": on_failure,
                "when": when,
            }
        )
        return StepRef(name)

    def output(self, mapping: Mapping[str, Any]) -> None:
        self._output = dict(mapping)

    def build(self, known_task_types: Iterable[str] | None = None) -> WorkflowSpec:
        spec = WorkflowSpec.model_validate(
            {
                "name": self.name,
                "description": self.description,
                "input_schema": self._input_schema,
                "steps": self._steps,
                "output": self._output,
            }
        )
        validate(spec, known_task_types)
        return spec
