"""Event subscriptions: deliver the event log to workflows or task types, at least once.

A subscription reads the events of its types in log order from its own durable
position. One Coordinator at a time delivers it (a lease in the store); after a
crash the next one starts from the recorded position, so an event whose delivery
was not yet recorded is delivered again (at-least-once). A workflow delivery
starts a run with the event as input under an idempotency key derived from the
subscription and the event id, so a repeated delivery finds the same run; a
task delivery sends the event's payload to the task type. Delivery is serial per
subscription, hence in order (per key as well). A failed delivery is retried with
backoff; after ``max_attempts`` (or at once, for an error that cannot succeed on
retry, such as a payload the workflow refuses) the event goes to the dead
letters and the subscription moves on. Each subscription runs on its own, so one
that fails never holds up another. Dead letters can be listed and replayed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.core.errors import Conflict, NotFound, ServeflowError, ValidationFailed
from serve_app.core.models import NAME_PATTERN, ErrorInfo, TaskRequest, TaskResult
from serve_app.core.retry import Backoff
from serve_app.workflow.store import Event, RunStore

logger = logging.getLogger("serveflow.events")


class SubscriptionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=48, pattern=NAME_PATTERN)
    types: list[str] = Field(min_length=1, description="Event types delivered (exact names).")
    workflow: str | None = Field(None, description="Start a run of this workflow with the event as input.")
    task_type: str | None = Field(None, description="Run this task type with the event's payload (a JSON object).")
    max_attempts: int = Field(5, ge=1, le=100, description="Failed deliveries before the event goes to the dead letters.")
    backoff_s: float = Field(1.0, ge=0, le=3600, description="First wait after a failed delivery (doubles each time).")
    batch: int = Field(50, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_target(self) -> SubscriptionSpec:
        if (self.workflow is None) == (self.task_type is None):
            raise ValueError("a subscription delivers to exactly one of workflow or task_type")
        return self

    @property
    def target(self) -> str:
        return f"workflow:{self.workflow}" if self.workflow else f"task:{self.task_type}"


def subscription_problems(subs: list[SubscriptionSpec], workflows: Mapping[str, Any], task_types: set[str]) -> list[str]:
    problems, seen = [], set()
    for s in subs:
        if s.name in seen:
            problems.append(f"subscription {s.name!r} is defined more than once")
        seen.add(s.name)
        if s.workflow is not None and s.workflow not in workflows:
            problems.append(f"subscription {s.name!r}: unknown workflow {s.workflow!r}")
        if s.task_type is not None and s.task_type not in task_types:
            problems.append(f"subscription {s.name!r}: unknown task type {s.task_type!r}")
    return problems


class SubscriptionRunner:
    """Delivers every subscription; called about once a second by every Coordinator."""

    def __init__(
        self,
        subs: list[SubscriptionSpec],
        store: RunStore,
        start_run: Callable[..., Awaitable[Any]],
        submit: Callable[[TaskRequest], Awaitable[TaskResult]],
        *,
        owner: str,
        lease_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._subs = {s.name: s for s in subs}
        self._store = store
        self._start_run = start_run
        self._submit = submit
        self._owner = owner
        self._lease_s = lease_s
        self._clock = clock
        self.delivered = 0  # deliveries made here (tests count them)
        self._rounds: dict[str, asyncio.Task[None]] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._subs)

    async def append(self, type: str, payload: Any, *, key: str | None = None, event_id: str | None = None) -> tuple[Event, bool]:
        return await self._store.append_event(event_id or uuid.uuid4().hex, type, key, payload, self._clock())

    async def tick(self) -> None:
        """Start a delivery round for every subscription whose last round is over. Rounds are not
        awaited here: a subscription whose deliveries are slow never delays another's."""
        for name, spec in self._subs.items():
            current = self._rounds.get(name)
            if current is None or current.done():
                self._rounds[name] = asyncio.get_running_loop().create_task(self._run(spec), name=f"subscription-{name}")

    async def drain(self) -> None:
        """Wait for the rounds in flight (tests, and a Coordinator shutting down)."""
        await asyncio.gather(*self._rounds.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in self._rounds.values():
            task.cancel()
        await self.drain()

    async def _run(self, spec: SubscriptionSpec) -> None:
        try:
            await self._deliver_due(spec)
        except Exception:  # one subscription's trouble stays its own
            logger.warning("subscription %s: delivery round failed", spec.name, exc_info=True)

    async def _deliver_due(self, spec: SubscriptionSpec) -> None:
        state = await self._store.claim_subscription(spec.name, self._owner, self._lease_s)
        if state is None:
            return  # another Coordinator delivers it
        position, attempts, retry_at = state
        if self._clock() < retry_at:
            return
        for event in await self._store.read_events(position, spec.types, spec.batch):
            error = await self.deliver(spec, event)
            if error is None:
                position, attempts = event.seq, 0
                if not await self._store.advance_subscription(spec.name, self._owner, position, 0, 0.0, None):
                    return  # the lease went elsewhere
                continue
            attempts += 1
            if attempts >= spec.max_attempts or not error.retryable:
                await self._store.add_dead_letter(spec.name, event.seq, attempts, error, self._clock())
                logger.warning("subscription %s: event %s to the dead letters: %s", spec.name, event.event_id, error.message)
                position, attempts = event.seq, 0
                if not await self._store.advance_subscription(spec.name, self._owner, position, 0, 0.0, None):
                    return
                continue
            retry = self._clock() + Backoff(spec.backoff_s, max(spec.backoff_s, 300.0)).delay(attempts)
            await self._store.advance_subscription(spec.name, self._owner, position, attempts, retry, error.message)
            return  # in order: nothing after it goes before it is delivered (or dead)

    async def deliver(self, spec: SubscriptionSpec, event: Event) -> ErrorInfo | None:
        """One delivery; the error if it failed."""
        self.delivered += 1
        doc = event.public()
        try:
            if spec.workflow is not None:
                await self._start_run(spec.workflow, doc, idempotency_key=f"event.{spec.name}.{event.event_id}")
                return None
            if not isinstance(event.payload, dict):
                raise ValidationFailed(f"subscription {spec.name!r} sends the payload to a task: it must be a JSON object")
            result = await self._submit(
                TaskRequest(task_type=str(spec.task_type), payload=event.payload, task_id=f"event.{spec.name}.{event.event_id}")
            )
            return None if result.success else result.error
        except ServeflowError as exc:
            return ErrorInfo.from_error(exc)

    async def replay(self, subscription: str, seq: int) -> dict[str, Any]:
        """Deliver a dead letter again; it stays listed (marked replayed) either way."""
        spec = self._subs.get(subscription)
        if spec is None:
            raise NotFound(f"no subscription {subscription!r}", details={"subscriptions": self.names})
        letters = await self._store.list_dead_letters(subscription, 1, seq=seq)
        if not letters:
            raise NotFound(f"no dead letter {seq} for subscription {subscription!r}")
        letter = letters[0]
        ev = letter["event"]
        event = Event(ev["seq"], ev["id"], ev["type"], ev["key"], ev["payload"], ev["appended_at"])
        error = await self.deliver(spec, event)
        if error is not None:
            await self._store.add_dead_letter(subscription, seq, letter["attempts"] + 1, error, self._clock())
            raise Conflict(f"replay of event {ev['id']} failed again: {error.message}", details={"error": error.model_dump(mode="json")})
        await self._store.mark_replayed(subscription, seq, self._clock())
        return {**letter, "replayed_at": self._clock()}

    async def describe(self) -> list[dict[str, Any]]:
        out = []
        for name, spec in sorted(self._subs.items()):
            position, lag = await self._store.subscription_lag(name, spec.types)
            out.append({"name": name, "types": spec.types, "target": spec.target, "position": position, "lag": lag})
        return out
