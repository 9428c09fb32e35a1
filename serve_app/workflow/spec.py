"""Workflow definitions: models, input references, validation and a Python builder.

A workflow is a DAG of steps. A step runs one task type; its ``input`` is a JSON
object whose values may be references resolved at run time:

- ``"${input.path.to.value}"`` — from the run's input;
- ``"${steps.<name>.result.path}"`` — from an upstream step's result (which
  also makes ``<name>`` a dependency).

- ``"${item.path}"`` / ``"${index}"`` — in a map step, the element being run
  and its position in the list.

A reference must be the whole string value; it keeps the referenced value's
JSON type. A step runs a task type, or a child workflow (``workflow:``); with
``map:`` it runs once per element of a list known at run time. A workflow may
declare ``concurrency`` (runs per key at once) and a default ``priority``.
Everything here is pure and validated before anything runs.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from typing import Any, Iterable, Iterator, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.core.errors import ErrorCode
from serve_app.core.retry import Backoff
from serve_app.core.models import NAME_PATTERN
from serve_app.workflow.conditions import Condition, ConditionError, compile_condition

_REF = re.compile(r"^\$\{([^{}]+)\}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]+$")

# A map over more elements than this fails its step (a structured error naming it).
MAX_MAP_ITEMS = 100_000
PRIORITIES = (1, 2, 3)  # 3 runs first; Hatchet's convention
ITEM_ROOTS = ("item", "index")

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


class MapSpec(_Strict):
    """Run the step once per element of a list known only at run time."""

    over: str = Field(
        min_length=4,
        max_length=512,
        description="The list: ${input.x} or ${steps.<name>.result.x}. Elements are ${item} (${item.x}), "
        "positions ${index}, in the step's input.",
    )
    max_parallel: int = Field(16, ge=1, le=1024, description="Elements in flight at once.")
    on_item_failure: Literal["fail_step", "continue"] = Field(
        "fail_step",
        description="fail_step: the first element that fails (after its retries) fails the step and stops the rest; "
        "continue: every element runs, failed ones are null in the result and listed in the step's map progress.",
    )


class ConcurrencySpec(_Strict):
    """At most ``max_runs`` runs of this workflow with the same key run at once; the rest queue."""

    key: str = Field(
        "",
        max_length=512,
        description="${input.x} (its value is the key) or a literal; empty: one key for the whole workflow.",
    )
    max_runs: int = Field(1, ge=1, le=100_000)


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")
MAX_WAIT_S = 366 * 24 * 3600.0  # a year


def parse_duration(value: Any) -> float:
    """Seconds in ``value``: a number of seconds, or text such as ``90s``, ``10m``, ``1h30m``, ``2d``.
    ValueError when it is neither, negative, or longer than a year."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)) and any(m.groups()):
        d, h, mi, se = (float(g) if g else 0.0 for g in m.groups())
        seconds = d * 86400 + h * 3600 + mi * 60 + se
    else:
        raise ValueError(f"{value!r} is not a duration (seconds, or text like 90s, 10m, 1h30m, 2d)")
    if not 0 <= seconds <= MAX_WAIT_S:
        raise ValueError(f"duration {value!r} is outside 0 s to one year")
    return seconds


def parse_instant(value: Any) -> float:
    """Unix time from ``value``: a number (Unix seconds) or an ISO 8601 timestamp with its zone."""
    from datetime import datetime

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                raise ValueError(f"timestamp {value!r} has no time zone (add Z or +hh:mm)")
            return moment.timestamp()
    raise ValueError(f"{value!r} is not a timestamp (Unix seconds, or ISO 8601 with a zone)")


class WaitForSpec(_Strict):
    """Wait for a named signal (POST /v1/runs/{id}/signals/{name}); its payload is the step's result."""

    signal: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    timeout: str | float | None = Field(None, description="e.g. 24h; none: wait until the signal comes.")
    on_timeout: Literal["fail", "skip"] = Field("fail", description="fail: the step fails (timeout); skip: it is skipped.")

    @model_validator(mode="after")
    def _check(self) -> WaitForSpec:
        if self.timeout is not None:
            parse_duration(self.timeout)
        return self

    def timeout_s(self) -> float | None:
        return None if self.timeout is None else parse_duration(self.timeout)


class StepSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    task_type: str | None = Field(None, min_length=1, max_length=128, pattern=NAME_PATTERN)
    workflow: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=NAME_PATTERN,
        description="Run this workflow as a child run (its input is the step's input; its output is the step's result).",
    )
    map: MapSpec | None = Field(None, description="Run the task (or child workflow) once per element of a list.")
    sleep: str | float | None = Field(
        None, description="Wait this long, holding no worker: 90s, 10m, 1h30m, 2d, seconds, or ${input.x}."
    )
    sleep_until: str | float | None = Field(
        None, description="Wait until this time: ISO 8601 with a zone, Unix seconds, or ${input.x}."
    )
    wait_for: WaitForSpec | None = Field(None, description="Wait for a named signal; its payload is the result.")
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

    @model_validator(mode="after")
    def _one_target(self) -> StepSpec:
        kinds = [k for k in ("task_type", "workflow", "sleep", "sleep_until", "wait_for") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "a step has exactly one of task_type, workflow, sleep, sleep_until or wait_for"
                + (f" (this one has {', '.join(kinds)})" if kinds else "")
            )
        if self.workflow is not None and self.retry.max_attempts > 1:
            raise ValueError("a child workflow step is not retried as a whole; give the child's steps a retry policy")
        if self.map is not None and self.task_type is None and self.workflow is None:
            raise ValueError("map runs a task_type or a child workflow, not a sleep or a wait")
        for key in ("sleep", "sleep_until"):
            value = getattr(self, key)
            if value is not None and parse_ref(value) is None:
                (parse_duration if key == "sleep" else parse_instant)(value)  # a literal is checked now
        return self

    @property
    def waits(self) -> bool:
        """A step that waits for time or a signal instead of running anything."""
        return self.sleep is not None or self.sleep_until is not None or self.wait_for is not None

    @property
    def target(self) -> str:
        """What the step runs, as stored and shown: the task type, ``workflow:<name>``, ``sleep``
        or ``signal:<name>``."""
        if self.task_type is not None:
            return self.task_type
        if self.workflow is not None:
            return f"workflow:{self.workflow}"
        if self.wait_for is not None:
            return f"signal:{self.wait_for.signal}"
        return "sleep"

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
    concurrency: ConcurrencySpec | None = Field(
        None, description="Limit runs at once per key; others wait as queued, first in first out within a priority."
    )
    priority: int = Field(1, ge=1, le=3, description="Default run priority (3 first) for queued runs and waiting steps.")

    def step(self, name: str) -> StepSpec:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    # What the engine asks of a definition for every run it drives is derived once: a definition
    # is frozen, so these are computed on first use and kept on it (not fields: never dumped).

    def dependencies(self) -> Mapping[str, frozenset[str]]:
        """step -> every step it waits for (explicit depends_on, references, and what its condition reads)."""
        return self._dependencies

    @cached_property
    def _dependencies(self) -> Mapping[str, frozenset[str]]:
        return {
            s.name: frozenset(
                set(s.depends_on)
                | {name for name, _ in result_reads([s.input, s.map.over if s.map else None, s.sleep, s.sleep_until])}
                | _condition_steps(s)
            )
            for s in self.steps
        }

    def passable_by_reference(self) -> frozenset[str]:
        """Task steps whose result may stay in Ray's object store: every read of it is whole
        (``${steps.<name>.result}``) by a task step's input or by the output. A condition, a map's
        list, a wait, a child run's input or a path into the result needs the value itself."""
        return self._passable

    @cached_property
    def _passable(self) -> frozenset[str]:
        needed: set[str] = set()
        for s in self.steps:
            needed |= _condition_steps(s)
            passes_whole = s.task_type is not None
            needed |= {name for name, path in result_reads(s.input) if not (passes_whole and path == ["result"])}
            needed |= {name for name, _ in result_reads([s.map.over if s.map else None, s.sleep, s.sleep_until])}
        needed |= {name for name, path in result_reads(self.output) if path != ["result"]}
        return frozenset(s.name for s in self.steps if s.task_type is not None and s.map is None and s.name not in needed)

    def input_reads(self) -> Mapping[str, frozenset[str]]:
        """step -> the steps whose results its input reads (ordering alone needs no value)."""
        return self._input_reads

    @cached_property
    def _input_reads(self) -> Mapping[str, frozenset[str]]:
        return {s.name: frozenset(name for name, _ in result_reads(s.input)) for s in self.steps}

    def read_by_steps(self) -> frozenset[str]:
        """The steps whose result some step's input reads."""
        return self._read_by_steps

    @cached_property
    def _read_by_steps(self) -> frozenset[str]:
        return frozenset().union(*self._input_reads.values())

    def readers(self) -> Mapping[str, frozenset[str]]:
        """step -> the steps whose input reads its result (only steps some step reads)."""
        return self._readers

    @cached_property
    def _readers(self) -> Mapping[str, frozenset[str]]:
        readers: dict[str, set[str]] = {}
        for s in self.steps:
            for read in self._input_reads[s.name]:
                readers.setdefault(read, set()).add(s.name)
        return {name: frozenset(r) for name, r in readers.items()}

    def hand_offs(self) -> Mapping[str, str]:
        """step -> the step whose name keys where its by-reference hand-off runs. A step whose
        result may stay in the object store and is read by exactly one task step (not a map: only
        one reader can take the maker's object, and a map's elements are better spread), and that
        reader, get the same name, so that the reader is sent to the replica that made the value;
        along a chain of such hand-offs, the chain's first step. Steps not listed get no key."""
        return self._hand_offs

    def hand_off_makers(self) -> frozenset[str]:
        """The makers whose one reader takes their value over (see :meth:`hand_offs`) and runs
        unless a step before it fails: such a value may stay in the maker's process alone, for
        the reader sent there after it. (A reader with a condition may never come for it.)"""
        return self._hand_off_makers

    @cached_property
    def _hand_off_makers(self) -> frozenset[str]:
        conditional = {s.name for s in self.steps if s.when is not None}
        return frozenset(maker for reader, maker in self._takes_over.items() if reader not in conditional)

    @cached_property
    def _sole(self) -> Mapping[str, str]:
        """maker -> its one reader, a plain task step."""
        plain = {s.name for s in self.steps if s.task_type is not None and s.map is None}
        return {p: next(iter(r)) for p, r in self._readers.items() if p in self._passable and len(r) == 1 and r <= plain}

    @cached_property
    def _takes_over(self) -> Mapping[str, str]:
        """reader -> the maker whose value it takes (the first by name of the makers it alone reads)."""
        takes_over: dict[str, str] = {}
        for maker in sorted(self._sole):
            takes_over.setdefault(self._sole[maker], maker)
        return takes_over

    @cached_property
    def _hand_offs(self) -> Mapping[str, str]:
        sole, takes_over = self._sole, self._takes_over
        roots: dict[str, str] = {}
        for step in [*sole, *takes_over]:
            path = []
            while step not in roots and step in takes_over:
                path.append(step)
                step = takes_over[step]
            root = roots.get(step, step)
            for seen in path:
                roots[seen] = root
            roots.setdefault(step, root)
        return roots

    def reader_task_types(self) -> Mapping[str, frozenset[str]]:
        """step -> the task types of the steps whose input reads its result."""
        return self._reader_task_types

    @cached_property
    def _reader_task_types(self) -> Mapping[str, frozenset[str]]:
        task_types = {s.name: s.task_type for s in self.steps if s.task_type is not None}
        return {name: frozenset(task_types[r] for r in readers if r in task_types) for name, readers in self._readers.items()}

    def final_steps(self) -> list[str]:
        return list(self._final_steps)

    @cached_property
    def _final_steps(self) -> tuple[str, ...]:
        deps = self.dependencies()
        upstream = frozenset().union(*deps.values()) if deps else frozenset()
        return tuple(s.name for s in self.steps if s.name not in upstream)


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


