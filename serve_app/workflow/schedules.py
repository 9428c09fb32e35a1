"""Cron schedules: which ticks are due, and firing each exactly once across Coordinators.

A schedule starts a run of its workflow at every tick of its cron expression
(croniter; 5 fields, or 6 with seconds first), in its time zone. Every
Coordinator looks at the schedules once a second; a tick fires as a run whose
idempotency key is derived from the schedule and the tick, so however many
Coordinators fire it, and however often after a restart, it is one run. The
last tick handled is kept in the store (compare-and-set), so a restart neither
repeats ticks nor, with ``catch_up: none``, floods old ones:

- ``catch_up: none`` fires only a tick that is at most ``misfire_grace_s`` late;
- ``last`` fires the latest missed tick, however late; ``all`` every missed one
  (oldest first, at most ``max_catch_up``).

``overlap`` decides what happens while a run of the schedule is unfinished:
``skip`` the tick, ``allow`` another run, or ``queue`` it (a concurrency key of
the schedule's own, one run at a time, first in first out).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Callable, Literal, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.core.errors import Conflict, NotFound, ServeflowError
from serve_app.core.models import NAME_PATTERN

logger = logging.getLogger("serveflow.schedules")
KEY_PREFIX = "schedule."
QUEUE_PREFIX = "@schedule:"  # a concurrency key no workflow's can be ('@' is not in a name): one run at a time


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    workflow: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    cron: str = Field(min_length=1, max_length=200, description="5 fields (minute first), or 6 with seconds first.")
    timezone: str = Field("UTC", description="IANA zone the cron reads in, e.g. Europe/Berlin.")
    input: dict[str, Any] = Field(default_factory=dict, description="The run input of every tick.")
    overlap: Literal["skip", "allow", "queue"] = "skip"
    catch_up: Literal["none", "last", "all"] = "none"
    misfire_grace_s: float = Field(60.0, gt=0, le=86400, description="How late a tick may fire with catch_up: none.")
    max_catch_up: int = Field(100, ge=1, le=10000, description="With catch_up: all, at most this many missed ticks.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(value, second_at_beginning=True):
            raise ValueError(f"{value!r} is not a cron expression")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone (IANA name such as Europe/Berlin)") from None
        return value

    def ticks_after(self, after: float, until: float, limit: int) -> list[float]:
        """Tick times in ``(after, until]``, oldest first, at most ``limit``."""
        from croniter import croniter

        it = croniter(self.cron, datetime.fromtimestamp(after, ZoneInfo(self.timezone)), second_at_beginning=True)
        out: list[float] = []
        while len(out) < limit:
            tick = float(it.get_next(float))
            if tick > until:
                break
            out.append(tick)
        return out

    def next_after(self, now: float) -> float:
        from croniter import croniter

        start = datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        return float(croniter(self.cron, start, second_at_beginning=True).get_next(float))

    def due(self, last_tick: float, now: float) -> tuple[list[float], float | None]:
        """The ticks to fire now and the new last tick (None: nothing became due)."""
        limit = self.max_catch_up if self.catch_up == "all" else 100_000
        missed = self.ticks_after(last_tick, now, limit)
        if not missed:
            return [], None
        if self.catch_up == "all":
            return missed, missed[-1]
        latest = missed[-1]
        if self.catch_up == "last" or now - latest <= self.misfire_grace_s:
            return [latest], latest
        return [], latest  # too late for catch_up: none; the ticks are passed over

    def run_key(self, tick: float) -> str:
        """The idempotency key of the run of ``tick``: one run per tick, whoever fires it."""
        return f"{KEY_PREFIX}{self.name}.{int(tick * 1000)}"


def schedule_problems(schedules: list[ScheduleSpec], workflows: Mapping[str, Any]) -> list[str]:
    """What is wrong with the schedules at deploy time (each names its schedule)."""
    problems = []
    seen: set[str] = set()
    for s in schedules:
        if s.name in seen:
            problems.append(f"schedule {s.name!r} is defined more than once")
        seen.add(s.name)
        if s.workflow not in workflows:
            problems.append(f"schedule {s.name!r}: unknown workflow {s.workflow!r}")
    return problems


class ScheduleRunner:
    """Fires due ticks; called once a second by every Coordinator (safe to run on all of them)."""

    def __init__(
        self,
        schedules: list[ScheduleSpec],
        store: Any,
        start: Callable[..., Any],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._schedules = {s.name: s for s in schedules}
        self._store = store
        self._start = start  # RunEngine.start
        self._clock = clock

    @property
    def names(self) -> list[str]:
        return sorted(self._schedules)

    def spec(self, name: str) -> ScheduleSpec:
        if name not in self._schedules:
            raise NotFound(f"no schedule {name!r}", details={"schedules": self.names})
        return self._schedules[name]

    async def tick(self) -> list[str]:
        """Fire what is due; returns the run ids started (or found, when another Coordinator was first)."""
        if not self._schedules:
            return []
        now = self._clock()
        states = await self._store.schedule_states()
        started = []
        for name, spec in self._schedules.items():
            paused, last = states.get(name, (False, None))
            if last is None:  # first sight: from now on (no history before the schedule existed)
                await self._store.init_schedule(name, now)
                continue
            if paused:
                continue
            ticks, new_last = spec.due(last, now)
            if new_last is None:
                continue
            if not await self._store.advance_schedule(name, last, new_last):
                continue  # another Coordinator handled these ticks
            for tick in ticks:
                run_id = await self._fire(spec, tick)
                if run_id:
                    started.append(run_id)
        return started

    async def _fire(self, spec: ScheduleSpec, tick: float, *, key: str | None = None) -> str | None:
        if spec.overlap == "skip" and await self._store.unfinished_with_key_prefix(f"{KEY_PREFIX}{spec.name}."):
            logger.info("schedule %s: tick %s skipped, a run of it is unfinished", spec.name, tick)
            return None
        queue = f"{QUEUE_PREFIX}{spec.name}" if spec.overlap == "queue" else None
        try:
            run, _ = await self._start(spec.workflow, spec.input, idempotency_key=key or spec.run_key(tick), concurrency=queue)
        except ServeflowError as exc:  # e.g. the input no longer matches the workflow's schema
            logger.error("schedule %s: tick %s could not start a run: %s", spec.name, tick, exc.message)
            return None
        return str(run.run_id)

    async def trigger(self, name: str) -> str:
        """Start a run of the schedule now, outside its ticks (overlap still applies)."""
        spec = self.spec(name)
        now = self._clock()
        run_id = await self._fire(spec, now, key=f"{KEY_PREFIX}{spec.name}.manual.{int(now * 1000)}")
        if run_id is None:
            raise Conflict(f"schedule {name!r} has an unfinished run and overlap is skip", details={"schedule": name})
        return run_id

    async def set_paused(self, name: str, paused: bool) -> None:
        self.spec(name)
        await self._store.init_schedule(name, self._clock())
        await self._store.set_schedule_paused(name, paused)
        if not paused:  # resumed: from now on, per catch_up (none: nothing from the pause)
            states = await self._store.schedule_states()
            last = states.get(name, (False, None))[1]
            spec = self._schedules[name]
            if spec.catch_up == "none" and last is not None:
                await self._store.advance_schedule(name, last, max(last, self._clock()))

    async def describe(self) -> list[dict[str, Any]]:
        now = self._clock()
        states = await self._store.schedule_states()
        out = []
        for name, spec in sorted(self._schedules.items()):
            paused, last = states.get(name, (False, None))
            out.append(
                {
                    "name": name,
                    "workflow": spec.workflow,
                    "cron": spec.cron,
                    "timezone": spec.timezone,
                    "overlap": spec.overlap,
                    "catch_up": spec.catch_up,
                    "paused": paused,
                    "last_tick": last,
                    "next_fire": None if paused else spec.next_after(max(now, last or now)),
                }
            )
        return out
