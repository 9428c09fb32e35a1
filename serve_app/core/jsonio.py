"""The one JSON parse path, and the rule for what may be stored and rendered.

Every JSON document that enters serveflow (an HTTP body, a gRPC ``*_json``
field) goes through :func:`decode`; every value a handler returns goes through
:func:`check_value`. Both refuse what some JSON parser or encoder down the line
would choke on, *before* anything is stored:

- invalid UTF-8, syntax errors, duplicate object keys;
- ``NaN``/``Infinity`` and numbers that overflow a double or a 64-bit integer;
- nesting deeper than :data:`MAX_DEPTH` (Python's parser raises RecursionError
  long before it says "invalid", and renderers recurse too);
- strings with unpaired surrogates (``"\\ud800"`` parses, but cannot be encoded
  as UTF-8, so the answer or a later listing would fail).

:func:`repair` is the read-side twin for rows written before these rules.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

from serve_app.core.errors import InvalidRequest, PayloadTooLarge, ServeflowError

MAX_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


class Refused(ValueError):
    """Why a JSON document or value is not acceptable (message names the problem)."""


def check_size(size: int, limit: int) -> None:
    """The one size check for request bodies and JSON fields of every protocol."""
    if size > limit:
        raise PayloadTooLarge.over(limit)


def _constant(name: str) -> Any:
    raise Refused(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise Refused(f"number {text[:40]} overflows a double")
    return value


def _int(text: str) -> int:
    # Checked on the text first: int() of 5,000 digits is slow and then refused anyway.
    if len(text.lstrip("-")) > 20 or not INT_MIN <= (value := int(text)) <= INT_MAX:
        raise Refused(f"integer {text[:40]} is outside the 64-bit range")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise Refused(f"duplicate key {dup[:40]!r}")
    return doc


def decode(raw: bytes | str, *, what: str = "request body") -> Any:
    """Parse ``raw`` strictly; anything unacceptable is :class:`InvalidRequest` naming ``what``."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"{what} is not valid UTF-8") from None
    text = raw.removeprefix("\ufeff")
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int, object_pairs_hook=_object)
        check_value(value)
    except Refused as exc:
        raise InvalidRequest(f"{what}: {exc}") from None
    except RecursionError:
        raise InvalidRequest(f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise InvalidRequest(f"{what} is not valid JSON", details={"position": getattr(exc, "pos", None)}) from None
    return value


def _problem(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a string contains an unpaired surrogate"
    elif isinstance(value, bool) or value is None:
        return None
    elif isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            return "an integer is outside the 64-bit range"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return f"{value} is not a JSON number"
    elif not isinstance(value, (dict, list)):
        return f"{type(value).__name__} is not a JSON type"
    return None


def check_value(value: Any) -> None:
    """Raise :class:`Refused` unless ``value`` is plain JSON every encoder renders (iterative walk)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        problem = _problem(item)
        if problem:
            raise Refused(problem)
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise Refused(f"nested more than {MAX_DEPTH} levels deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise Refused(f"object key {key!r} is not a string")
                    stack.append((key, depth))
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def checked(value: Any, error: Callable[[str], ServeflowError]) -> Any:
    """``value`` if :func:`check_value` accepts it, else ``error(reason)`` raised."""
    try:
        check_value(value)
    except Refused as exc:
        raise error(str(exc)) from None
    return value


def dumps(value: Any) -> str:
    """The one encoder for stored and rendered JSON (compact; refuses NaN)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def repair(value: Any) -> Any:
    """A renderable copy of a value read back from storage: unpaired surrogates become U+FFFD,
    non-finite numbers null. Rows written before :func:`check_value` guarded writes may hold them;
    a read must never fail because of one stored value."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {repair(k): repair(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repair(v) for v in value]
    return value


def load_stored(raw: str | None) -> Any:
    """Decode a JSON column; never raises for content this module once let through."""
    if raw is None:
        return None
    return repair(json.loads(raw))
