"""Task outcome accounting, free of Ray.

The Dispatcher reports every task to a :class:`TaskObserver`. :class:`TaskStats`
keeps in-process counters (shown in /v1/status); the Coordinator adds an
observer that feeds ``ray.serve.metrics`` for Prometheus.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Any, Callable, Protocol, Sequence

HISTORY_BUCKET_S = 10.0
HISTORY_BUCKETS = 60  # ten minutes


class TaskObserver(Protocol):
    def inflight(self, pool: str, delta: int) -> None:
        """A task was sent to (+1) or came back from (-1) ``pool``."""

    def finished(self, task_type: str, outcome: str, latency_ms: float) -> None:
        """A task ended with ``outcome`` ('success' or an error code)."""


class TaskStats:
    """Counts per (task type, outcome), in-flight per pool, latency per task type, and the last
    ten minutes in 10-second buckets (throughput and latency over time, for the console)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._counts: dict[tuple[str, str], int] = defaultdict(int)
        self._inflight: dict[str, int] = defaultdict(int)
        self._latency: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # count, sum, max
        # [bucket start, tasks, failed, latency sum, latency max], oldest first
        self._history: deque[list[float]] = deque(maxlen=HISTORY_BUCKETS)

    def inflight(self, pool: str, delta: int) -> None:
        with self._lock:
            self._inflight[pool] += delta

    def finished(self, task_type: str, outcome: str, latency_ms: float) -> None:
        start = self._clock() // HISTORY_BUCKET_S * HISTORY_BUCKET_S
        with self._lock:
            self._counts[(task_type, outcome)] += 1
            lat = self._latency[task_type]
            lat[0] += 1
            lat[1] += latency_ms
            lat[2] = max(lat[2], latency_ms)
            if not self._history or self._history[-1][0] != start:
                self._history.append([start, 0, 0, 0.0, 0.0])
            bucket = self._history[-1]
            bucket[1] += 1
            bucket[2] += outcome != "success"
            bucket[3] += latency_ms
            bucket[4] = max(bucket[4], latency_ms)

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
                "history": self._recent(),
            }

    def _recent(self) -> dict[str, Any]:
        """Buckets of the last ten minutes (empty ones included, so the series has no gaps)."""
        now = self._clock() // HISTORY_BUCKET_S * HISTORY_BUCKET_S
        by_start = {b[0]: b for b in self._history}
        buckets = []
        for i in range(HISTORY_BUCKETS - 1, -1, -1):
            start = now - i * HISTORY_BUCKET_S
            _, n, failed, total, worst = by_start.get(start, (start, 0, 0, 0.0, 0.0))
            buckets.append(
                {"start": start, "tasks": int(n), "failed": int(failed), "mean_ms": total / n if n else None, "max_ms": worst if n else None}
            )
        return {"bucket_s": HISTORY_BUCKET_S, "buckets": buckets}


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
