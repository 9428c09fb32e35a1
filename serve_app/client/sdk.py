"""Python client for serveflow's gRPC API (sync and async), hiding the stubs.

Both clients return the same :class:`~serve_app.core.models.TaskResult` envelope an
HTTP client gets, retry retryable failures with exponential backoff and jitter,
and ride out server restarts (gRPC channels reconnect on their own)::

    from serve_app.client import ServeflowClient

    with ServeflowClient("127.0.0.1:9000") as client:
        result = client.submit("echo", {"message": "hi"})
        print(result.success, result.result)
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import grpc

from serve_app.core import codec
from serve_app.core.errors import ErrorCode
from serve_app.core.models import Envelope, EventResult, RunResult, ScheduleResult, TaskResult
from serve_app.core.retry import Backoff
from serve_app.proto import serveflow_pb2 as pb
from serve_app.proto import serveflow_pb2_grpc as pb_grpc

T = TypeVar("T")
E = TypeVar("E", TaskResult, RunResult, ScheduleResult, EventResult)

# Codes where the task did not run (not_ready, overloaded) or its replica died (unavailable).
DEFAULT_RETRY_CODES = frozenset({ErrorCode.NOT_READY.value, ErrorCode.OVERLOADED.value, ErrorCode.UNAVAILABLE.value})


# An answer is taken whatever its size: the server did the work, and gRPC's default 4 MiB
# limit would turn a large result into a failure after the task ran.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries: which envelope codes, how often, how long between."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    retry_codes: frozenset[str] = field(default=DEFAULT_RETRY_CODES)

    def should_retry(self, result: Envelope, attempt: int) -> bool:
        return (
            attempt < self.max_attempts
            and result.error is not None
            and result.error.retryable
            and result.error.code in self.retry_codes
        )

    def backoff(self, attempt: int, result: Envelope) -> float:
        """Full-jitter exponential backoff, never shorter than the server's Retry-After."""
        floor = 0.0
        if result.error is not None:
            retry_after = result.error.details.get("retry_after_s")
            if isinstance(retry_after, (int, float)):
                floor = float(retry_after)
        backoff = Backoff(self.initial_backoff_s, self.max_backoff_s, self.multiplier, jitter=True)
        return backoff.delay(attempt, floor_s=floor)


def failure_from_rpc_error(err: grpc.RpcError, model: type[E], **known: Any) -> E:
    """The envelope for a failed RPC: the server's own (trailer), or one built from the status."""
    envelope = codec.from_trailers(err.trailing_metadata() if hasattr(err, "trailing_metadata") else None, model)
    if envelope is not None:
        return envelope
    status = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else None
    return model(success=False, error=codec.transport_failure(status, details), **known)


def _start_request(
    workflow: str,
    run_input: dict[str, Any] | None,
    idempotency_key: str | None,
    wait: bool,
    wait_timeout_s: float,
    priority: int | None,
) -> pb.StartRunRequest:
    return pb.StartRunRequest(
        workflow=workflow,
        input_json=json.dumps(run_input or {}),
        idempotency_key=idempotency_key or "",
        wait=wait,
        wait_timeout_s=wait_timeout_s,
        priority=priority or 0,
    )


def _signal_request(run_id: str, name: str, payload: Any, signal_id: str | None) -> pb.SignalRequest:
    return pb.SignalRequest(run_id=run_id, name=name, signal_id=signal_id or "", payload_json=json.dumps(payload))


def _list_request(status: str, workflow: str, limit: int, parent_run_id: str, before: float) -> pb.ListRunsRequest:
    return pb.ListRunsRequest(status=status, workflow=workflow, limit=limit, parent_run_id=parent_run_id, before=before)


class _Base:
    """Options shared by both clients; subclasses open their own kind of channel."""

    def __init__(
        self,
        target: str = "127.0.0.1:9000",
        *,
        application: str | None = None,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        deadline_grace_s: float = 5.0,
        default_deadline_s: float = 330.0,
    ) -> None:
        self.target = target
        self.retry = retry or RetryPolicy()
        self._grace = deadline_grace_s
        self._default_deadline = default_deadline_s
        metadata: list[tuple[str, str]] = []
        if application:
            metadata.append(("application", application))
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        self._metadata = tuple(metadata)

    def _request(
        self,
        task_type: str,
        payload: dict[str, Any] | None,
        task_id: str | None,
        timeout_s: float | None,
        idempotent: bool = False,
    ) -> tuple[pb.TaskRequest, float]:
        req = pb.TaskRequest(
            task_type=task_type,
            payload_json=json.dumps(payload or {}),
            task_id=task_id or uuid.uuid4().hex,  # one id across retries
            timeout_s=timeout_s or 0.0,
            idempotent=idempotent,
        )
        # The server answers a handler timeout with a structured envelope; give it time to.
        deadline = timeout_s + self._grace if timeout_s else self._default_deadline
        return req, deadline


