"""``when:`` conditions on steps: JMESPath expressions, never ``eval``.

A condition reads ``input.*`` (the run input) and ``steps.<name>.result.*``
(an upstream result, which makes ``<name>`` a dependency), with JMESPath's
comparisons (``==``, ``<``...), ``&&``, ``||``, ``!`` and functions such as
``contains()``. Syntax errors and references to unknown steps are caught at
deploy time, naming the step. At run time every value the condition reads must
exist: a missing one fails the step with a structured error rather than
silently reading as null. The value's truth follows JMESPath: false, null, "",
[] and {} are false; everything else (0 included) is true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import jmespath
from jmespath.exceptions import JMESPathError

ROOTS = ("input", "steps")


class ConditionError(ValueError):
    """A condition that cannot be used (syntax, or what it reads)."""


# Nodes whose first child is read from the document they apply to, and whose later children
# are evaluated against each element (or the left result): only the first names a root path.
_LEFT_THEN_RELATIVE = {"projection", "value_projection", "filter_projection", "index_expression", "flatten"}


def _leading(node: Mapping[str, Any]) -> list[str]:
    """The field path a path-like node starts with (``input.items[*].sku`` -> [input, items])."""
    kind = node.get("type")
    if kind == "field":
        return [node["value"]]
    if kind == "subexpression":
        chain: list[str] = []
        for child in node["children"]:
            chain += _leading(child)
            if child.get("type") != "field":
                break  # what follows is relative to a projection or an index
        return chain
    if kind in _LEFT_THEN_RELATIVE and node.get("children"):
        return _leading(node["children"][0])
    return []


def _paths(node: Mapping[str, Any]) -> Iterator[list[str]]:
    """The field paths an expression reads from its root document."""
    kind = node.get("type")
    if kind == "field" or kind == "subexpression" or kind in _LEFT_THEN_RELATIVE:
        chain = _leading(node)
        if chain:
            yield chain
        return
    if kind == "expref":  # &expr arguments (sort_by...) apply to elements
        return
    children = node.get("children", [])
    if kind == "pipe":  # the right side reads the left side's result
        children = children[:1]
    for child in children:
        if isinstance(child, Mapping):
            yield from _paths(child)


@dataclass(frozen=True)
class Condition:
    expression: str
    paths: tuple[tuple[str, ...], ...]

    @property
    def steps(self) -> set[str]:
        """The upstream steps it reads (dependencies of the step that carries it)."""
        return {p[1] for p in self.paths if p[0] == "steps" and len(p) > 1}

    def evaluate(self, run_input: Mapping[str, Any], results: Mapping[str, Any]) -> bool:
        """The condition's truth; :class:`MissingValue` (from the spec module) names a value that is not there."""
        from serve_app.workflow.spec import MissingValue, lookup

        doc = {"input": run_input, "steps": {name: {"result": value} for name, value in results.items()}}
        for path in self.paths:
            if path[0] == "steps" and len(path) > 1 and path[1] not in results:
                raise MissingValue(f"step {path[1]!r} has no result")
            lookup(doc, list(path), "when")
        value = jmespath.search(self.expression, doc)
        return not (value is None or value is False or value in ("", [], {}))


def compile_condition(expression: str) -> Condition:
    """Parse ``expression``; :class:`ConditionError` says what is wrong with it."""
    try:
        parsed = jmespath.compile(expression).parsed
    except JMESPathError as exc:
        raise ConditionError(f"is not a valid JMESPath expression: {str(exc).splitlines()[0]}") from None
    paths = tuple(tuple(p) for p in _paths(parsed))
    for path in paths:
        if path[0] not in ROOTS:
            raise ConditionError(f"reads {'.'.join(path)!r}: a condition reads only input.* and steps.<name>.result.*")
        if path[0] == "steps" and (len(path) < 3 or path[2] != "result"):
            raise ConditionError(f"reads {'.'.join(path)!r}: a step is read as steps.<name>.result[.x]")
    return Condition(expression, paths)
