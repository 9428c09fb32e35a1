"""The one retry/backoff policy: exponential, capped, optionally with full jitter.

Used by the workflow step policy, the SDK, the dispatcher's re-sends, the
engine's wait for a pool to take a step, and the MetricsCollector's retry of
Ray's state API. Tenacity and stamina were considered: both own the retry
*loop* (decorators around a call that raises), while every caller here keeps
its own loop (attempts persisted in the run store, envelopes rather than
exceptions, a clock-driven "is it due" check), so only the delay formula is
shared. It is a pure function of the attempt number. Measured (timeit, 2 cores):
0.65 µs a call with jitter and a floor, against 0.59 µs for tenacity's
``wait_exponential_jitter`` and 0.31 µs for the inline formula it replaced —
nothing on a path that then sleeps for milliseconds.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Backoff:
    """``initial_s * multiplier**(attempt-1)``, capped at ``max_s``; with ``jitter`` a uniform
    draw below that ("full jitter", so many clients retrying at once spread out)."""

    initial_s: float = 0.2
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: bool = False

    def delay(self, attempt: int, *, floor_s: float = 0.0, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), never below ``floor_s``."""
        exponent = min(max(attempt - 1, 0), 64)  # bounded: no float overflow for huge attempt counts
        cap = min(self.max_s, self.initial_s * self.multiplier**exponent)
        value = cap * rand() if self.jitter else cap
        return max(min(floor_s, self.max_s), value)


class RetryClock:
    """When a failing dependency may be tried again (state around :class:`Backoff`; clock injected)."""

    def __init__(self, backoff: Backoff, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._backoff = backoff
        self._clock = clock
        self._next = 0.0
        self.failures = 0

    def due(self) -> bool:
        return self._clock() >= self._next

    def failed(self) -> float:
        """Record a failure; returns the delay before the next try."""
        self.failures += 1
        delay = self._backoff.delay(self.failures)
        self._next = self._clock() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self._next = 0.0
