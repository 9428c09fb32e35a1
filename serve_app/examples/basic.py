"""Everyday example handlers: echo, sleep, and one that fails on purpose."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from serve_app.core.errors import HandlerError, ServeflowError
from serve_app.runtime.handlers import HandlerErrorContext, handler


class EchoIn(BaseModel):
    message: str = Field(max_length=100_000)


@handler("echo")
def echo(inp: EchoIn) -> dict[str, Any]:
    """Return the message unchanged."""
    return {"message": inp.message}


@handler("noop")
async def noop(payload: dict[str, Any]) -> None:
    """Do nothing (used by benchmarks to measure pure overhead)."""
    return None


class SleepIn(BaseModel):
    seconds: float = Field(ge=0, le=3600)


@handler("sleep")
async def sleep(inp: SleepIn) -> dict[str, float]:
    """Sleep asynchronously, then report how long."""
    await asyncio.sleep(inp.seconds)
    return {"slept": inp.seconds}


class FailIn(BaseModel):
    message: str = "failed on purpose"
    retryable: bool = False


class DeliberateFailure(RuntimeError):
    pass


def _classify_failure(ctx: HandlerErrorContext) -> ServeflowError | None:
    """Error hook: let the caller decide whether this failure is retryable."""
    if isinstance(ctx.exception, DeliberateFailure) and ctx.payload.get("retryable"):
        return HandlerError(str(ctx.exception), retryable=True, details={"hook": "fail"})
    return None


@handler("fail", handle_error=_classify_failure)
def fail(inp: FailIn) -> None:
    """Always raise; the error hook marks it retryable when asked to."""
    raise DeliberateFailure(inp.message)
