"""Task metrics exported through ray.serve.metrics (reaches Ray's Prometheus endpoint)."""

from __future__ import annotations

from ray.serve import metrics

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]


class ServeMetricsObserver:
    """A TaskObserver that records Prometheus metrics (deployment/replica tags are added by Serve)."""

    def __init__(self) -> None:
        self._tasks = metrics.Counter(
            "serveflow_tasks_total", description="Tasks finished, by type and outcome.", tag_keys=("task_type", "outcome")
        )
        self._latency = metrics.Histogram(
            "serveflow_task_latency_ms",
            description="End-to-end task latency at the Coordinator.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("task_type",),
        )
        self._inflight = metrics.Gauge(
            "serveflow_inflight_tasks", description="Tasks sent to a pool and not yet answered.", tag_keys=("pool",)
        )
        self._runs = metrics.Gauge("serveflow_active_runs", description="Workflow runs executing in this Coordinator.")
        self._lag = metrics.Gauge(
            "serveflow_subscription_lag", description="Events of a subscription's types not yet delivered.", tag_keys=("subscription",)
        )
        self._counts: dict[str, int] = {}

    def inflight(self, pool: str, delta: int) -> None:
        # Counted here, exported by publish(): a gauge set costs about as much as the rest of
        # a task's bookkeeping, and twice per task it showed in the ingress profile.
        self._counts[pool] = self._counts.get(pool, 0) + delta

    def publish(self) -> None:
        """Export the in-flight gauges (the lease loop calls it; one per pool)."""
        for pool, n in self._counts.items():
            self._inflight.set(n, tags={"pool": pool})

    def finished(self, task_type: str, outcome: str, latency_ms: float) -> None:
        self._tasks.inc(tags={"task_type": task_type, "outcome": outcome})
        self._latency.observe(latency_ms, tags={"task_type": task_type})

    def active_runs(self, n: int) -> None:
        self._runs.set(n)

    def subscription_lag(self, subscription: str, lag: int) -> None:
        self._lag.set(lag, tags={"subscription": subscription})
