"""Handlers for the results-by-reference tests (loaded by name, like any handler module)."""

from __future__ import annotations

import time
from typing import Any

from serve_app.core.errors import HandlerError
from serve_app.runtime.handlers import handler

calls: dict[str, int] = {}


@handler("blob_once")
def blob_once(payload: dict[str, Any]) -> bytes:
    """``size`` bytes the first time for ``key``; fails every later call (a producer that cannot be
    made again)."""
    key = payload["key"]
    calls[key] = calls.get(key, 0) + 1
    if calls[key] > 1:
        raise HandlerError(f"{key} can be made only once")
    return bytes(payload["size"])


@handler("big_json")
def big_json(payload: dict[str, Any]) -> dict[str, Any]:
    """A JSON result of about ``size`` bytes."""
    return {"text": "x" * payload["size"]}


@handler("text_length")
def text_length(payload: dict[str, Any]) -> dict[str, Any]:
    """Reads a big_json result whole."""
    return {"length": len(payload["doc"]["text"])}


@handler("blob_echo")
def blob_echo(payload: dict[str, Any]) -> bytes:
    """The bytes it was given (a result read by reference, passed on as a new one)."""
    return bytes(payload["data"])


@handler("blob_flaky")
def blob_flaky(payload: dict[str, Any]) -> dict[str, Any]:
    """Fails its first call for ``key``, then gives the length of ``data`` (a reader to retry)."""
    key = payload["key"]
    calls[key] = calls.get(key, 0) + 1
    if calls[key] == 1:
        raise HandlerError(f"{key}: first call fails")
    return {"bytes": len(payload["data"])}


@handler("busy")
def busy(payload: dict[str, Any]) -> dict[str, Any]:
    """Keeps its replica's one slot for ``seconds``."""
    time.sleep(payload["seconds"])
    return {}
