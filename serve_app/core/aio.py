"""asyncio helpers that depend on the Python version."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """``await awaitable``, or cancel it and raise ``asyncio.TimeoutError`` after ``timeout_s``.

    Where Python has ``asyncio.timeout`` (3.11+) the awaitable runs in the caller's task:
    ``asyncio.wait_for`` gives it a task of its own there, which costs a call on a hot path
    two extra turns of the event loop (one to start it, one to hand back its result)."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, timeout_s)
    async with timeout(timeout_s):
        return await awaitable