def result_reads(template: Any) -> list[tuple[str, list[str]]]:
    """``(step, path after the step's name)`` of every ``${steps.<name>...}`` reference in ``template``."""
    return [(ref[1], ref[2:]) for ref in step_refs(template) if ref[0] == "steps" and len(ref) > 1]


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


def resolve(
    template: Any, run_input: Mapping[str, Any], results: Mapping[str, Any], scope: Mapping[str, Any] | None = None
) -> Any:
    """Substitute references in ``template`` with values from the input and step results
    (and, in a map step, ``scope``: the element as ``item`` and its position as ``index``)."""
    ref = parse_ref(template)
    if ref is not None:
        if ref[0] == "input":
            return lookup(run_input, ref[1:], "run input")
        if scope is not None and ref[0] in scope:
            return lookup(scope[ref[0]], ref[1:], ref[0])
        name = ref[1]
        if name not in results:
            raise MissingValue(f"step {name!r} has no result")
        return lookup(results[name], ref[3:], f"result of step {name!r}")
    if isinstance(template, Mapping):
        return {k: resolve(v, run_input, results, scope) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve(v, run_input, results, scope) for v in template]
    return template


def map_items(step: StepSpec, run_input: Mapping[str, Any], results: Mapping[str, Any]) -> list[Any]:
    """The list a map step runs over; :class:`MissingValue` (naming the step) when it is absent or
    not a list, or longer than :data:`MAX_MAP_ITEMS`."""
    assert step.map is not None
    value = resolve(step.map.over, run_input, results)
    if not isinstance(value, list):
        raise MissingValue(f"map.over {step.map.over} is a {type(value).__name__}, not a list")
    if len(value) > MAX_MAP_ITEMS:
        raise MissingValue(f"map.over {step.map.over} has {len(value)} elements; at most {MAX_MAP_ITEMS} are allowed")
    return value


