"""A supervised periodic background task.

Deployments refresh state in the background. If that loop dies or stalls the
replica is lying about its state, so :meth:`PeriodicTask.problem` feeds
``check_health``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

logger = logging.getLogger("serveflow.loops")

# How long after a replica starts its readiness loops may hurry (poll faster until every part is ready).
STARTUP_HURRY_S = 60.0


class PeriodicTask:
    """Runs ``step`` every ``interval_s`` seconds; exceptions are logged, not fatal.

    ``hurry`` (optional) is asked after each step: while it says True the next step comes after
    ``hurry_interval_s`` instead (a replica that is starting polls faster until it has its answer).
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[None]],
        interval_s: float,
        *,
        stall_after_s: float,
        hurry: Callable[[], bool] | None = None,
        hurry_interval_s: float = 0.1,
    ) -> None:
        self.name = name
        self._step = step
        self._interval = interval_s
        self._hurry = hurry
        self._hurry_interval = min(hurry_interval_s, interval_s)
        self._stall_after = stall_after_s
        self._task: asyncio.Task[None] | None = None
        self.last_tick: float | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        if self._task is None:
            self.last_tick = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("%s step failed: %s", self.name, self.last_error, exc_info=exc)
            self.last_tick = time.monotonic()
            await asyncio.sleep(self._hurry_interval if self._hurry is not None and self._hurry() else self._interval)

    def problem(self) -> str | None:
        """Why this loop is not doing its job, or None."""
        if self._task is None:
            return f"{self.name} loop not started"
        if self._task.done():
            return f"{self.name} loop exited"
        if self.last_tick is not None and time.monotonic() - self.last_tick > self._stall_after:
            return f"{self.name} loop stalled for {time.monotonic() - self.last_tick:.1f}s"
        return None
