"""Typed run input: a workflow's JSON Schema, checked before a run is created."""

from __future__ import annotations

import re
from typing import Any, Mapping

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaViolation

from serve_app.core.errors import ValidationFailed

_MAX_MESSAGE = 300


def _location(error: SchemaViolation) -> list[str]:
    path = ["input", *(str(p) for p in error.absolute_path)]
    if error.validator == "required":
        # jsonschema reports one error per missing property, at the parent object: name the property.
        missing = re.match(r"^'(.+)' is a required property$", error.message)
        if missing:
            path.append(missing.group(1))
    return path


class InputSchema:
    """A compiled input schema; :meth:`check` raises ``validation_error`` naming each field at fault."""

    def __init__(self, workflow: str, schema: Mapping[str, Any]) -> None:
        self._workflow = workflow
        self._validator = Draft202012Validator(dict(schema))

    def check(self, run_input: Mapping[str, Any]) -> None:
        errors = sorted(self._validator.iter_errors(dict(run_input)), key=lambda e: [str(p) for p in e.absolute_path])
        if not errors:
            return
        details = [{"loc": _location(e), "msg": e.message[:_MAX_MESSAGE], "type": str(e.validator)} for e in errors[:20]]
        first = details[0]
        raise ValidationFailed(
            f"run input does not match the input schema of {self._workflow!r}: "
            f"{'.'.join(first['loc'])}: {first['msg']}",
            details={"errors": details},
        )
