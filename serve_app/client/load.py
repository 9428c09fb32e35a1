"""A bounded load generator over HTTP or gRPC (``serveflow load``).

Every request ends in exactly one bucket: ``ok``, ``structured`` (an error
envelope, by code), ``transport`` (no envelope: connection refused/reset...),
or ``hung`` (no answer within the per-request timeout). ``lost`` is whatever is
in none of them and must be 0. The run stops by itself: after ``count``
requests, or when ``duration_s`` is up.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import httpx

from serve_app.client.sdk import AsyncServeflowClient, RetryPolicy


@dataclass(frozen=True)
class LoadConfig:
    target: str  # http://host:port for HTTP, host:port for gRPC
    protocol: Literal["http", "grpc"] = "http"
    task_type: str = "echo"
    payload: dict[str, Any] = field(default_factory=lambda: {"message": "load"})
    count: int | None = 100
    continuous: bool = False
    interval_s: float = 0.1
    workers: int = 4
    duration_s: float = 60.0
    request_timeout_s: float = 30.0
    task_timeout_s: float | None = None
    idempotent: bool = False
    token: str | None = None
    application: str | None = None


@dataclass
class LoadReport:
    sent: int = 0
    ok: int = 0
    structured: Counter[str] = field(default_factory=Counter)
    transport: Counter[str] = field(default_factory=Counter)
    hung: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def answered(self) -> int:
        return self.ok + sum(self.structured.values()) + sum(self.transport.values()) + self.hung

    @property
    def lost(self) -> int:
        return self.sent - self.answered

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "structured_errors": dict(self.structured),
            "transport_errors": dict(self.transport),
            "hung": self.hung,
            "lost": self.lost,
            "p50_ms": self.percentile(50),
            "p99_ms": self.percentile(99),
            "throughput_rps": self.sent / self.elapsed_s if self.elapsed_s else 0.0,
            "elapsed_s": self.elapsed_s,
        }

    def line(self) -> str:
        errors = sum(self.structured.values())
        return f"sent={self.sent} ok={self.ok} errors={errors} transport={sum(self.transport.values())} hung={self.hung}"


Sender = Callable[[], "asyncio.Future[tuple[str, str | None]]"]


class _HttpSender:
    def __init__(self, cfg: LoadConfig) -> None:
        headers = {"authorization": f"Bearer {cfg.token}"} if cfg.token else {}
        self._client = httpx.AsyncClient(base_url=cfg.target, timeout=cfg.request_timeout_s, headers=headers)
        body: dict[str, Any] = {"task_type": cfg.task_type, "payload": cfg.payload, "idempotent": cfg.idempotent}
        if cfg.task_timeout_s:
            body["timeout_s"] = cfg.task_timeout_s
        self._body = json.dumps(body).encode()

    async def send(self) -> tuple[str, str | None]:
        try:
            r = await self._client.post("/v1/tasks", content=self._body, headers={"content-type": "application/json"})
        except httpx.TimeoutException:
            return "hung", None
        except httpx.HTTPError as exc:
            return "transport", type(exc).__name__
        try:
            doc = r.json()
        except ValueError:
            return "transport", f"non_envelope_{r.status_code}"
        if isinstance(doc, dict) and doc.get("success") is True:
            return "ok", None
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            return "structured", str(doc["error"].get("code"))
        return "transport", f"non_envelope_{r.status_code}"

    async def close(self) -> None:
        await self._client.aclose()


class _GrpcSender:
    def __init__(self, cfg: LoadConfig) -> None:
        self._cfg = cfg
        # No client-side retries: the load tool counts what the server answers.
        self._client = AsyncServeflowClient(
            cfg.target,
            application=cfg.application,
            token=cfg.token,
            retry=RetryPolicy(max_attempts=1),
            default_deadline_s=cfg.request_timeout_s,
            deadline_grace_s=max(0.0, cfg.request_timeout_s - (cfg.task_timeout_s or 0.0)),
        )

    async def send(self) -> tuple[str, str | None]:
        res = await self._client.submit(
            self._cfg.task_type, self._cfg.payload, timeout_s=self._cfg.task_timeout_s, idempotent=self._cfg.idempotent
        )
        if res.success:
            return "ok", None
        assert res.error is not None
        if res.error.details.get("transport"):
            if res.error.details.get("grpc_status") == "DEADLINE_EXCEEDED":
                return "hung", None
            return "transport", str(res.error.details.get("grpc_status"))
        return "structured", res.error.code

    async def close(self) -> None:
        await self._client.close()


async def run_load(cfg: LoadConfig, *, progress: Callable[[LoadReport], None] | None = None) -> LoadReport:
    """Send load as configured; always returns within about ``duration_s + request_timeout_s``."""
    sender: _HttpSender | _GrpcSender = _HttpSender(cfg) if cfg.protocol == "http" else _GrpcSender(cfg)
    report = LoadReport()
    started = time.monotonic()
    deadline = started + cfg.duration_s
    budget = {"left": cfg.count if (cfg.count is not None and not cfg.continuous) else None}

    def take() -> bool:
        if time.monotonic() >= deadline:
            return False
        if budget["left"] is None:
            return True
        if budget["left"] <= 0:
            return False
        budget["left"] -= 1
        return True

    async def worker() -> None:
        while take():
            report.sent += 1
            t0 = time.perf_counter()
            kind, detail = await sender.send()
            latency = (time.perf_counter() - t0) * 1000.0
            if kind == "ok":
                report.ok += 1
                report.latencies_ms.append(latency)
            elif kind == "structured":
                report.structured[detail or "?"] += 1
                report.latencies_ms.append(latency)
            elif kind == "transport":
                report.transport[detail or "?"] += 1
            else:
                report.hung += 1
            if cfg.continuous:
                await asyncio.sleep(cfg.interval_s)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.5)
            if progress is not None:
                progress(report)

    tick = asyncio.ensure_future(ticker())
    try:
        await asyncio.gather(*[worker() for _ in range(cfg.workers)])
    finally:
        tick.cancel()
        await sender.close()
    report.elapsed_s = time.monotonic() - started
    if progress is not None:
        progress(report)
    return report


def progress_bar(total: int | None, out: Any) -> Callable[[LoadReport], None]:
    """A one-line progress display on ``out`` (stderr)."""

    def show(report: LoadReport) -> None:
        if total:
            done = min(report.answered, total)
            filled = int(30 * done / total)
            bar = "#" * filled + "-" * (30 - filled)
            out.write(f"\r[{bar}] {done}/{total} {report.line()}")
        else:
            out.write(f"\r{report.line()}")
        out.flush()

    return show
