"""within(): a timeout that does not give the awaited call a task of its own (Python 3.11+)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from serve_app.core.aio import within

pytestmark = pytest.mark.anyio


async def test_within_returns_the_value_in_the_callers_task() -> None:
    outer = asyncio.current_task()

    async def where() -> object:
        return asyncio.current_task()

    task = await within(where(), 1.0)
    if sys.version_info >= (3, 11):
        assert task is outer  # no extra task: no extra turns of the loop
    else:
        assert task is not None


async def test_within_cancels_what_it_waits_for_and_raises_timeout() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(asyncio.TimeoutError):
        await within(slow(), 0.05)
    assert cancelled.is_set()