def concurrency_key(spec: WorkflowSpec, run_input: Mapping[str, Any]) -> str | None:
    """The run's concurrency key (``<workflow>:<value>``), or None when the workflow has no limit.
    :class:`MissingValue` when the key reads an input value that is absent or not a scalar."""
    if spec.concurrency is None:
        return None
    value = resolve(spec.concurrency.key, run_input, {})
    if isinstance(value, (dict, list)) or value is None:
        raise MissingValue(f"concurrency key {spec.concurrency.key} must be a string, number or boolean, not {value!r}")
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{spec.name}:{text}"


# --------------------------------------------------------------------------- validation


def _check_ref(where: str, ref: list[str], names: set[str], *, in_map: bool = False) -> str | None:
    if any(not _SEGMENT.match(seg) for seg in ref):
        return f"{where}: malformed reference '${{{'.'.join(ref)}}}'"
    if ref[0] == "input":
        return None
    if ref[0] in ITEM_ROOTS:
        if not in_map:
            return f"{where}: '${{{'.'.join(ref)}}}' is only defined in a map step"
        if ref[0] == "index" and len(ref) > 1:
            return f"{where}: '${{index}}' is a number and has no fields"
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


def _map_problems(where: str, step: StepSpec, names: set[str]) -> list[str]:
    if step.map is None:
        return []
    ref = parse_ref(step.map.over)
    if ref is None:
        return [f"{where}: map.over must be one reference (${{input.x}} or ${{steps.<name>.result.x}}), not {step.map.over!r}"]
    if ref[0] in ITEM_ROOTS:
        return [f"{where}: map.over cannot read {ref[0]}"]
    if ref[0] == "steps" and len(ref) > 1 and ref[1] == step.name:
        return [f"{where}: map.over reads its own result"]
    problem = _check_ref(f"{where} map.over", ref, names)
    return [problem] if problem else []


def _concurrency_problems(spec: WorkflowSpec) -> list[str]:
    if spec.concurrency is None or not spec.concurrency.key:
        return []
    ref = parse_ref(spec.concurrency.key)
    if ref is None:
        return [] if "${" not in spec.concurrency.key else [f"concurrency.key: malformed reference {spec.concurrency.key!r}"]
    if ref[0] != "input" or len(ref) < 2:
        return [f"concurrency.key: must read the run input (${{input.x}}), not {spec.concurrency.key!r}"]
    problem = _check_ref("concurrency.key", ref, set())
    return [problem] if problem else []


