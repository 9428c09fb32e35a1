"""Handlers that misbehave on purpose, for fault-injection tests and demos.

Load this module only into a pool meant for it: ``crash`` kills its replica's
process, ``hang`` occupies a thread past any deadline.
"""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel, Field

from serve_app.core.errors import HandlerError
from serve_app.runtime.handlers import handler


class HangIn(BaseModel):
    seconds: float = Field(60.0, ge=0, le=3600)


@handler("hang")
def hang(inp: HangIn) -> dict[str, float]:
    """Block a worker thread (simulates a call stuck in native code)."""
    time.sleep(inp.seconds)
    return {"slept": inp.seconds}


class CrashIn(BaseModel):
    exit_code: int = Field(1, ge=1, le=255)


@handler("crash")
def crash(inp: CrashIn) -> None:
    """Kill this replica's process at once (simulates a segfault)."""
    os._exit(inp.exit_code)


@handler("whoami")
def whoami(payload: dict) -> dict[str, int]:
    """The process id of the replica that ran the task."""
    return {"pid": os.getpid()}


class StallIn(BaseModel):
    seconds: float = Field(1.0, ge=0, le=600)


@handler("stall")
async def stall(inp: StallIn) -> dict[str, float]:
    """Hold a request slot without blocking (fills queues for backpressure tests)."""
    await asyncio.sleep(inp.seconds)
    return {"stalled": inp.seconds}


class FlakyIn(BaseModel):
    key: str = Field(min_length=1, max_length=200)
    fail_times: int = Field(1, ge=0, le=100)


_flaky_calls: dict[str, int] = {}


@handler("flaky")
def flaky(inp: FlakyIn) -> dict[str, int]:
    """Fail (retryably) the first ``fail_times`` calls for ``key`` in this replica, then succeed."""
    calls = _flaky_calls[inp.key] = _flaky_calls.get(inp.key, 0) + 1
    if calls <= inp.fail_times:
        raise HandlerError(f"flaky failure {calls} of {inp.fail_times}", retryable=True)
    return {"calls": calls}


class BlockIn(BaseModel):
    seconds: float = Field(30.0, ge=0, le=600)


@handler("block_loop")
async def block_loop(inp: BlockIn) -> dict[str, float]:
    """An async handler that wrongly blocks its event loop (the replica cannot even answer health checks)."""
    time.sleep(inp.seconds)
    return {"blocked": inp.seconds}


class RecordIn(BaseModel):
    path: str
    key: str
    step: str = ""
    seconds: float = Field(0.0, ge=0, le=60)


@handler("record")
async def record(inp: RecordIn) -> dict[str, object]:
    """Append ``key.step`` to the file at ``path`` (one line per execution, any node of this
    machine), then sleep: lets a fault test count how often each step really ran."""
    line = f"{inp.key}.{inp.step}" if inp.step else inp.key
    with open(inp.path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    await asyncio.sleep(inp.seconds)
    return {"key": line, "pid": os.getpid()}
