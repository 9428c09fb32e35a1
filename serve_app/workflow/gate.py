"""A bounded number of step tasks in flight, handed out by priority.

Every step (and map element) the engine sends to a pool takes a slot first.
While slots are free nothing waits; once they are all taken (the pools are
saturated), waiting steps get the next free slot highest priority first, then
first come first served. A waiter that is cancelled leaves the line; a slot
granted to a waiter that was cancelled at the same moment is passed on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from contextlib import asynccontextmanager
from typing import AsyncIterator


class PriorityGate:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._free = capacity
        self._line: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, fut in self._line if not fut.done())

    @property
    def in_use(self) -> int:
        return self.capacity - self._free

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._free > 0:  # free slots imply nobody live is waiting (a release serves the line first)
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._line, (-priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # granted as we were cancelled: pass the slot on
            raise

    def _release(self) -> None:
        while self._line:
            _, _, fut = heapq.heappop(self._line)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1