def validate_children(specs: Mapping[str, WorkflowSpec]) -> None:
    """Child workflow steps name a loaded workflow and never recurse (directly or through others).
    Raises :class:`WorkflowError` naming the workflow and step."""
    calls = {name: {s.workflow for s in spec.steps if s.workflow is not None} for name, spec in specs.items()}
    for name, spec in specs.items():
        problems = [
            f"step {s.name!r}: child workflow {s.workflow!r} is not defined (known: {sorted(specs)})"
            for s in spec.steps
            if s.workflow is not None and s.workflow not in specs
        ]
        if problems:
            raise WorkflowError(name, problems)
    cycle = find_cycle(calls)
    if cycle:
        first = specs[cycle[0]]
        step = next(s.name for s in first.steps if s.workflow == cycle[1])
        raise WorkflowError(cycle[0], [f"step {step!r}: child workflows recurse: {' -> '.join(cycle)}"])


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
        if known is not None and s.task_type is not None and s.task_type not in known:
            problems.append(f"{where}: unknown task type {s.task_type!r}")
        for dep in s.depends_on:
            if dep not in seen:
                problems.append(f"{where}: depends_on unknown step {dep!r}")
            if dep == s.name:
                problems.append(f"{where}: depends on itself")
        for ref in step_refs(s.input):
            problem = _check_ref(where, ref, seen, in_map=s.map is not None)
            if problem:
                problems.append(problem)
        problems.extend(_map_problems(where, s, seen))
        for key in ("sleep", "sleep_until"):
            for ref in step_refs(getattr(s, key)):
                problem = _check_ref(f"{where} {key}", ref, seen)
                if problem:
                    problems.append(problem)
        problems.extend(_condition_problems(where, s, set(names)))
    problems.extend(_concurrency_problems(spec))
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

    def __init__(
        self,
        name: str,
        description: str = "",
        *,
        input_model: type[BaseModel] | None = None,
        concurrency: ConcurrencySpec | Mapping[str, Any] | None = None,
        priority: int = 1,
    ) -> None:
        self.name = name
        self.description = description
        self._concurrency = concurrency
        self._priority = priority
        # A pydantic model declares the run input; it is kept as its JSON Schema (one check for both).
        self._input_schema = input_model.model_json_schema() if input_model is not None else None
        self._steps: list[dict[str, Any]] = []
        self._output: dict[str, Any] | None = None

    @staticmethod
    def input(path: str) -> str:
        return "${input." + path + "}"

    @staticmethod
    def item(path: str = "") -> str:
        """In a map step: the element being run (or a field of it)."""
        return "${item" + (f".{path}" if path else "") + "}"

    @staticmethod
    def index() -> str:
        """In a map step: the element's position in the list."""
        return "${index}"

    def step(
        self,
        name: str,
        task_type: str | None = None,
        input: Mapping[str, Any] | None = None,
        *,
        workflow: str | None = None,
        map: MapSpec | Mapping[str, Any] | None = None,
        sleep: str | float | None = None,
        sleep_until: str | float | None = None,
        wait_for: WaitForSpec | Mapping[str, Any] | None = None,
        depends_on: Iterable[StepRef | str] = (),
        timeout_s: float | None = None,
        retry: StepRetry | Mapping[str, Any] | None = None,
        on_failure: Literal["fail_run", "continue"] = "fail_run",
        when: str | None = None,
    ) -> StepRef:
        """A step running ``task_type``, or the child workflow ``workflow``; with ``map`` (e.g.
        ``{"over": wf.input("rows"), "max_parallel": 8}``) once per element of a list."""
        self._steps.append(
            {
                "name": name,
                "task_type": task_type,
                "workflow": workflow,
                "map": map,
                "sleep": sleep,
                "sleep_until": sleep_until,
                "wait_for": wait_for,
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
                "concurrency": self._concurrency,
                "priority": self._priority,
            }
        )
        validate(spec, known_task_types)
        return spec
