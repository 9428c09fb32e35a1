"""Health bookkeeping and roll-up, free of Ray.

:class:`ComponentTracker` turns a stream of observations (probe answers, probe
failures, Serve's own deployment state) into an honest status with the last
error and since when. :func:`rollup` combines components into one overall state.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any, Callable, Iterable, Mapping

from serve_app.core.models import ComponentStatus, HealthState

Clock = Callable[[], float]

# Serve deployment states (DeploymentStatus values) that mean "cannot serve".
_SERVE_FAILED = {"UNHEALTHY", "DEPLOY_FAILED"}
_MAX_ERROR_CHARS = 500


def summarize(text: str | None) -> str | None:
    """What of an error text may be shown to clients: its first line and, when it carries a Python
    traceback (Serve's deployment messages do), the exception that ended it: never the frames,
    which stay in the logs."""
    if not text:
        return text
    head, *trace = re.split(r"\s*Traceback \(most recent call last\):?", text, maxsplit=1)
    first = head.strip().splitlines()[0].strip() if head.strip() else ""
    raised = ""
    if trace:
        # The frames are indented ("  File ..."); the exception line that ends them is not.
        lines = [line.strip() for line in trace[0].splitlines() if line.strip() and not line.startswith((" ", "\t"))]
        raised = lines[-1] if lines else ""
    summary = " ".join(part for part in (first, raised) if part) or "see the replica's logs"
    return summary[:_MAX_ERROR_CHARS]


def deployment_states(details: Mapping[str, Any], app_name: str) -> dict[str, dict[str, Any]]:
    """Serve's view of every deployment of ``app_name``, from the controller's instance details
    as Serve hands them out (the JSON of its REST API, ``ServeInstanceDetails``): state, message,
    replicas by state and the target replica count (autoscaling's current goal).

    Read as JSON, not rebuilt as Serve's pydantic models: that rebuild pickles every
    deployment's request router class again, which was 40 % of an idle OrganismManager's CPU."""
    app = (details.get("applications") or {}).get(app_name)
    if not app:
        return {}
    states: dict[str, dict[str, Any]] = {}
    for name, d in (app.get("deployments") or {}).items():
        replicas: dict[str, int] = {}
        for replica in d.get("replicas") or ():
            state = _value(replica.get("state"))
            replicas[state] = replicas.get(state, 0) + 1
        states[name] = {
            "status": _value(d.get("status", "")),
            "message": summarize(d.get("message")) or "",
            "replica_states": replicas,
            "target_replicas": d.get("target_num_replicas"),
        }
    return states


def _value(state: Any) -> str:
    """An enum member's value (Serve's details hold its str enums, not their text), or the text."""
    return str(getattr(state, "value", state))


class ComponentTracker:
    """Tracks one component (a pool, the metrics collector, ...)."""

    def __init__(self, name: str, *, clock: Clock = time.time) -> None:
        self.name = name
        self._clock = clock
        self._state = HealthState.INITIALIZING
        self._since = clock()
        self._error: str | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._ever_healthy = False
        self._reported: dict[str, Any] = {}
        self._serve: dict[str, Any] = {}

    @property
    def state(self) -> HealthState:
        return self._state

    @property
    def ready(self) -> bool:
        """Can take requests (healthy, or degraded but serving)."""
        return self._state in (HealthState.HEALTHY, HealthState.DEGRADED)

    def observe_report(self, report: Mapping[str, Any]) -> None:
        """A ``get_status()`` answer from the component itself."""
        self._reported = dict(report)
        state = HealthState(report.get("status", HealthState.UNHEALTHY.value))
        self._set(self._combine(state, report.get("error")), report.get("error"))

    def observe_failure(self, error: str) -> None:
        """The component could not be asked (timeout, unavailable, died)."""
        self._reported = {}
        state = HealthState.UNHEALTHY if self._ever_healthy else HealthState.INITIALIZING
        self._set(self._combine(state, error), error)

    def observe_scaled_to_zero(self) -> None:
        """Autoscaling took the pool to zero replicas: nothing to probe (a probe would start one),
        and ready: its next request starts a replica and waits for it, bounded by its deadline."""
        self._reported = {"scaled_to_zero": True}
        self._set(self._combine(HealthState.HEALTHY, None), None)

    def observe_serve(self, status: str, message: str, replica_states: Mapping[str, int]) -> None:
        """Serve's view of the deployment (from ``serve.status()``)."""
        self._serve = {"status": status, "message": summarize(message), "replica_states": dict(replica_states)}
        if self._state is not HealthState.INITIALIZING:
            self._set(self._combine(self._state, self._error), self._error)

    def _combine(self, state: HealthState, error: str | None) -> HealthState:
        serve_status = self._serve.get("status")
        if serve_status in _SERVE_FAILED and state is HealthState.HEALTHY:
            # The probed replica is fine but Serve sees failing replicas.
            return HealthState.DEGRADED
        return state

    def _set(self, state: HealthState, error: str | None) -> None:
        error = summarize(error)
        now = self._clock()
        if state is not self._state:
            self._state = state
            self._since = now
        if state is HealthState.HEALTHY:
            self._ever_healthy = True
        if error:
            self._last_error, self._last_error_at = error, now
        elif self._serve.get("status") in _SERVE_FAILED and self._serve.get("message"):
            error = self._serve["message"]
        self._error = error if state is not HealthState.HEALTHY else None

    def snapshot(self) -> ComponentStatus:
        details: dict[str, Any] = {
            "reported": self._reported,
            "serve": self._serve,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
        }
        return ComponentStatus(name=self.name, status=self._state, error=self._error, since=self._since, details=details)


def rollup(components: Iterable[ComponentStatus]) -> HealthState:
    """Overall state: healthy only if every part is; unhealthy if none serves."""
    states = [c.status for c in components]
    if not states or all(s is HealthState.INITIALIZING for s in states):
        return HealthState.INITIALIZING
    if all(s is HealthState.HEALTHY for s in states):
        return HealthState.HEALTHY
    if all(s in (HealthState.UNHEALTHY, HealthState.INITIALIZING) for s in states):
        return HealthState.UNHEALTHY
    return HealthState.DEGRADED


def coordinator_state(
    *, loop_problem: str | None, store_error: str | None, readiness_error: str | None
) -> tuple[HealthState, str | None]:
    """A Coordinator's own state. A dead or stalled loop makes it unhealthy (Serve replaces it);
    a run store that is away only degrades it: restarting the replica would not bring the
    database back, and tasks, reads of the status and health keep working meanwhile."""
    if loop_problem:
        return HealthState.UNHEALTHY, loop_problem
    if store_error:
        return HealthState.DEGRADED, f"run store unavailable: {store_error}"
    return HealthState.HEALTHY, readiness_error


class ChangeFeed:
    """The latest value of something and a version that moves only when it changes.

    Readers long-poll: :meth:`read` answers at once when the reader's version is not the
    latest, and otherwise waits (bounded) for the next change. A stable value then costs one
    call per ``wait_s`` instead of one per poll interval, and a change reaches every reader
    as soon as it is published. A version is ``<incarnation>.<count>``: a feed made again (its
    replica restarted) never repeats one, so a reader holding an old version is answered at once."""

    def __init__(self) -> None:
        self._incarnation = uuid.uuid4().hex[:12]
        self._count = 0
        self.value: Any = None
        self._changed = asyncio.Event()

    @property
    def version(self) -> str:
        return f"{self._incarnation}.{self._count}"

    def publish(self, value: Any) -> bool:
        """Record ``value``; returns whether it differs from the last one (and wakes readers)."""
        if self._count and value == self.value:
            return False
        self.value, self._count = value, self._count + 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def read(self, since: str | None = None, wait_s: float = 0.0) -> tuple[str, Any]:
        """``(version, value)``: now if ``since`` is not the latest version, else after the next
        change or ``wait_s`` seconds, whichever comes first."""
        if since == self.version and wait_s > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        return self.version, self.value
