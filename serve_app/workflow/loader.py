"""Load workflow definitions from config, YAML files and Python modules (at deploy time)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from serve_app.core.errors import ServeflowError
from serve_app.runtime.config import WorkflowsConfig
from serve_app.workflow.inputs import InputSchema
from serve_app.workflow.schedules import ScheduleSpec, schedule_problems
from serve_app.workflow.subscriptions import SubscriptionSpec, subscription_problems
from serve_app.workflow.spec import Workflow, WorkflowError, WorkflowSpec, validate, validate_children


def _from_dict(doc: Any, origin: str) -> WorkflowSpec:
    try:
        return WorkflowSpec.model_validate(doc)
    except ValidationError as exc:
        name = doc.get("name", "?") if isinstance(doc, dict) else "?"
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'definition'}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise WorkflowError(str(name), [f"({origin}) {p}" for p in problems]) from None


def _from_file(path: str) -> list[WorkflowSpec]:
    text = Path(path).expanduser().read_text()
    doc = yaml.safe_load(text)
    docs = doc.get("workflows", [doc]) if isinstance(doc, dict) else doc
    if not isinstance(docs, list):
        raise WorkflowError(path, ["file must hold a workflow, a list of workflows, or {workflows: [...]}"])
    return [_from_dict(d, path) for d in docs]


def _from_module(name: str, known: set[str] | None) -> list[WorkflowSpec]:
    module = importlib.import_module(name)
    specs = []
    for value in vars(module).values():
        if isinstance(value, WorkflowSpec):
            specs.append(value)
        elif isinstance(value, Workflow):
            specs.append(value.build(known))
    return specs


M = TypeVar("M", bound=BaseModel)


def _models(docs: list[dict[str, Any]], model: type[M], what: str) -> tuple[list[M], list[str]]:
    """Config documents validated into ``model``; the problems name each one (``what 'name': field: why``)."""
    out, problems = [], []
    for i, doc in enumerate(docs):
        try:
            out.append(model.model_validate(doc))
        except ValidationError as exc:
            name = doc.get("name", f"#{i}") if isinstance(doc, dict) else f"#{i}"
            problems += [
                f"{what} {name!r}: {'.'.join(str(p) for p in e['loc']) or 'definition'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            ]
    return out, problems


def load_schedules(config: WorkflowsConfig, workflows: Mapping[str, WorkflowSpec]) -> list[ScheduleSpec]:
    """The configured schedules, validated (cron, time zone, workflow, input); WorkflowError names each."""
    schedules, problems = _models(config.schedules, ScheduleSpec, "schedule")
    problems += schedule_problems(schedules, workflows)
    for s in schedules:
        spec = workflows.get(s.workflow)
        if spec is not None and spec.input_schema is not None:
            try:
                InputSchema(s.workflow, spec.input_schema).check(s.input)
            except ServeflowError as exc:
                problems.append(f"schedule {s.name!r}: input: {exc.message}")
    if problems:
        raise WorkflowError("schedules", problems)
    return schedules


def load_subscriptions(
    config: WorkflowsConfig, workflows: Mapping[str, WorkflowSpec], task_types: Iterable[str]
) -> list[SubscriptionSpec]:
    """The configured event subscriptions, validated; WorkflowError names each one at fault."""
    subs, problems = _models(config.subscriptions, SubscriptionSpec, "subscription")
    problems += subscription_problems(subs, workflows, set(task_types))
    if problems:
        raise WorkflowError("subscriptions", problems)
    return subs


def load_workflows(config: WorkflowsConfig, known_task_types: Iterable[str]) -> dict[str, WorkflowSpec]:
    """Every configured workflow, validated against the routed task types.

    Raises :class:`WorkflowError` (a ValueError) naming the workflow and step at fault.
    """
    known = set(known_task_types)
    specs: list[WorkflowSpec] = [_from_dict(d, "serve_config definitions") for d in config.definitions]
    for path in config.files:
        specs.extend(_from_file(path))
    for module in config.modules:
        specs.extend(_from_module(module, known))
    out: dict[str, WorkflowSpec] = {}
    for spec in specs:
        if spec.name in out:
            raise WorkflowError(spec.name, ["defined more than once"])
        validate(spec, known)
        out[spec.name] = spec
    validate_children(out)
    return out
