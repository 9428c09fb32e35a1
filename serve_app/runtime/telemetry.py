"""Task outcome accounting, free of Ray.

The Dispatcher reports every task to a :class:`TaskObserver`. :class:`TaskStats`
keeps in-process counters (shown in /v1/status); the Coordinator adds an
observer that feeds ``ray.serve.metrics`` for Prometheus.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, Protocol, Sequence


class TaskObserver(Protocol):
    def inflight(self, pool: str, delta: int) -> None:
        """A task was sent to (+1) or came back from (-1) ``pool``."""

    def finished(self, task_type: str, outcome: str, latency_ms: float) -> None:
        """A task ended with ``outcome`` ('success' or an error code)."""


class TaskStats:
    """Counts per (task type, outcome), in-flight per pool, latency per task type."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = defaultdict(int)
        self._inflight: dict[str, int] = defaultdict(int)
        self._latency: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # count, sum, max

    def inflight(self, pool: str, delta: int) -> None:
        with self._lock:
            self._inflight[pool] += delta

    def finished(self, task_type: str, outcome: str, latency_ms: float) -> None:
        with self._lock:
            self._counts[(task_type, outcome)] += 1
            lat = self._latency[task_type]
            lat[0] += 1
            lat[1] += latency_ms
            lat[2] = max(lat[2], latency_ms)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            by_type: dict[str, dict[str, int]] = defaultdict(dict)
            for (task_type, outcome), n in sorted(self._counts.items()):
                by_type[task_type][outcome] = n
            return {
                "outcomes": dict(by_type),
                "inflight": {pool: n for pool, n in sorted(self._inflight.items())},
                "latency_ms": {
                    t: {"count": int(c), "mean": s / c if c else 0.0, "max": m} for t, (c, s, m) in sorted(self._latency.items())
                },
            }


class FanOut:
    """Reports to several observers."""

    def __init__(self, observers: Sequence[TaskObserver]) -> None:
        self._observers = list(observers)

    def inflight(self, pool: str, delta: int) -> None:
        for o in self._observers:
            o.inflight(pool, delta)

    def finished(self, task_type: str, outcome: str, latency_ms: float) -> None:
        for o in self._observers:
            o.finished(task_type, outcome, latency_ms)
