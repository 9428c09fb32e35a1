"""The MetricsCollector never crashes: without Ray's dashboard (state API) it falls back to local metrics."""

from __future__ import annotations

import httpx


def test_metrics_collector_degrades_to_local_metrics(http: httpx.Client) -> None:
    # The test cluster runs without the dashboard, so Ray's state API is not available.
    status = http.get("/v1/status").json()
    metrics = status["components"]["MetricsCollector"]
    assert metrics["status"] == "degraded", metrics
    assert "state API unavailable" in metrics["error"]
    assert metrics["details"]["reported"]["details"]["source"] == "local"
    assert status["deployments"]["MetricsCollector"]["status"] == "HEALTHY"
    assert status["status"] == "degraded"  # honest: one component is running on its fallback