class ServeflowClient(_Base):
    """Blocking client. Options as in :class:`AsyncServeflowClient`; ``sleep`` is for tests."""

    def __init__(self, target: str = "127.0.0.1:9000", *, sleep: Callable[[float], None] = time.sleep, **options: Any) -> None:
        super().__init__(target, **options)
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.TaskServiceStub(self._channel)
        self._sleep = sleep

    def submit(
        self,
        task_type: str,
        payload: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        timeout_s: float | None = None,
        idempotent: bool = False,
    ) -> TaskResult:
        """Run one task; returns its envelope (after retrying retryable failures).

        ``idempotent=True`` also lets the server re-send the task if its replica dies.
        """
        req, deadline = self._request(task_type, payload, task_id, timeout_s, idempotent)
        attempt = 0
        while True:
            attempt += 1
            try:
                result = codec.task_from_proto(self._stub.SubmitTask(req, timeout=deadline, metadata=self._metadata))
            except grpc.RpcError as err:
                result = failure_from_rpc_error(err, TaskResult, task_id=req.task_id, task_type=task_type)
            if not self.retry.should_retry(result, attempt):
                return result
            self._sleep(self.retry.backoff(attempt, result))

    def _rpc(self, method: Callable[..., Any], request: Any, timeout_s: float, decode: Callable[[Any], E], envelope: type[E]) -> E:
        """One unary call answered by an envelope; a transport failure becomes that envelope's failure."""
        try:
            return decode(method(request, timeout=timeout_s, metadata=self._metadata))
        except grpc.RpcError as err:
            return failure_from_rpc_error(err, envelope)

    def _run_rpc(self, method: Callable[..., Any], request: Any, timeout_s: float) -> RunResult:
        return self._rpc(method, request, timeout_s, codec.run_from_proto, RunResult)

    def start_run(
        self,
        workflow: str,
        run_input: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        wait: bool = False,
        wait_timeout_s: float = 60.0,
        priority: int | None = None,
    ) -> RunResult:
        """Start a workflow run; with ``wait`` the answer comes when it finishes (or at the timeout).
        ``priority`` (1-3, 3 first) orders it among queued runs and waiting steps."""
        req = _start_request(workflow, run_input, idempotency_key, wait, wait_timeout_s, priority)
        return self._run_rpc(self._stub.StartRun, req, wait_timeout_s + self._grace)

    def get_run(self, run_id: str, *, timeout_s: float = 10.0) -> RunResult:
        return self._run_rpc(self._stub.GetRun, pb.RunRequest(run_id=run_id), timeout_s)

    def cancel_run(self, run_id: str, *, timeout_s: float = 30.0) -> RunResult:
        return self._run_rpc(self._stub.CancelRun, pb.RunRequest(run_id=run_id), timeout_s)

    def list_runs(
        self,
        *,
        status: str = "",
        workflow: str = "",
        limit: int = 50,
        parent_run_id: str = "",
        before: float = 0.0,
        timeout_s: float = 10.0,
    ) -> RunResult:
        """Newest first; for the next page pass ``before`` = the last run's ``created_at``."""
        return self._run_rpc(self._stub.ListRuns, _list_request(status, workflow, limit, parent_run_id, before), timeout_s)

    def send_signal(
        self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None, timeout_s: float = 10.0
    ) -> RunResult:
        """Deliver signal ``name`` to a run; ``created`` is False when ``signal_id`` was seen before."""
        return self._run_rpc(self._stub.SendSignal, _signal_request(run_id, name, payload, signal_id), timeout_s)

    def _schedule_rpc(self, method: Callable[..., Any], name: str, timeout_s: float) -> ScheduleResult:
        return self._rpc(method, pb.ScheduleRequest(name=name), timeout_s, codec.schedule_from_proto, ScheduleResult)

    def _event_rpc(self, method: Callable[..., Any], request: Any, timeout_s: float) -> EventResult:
        return self._rpc(method, request, timeout_s, codec.event_from_proto, EventResult)

    def send_event(
        self, type: str, payload: Any = None, *, key: str | None = None, event_id: str | None = None, timeout_s: float = 10.0
    ) -> EventResult:
        """Append an event; ``created`` is False when ``event_id`` was appended before."""
        req = pb.EventRequest(type=type, key=key or "", id=event_id or "", payload_json=json.dumps(payload))
        return self._event_rpc(self._stub.AppendEvent, req, timeout_s)

    def list_events(self, *, type: str = "", after: int = 0, limit: int = 100, timeout_s: float = 10.0) -> EventResult:
        return self._event_rpc(self._stub.ListEvents, pb.ListEventsRequest(type=type, after=after, limit=limit), timeout_s)

    def list_dead_letters(self, *, subscription: str = "", limit: int = 100, timeout_s: float = 10.0) -> EventResult:
        req = pb.DeadLettersRequest(subscription=subscription, limit=limit)
        return self._event_rpc(self._stub.ListDeadLetters, req, timeout_s)

    def replay_dead_letter(self, subscription: str, seq: int, *, timeout_s: float = 30.0) -> EventResult:
        req = pb.DeadLettersRequest(subscription=subscription, seq=seq)
        return self._event_rpc(self._stub.ReplayDeadLetter, req, timeout_s)

    def list_schedules(self, *, timeout_s: float = 10.0) -> ScheduleResult:
        return self._schedule_rpc(self._stub.ListSchedules, "", timeout_s)

    def pause_schedule(self, name: str, *, timeout_s: float = 10.0) -> ScheduleResult:
        return self._schedule_rpc(self._stub.PauseSchedule, name, timeout_s)

    def resume_schedule(self, name: str, *, timeout_s: float = 10.0) -> ScheduleResult:
        return self._schedule_rpc(self._stub.ResumeSchedule, name, timeout_s)

    def trigger_schedule(self, name: str, *, timeout_s: float = 10.0) -> ScheduleResult:
        """Start a run of the schedule now; ``run_id`` names it."""
        return self._schedule_rpc(self._stub.TriggerSchedule, name, timeout_s)

    def status(self, *, timeout_s: float = 10.0) -> dict[str, Any]:
        """The service's status document (as GET /v1/status)."""
        reply = self._stub.GetStatus(pb.StatusRequest(), timeout=timeout_s, metadata=self._metadata)
        return dict(json.loads(reply.status_json))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServeflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncServeflowClient(_Base):
    """asyncio client (grpc.aio); same behaviour as :class:`ServeflowClient`.

    Options: ``application`` (Serve app to route to), ``retry`` (:class:`RetryPolicy`),
    ``token`` (bearer token), ``deadline_grace_s`` (extra wait beyond ``timeout_s``
    so the server's structured timeout arrives first), ``default_deadline_s``.
    """

    def __init__(self, target: str = "127.0.0.1:9000", **options: Any) -> None:
        super().__init__(target, **options)
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.TaskServiceStub(self._channel)

    async def submit(
        self,
        task_type: str,
        payload: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        timeout_s: float | None = None,
        idempotent: bool = False,
    ) -> TaskResult:
        req, deadline = self._request(task_type, payload, task_id, timeout_s, idempotent)
        attempt = 0
        while True:
            attempt += 1
            try:
                msg = await self._stub.SubmitTask(req, timeout=deadline, metadata=self._metadata)
                result = codec.task_from_proto(msg)
            except grpc.aio.AioRpcError as err:
                result = failure_from_rpc_error(err, TaskResult, task_id=req.task_id, task_type=task_type)
            if not self.retry.should_retry(result, attempt):
                return result
            await asyncio.sleep(self.retry.backoff(attempt, result))

    async def _run_rpc(self, method: Callable[..., Any], request: Any, timeout_s: float) -> RunResult:
        try:
            return codec.run_from_proto(await method(request, timeout=timeout_s, metadata=self._metadata))
        except grpc.aio.AioRpcError as err:
            return failure_from_rpc_error(err, RunResult)

    async def start_run(
        self,
        workflow: str,
        run_input: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        wait: bool = False,
        wait_timeout_s: float = 60.0,
        priority: int | None = None,
    ) -> RunResult:
        req = _start_request(workflow, run_input, idempotency_key, wait, wait_timeout_s, priority)
        return await self._run_rpc(self._stub.StartRun, req, wait_timeout_s + self._grace)

    async def get_run(self, run_id: str, *, timeout_s: float = 10.0) -> RunResult:
        return await self._run_rpc(self._stub.GetRun, pb.RunRequest(run_id=run_id), timeout_s)

    async def cancel_run(self, run_id: str, *, timeout_s: float = 30.0) -> RunResult:
        return await self._run_rpc(self._stub.CancelRun, pb.RunRequest(run_id=run_id), timeout_s)

    async def list_runs(
        self,
        *,
        status: str = "",
        workflow: str = "",
        limit: int = 50,
        parent_run_id: str = "",
        before: float = 0.0,
        timeout_s: float = 10.0,
    ) -> RunResult:
        return await self._run_rpc(
            self._stub.ListRuns, _list_request(status, workflow, limit, parent_run_id, before), timeout_s
        )

    async def send_signal(
        self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None, timeout_s: float = 10.0
    ) -> RunResult:
        return await self._run_rpc(self._stub.SendSignal, _signal_request(run_id, name, payload, signal_id), timeout_s)

    async def status(self, *, timeout_s: float = 10.0) -> dict[str, Any]:
        reply = await self._stub.GetStatus(pb.StatusRequest(), timeout=timeout_s, metadata=self._metadata)
        return dict(json.loads(reply.status_json))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncServeflowClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
