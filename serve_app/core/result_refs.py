"""Step results kept by reference: the marker stored and shown in their place.

A workflow step whose result is large (or not JSON at all: bytes, arrays) keeps
it in Ray's object store; the run store, the Coordinator and every listing see
only a small marker::

    {"$serveflow_ref": {"step": "make", "bytes": 104857600, "kind": "bytes"}}

The next step's worker receives the object reference beside its payload and
puts the value back where the marker stands (:func:`substitute`). A value whose
one reader is sent to the worker that made it stays in that worker's process
alone, and a plain-text name (:func:`local_handle`) travels in place of the
reference. Pure: nothing here touches Ray.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Mapping

from serve_app.core.errors import Unavailable

REF_KEY = "$serveflow_ref"
# The detail naming the step whose kept result a reader could not have: its producer is run again.
LOST_KEY = "lost_result"


def marker(nbytes: int, kind: str, step: str | None = None) -> dict[str, Any]:
    """The stand-in for a result of ``nbytes`` of ``kind`` ("json", "bytes" or "array")."""
    inner: dict[str, Any] = {"bytes": nbytes, "kind": kind}
    if step is not None:
        inner["step"] = step
    return {REF_KEY: inner}


def marker_of(value: Any) -> dict[str, Any] | None:
    """The inside of ``value`` when it is a marker, else None."""
    if isinstance(value, dict) and len(value) == 1:
        inner = value.get(REF_KEY)
        if isinstance(inner, dict):
            return inner
    return None


def step_of(value: Any) -> str | None:
    """The producing step named by a marker, or None."""
    inner = marker_of(value)
    step = inner.get("step") if inner is not None else None
    return step if isinstance(step, str) else None


# A result held in its maker's process alone is named by ``local:<replica id>:<random>``.
_LOCAL = "local:"


def local_handle(replica_id: str) -> str:
    """A new name for a result held in the process of worker replica ``replica_id`` alone (a
    one-to-one hand-off whose reader is sent to that replica): it travels where an object
    reference would, as plain text."""
    return f"{_LOCAL}{replica_id}:{uuid.uuid4().hex}"


def local_replica(handle: Any) -> str | None:
    """The replica holding the result named by ``handle``, or None when ``handle`` is not such
    a name (an object reference, say)."""
    if isinstance(handle, str) and handle.startswith(_LOCAL):
        replica, sep, _ = handle[len(_LOCAL) :].rpartition(":")
        return replica if sep and replica else None
    return None


def lost(step: str, why: str) -> Unavailable:
    """The error of a reader whose input, ``step``'s kept result, is gone."""
    return Unavailable(f"the result of step {step!r} {why}", details={LOST_KEY: step})


def lost_step(details: Mapping[str, Any]) -> str | None:
    """The step named by :func:`lost`'s error details, or None."""
    step = details.get(LOST_KEY)
    return step if isinstance(step, str) else None


def substitute(payload: Any, values: Mapping[str, Any]) -> Any:
    """``payload`` with every marker of a step in ``values`` replaced by that step's value.
    Containers are copied only along the paths that hold a marker."""
    step = step_of(payload)
    if step is not None and step in values:
        return values[step]
    if isinstance(payload, dict):
        out = {k: substitute(v, values) for k, v in payload.items()}
        return out if any(out[k] is not payload[k] for k in payload) else payload
    if isinstance(payload, list):
        items = [substitute(v, values) for v in payload]
        return items if any(a is not b for a, b in zip(items, payload, strict=True)) else payload
    return payload


def raw_size(value: Any) -> tuple[int, str] | None:
    """Size and kind of a value that is not JSON but can be kept by reference (bytes, buffers,
    NumPy-style arrays); None for anything else."""
    if isinstance(value, (bytes, bytearray)):
        return len(value), "bytes"
    if isinstance(value, memoryview):
        return value.nbytes, "bytes"
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int) and hasattr(value, "__array__"):
        return nbytes, "array"
    return None


def keep_decision(value: Any, threshold: int, render: Callable[[Any], str]) -> tuple[int, str] | None:
    """(size, kind) when ``value`` should be kept by reference under ``threshold`` bytes, else
    None. ``render`` gives a JSON value's text (its size is what a store would hold)."""
    raw = raw_size(value)
    if raw is not None:
        return raw
    if isinstance(value, (dict, list, str)):
        size = len(render(value).encode())
        if size > threshold:
            return size, "json"
    return None
