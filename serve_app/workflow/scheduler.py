"""Which steps of a run can start, kept up to date per change.

The engine tells the scheduler when a step ends; the scheduler answers with the
steps that became ready (every upstream step succeeded) and those that became
blocked (an upstream step failed, was skipped or cancelled: they are skipped,
and so are their own dependants). Each answer costs what changed: a counter of
unmet upstream steps per step, touched only for the dependants of the step that
ended, so a chain of 1,000 steps or a join over 4,096 costs O(1) per completion
instead of a rescan of the whole DAG. Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from serve_app.workflow.state import StepStatus

BLOCKING = frozenset({StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED})


@dataclass
class Changes:
    """What one update made startable or skippable (each in the workflow's step order)."""

    ready: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(self, order: Iterable[str], deps: Mapping[str, Iterable[str]], statuses: Mapping[str, StepStatus]) -> None:
        self._order = {name: i for i, name in enumerate(order)}
        self._dependants: dict[str, list[str]] = {name: [] for name in self._order}
        self._unmet: dict[str, int] = {}
        for name in self._order:
            upstream = set(deps.get(name, ()))
            self._unmet[name] = len(upstream)
            for d in upstream:
                self._dependants[d].append(name)
        self._status = dict(statuses)
        self._started: set[str] = set()

    def start(self) -> Changes:
        """Apply the statuses known at start (a resumed run) and return what can run now.
        A step recorded as running was in flight when its previous owner stopped: it runs again."""
        changes = Changes()
        for name in self._order:
            status = self._status[name]
            if status.terminal:
                self._propagate(name, status, changes)
        for name in self._order:
            if not self._status[name].terminal and self._unmet[name] == 0 and name not in self._started:
                changes.ready.append(name)
        return self._mark(changes)

    def finished(self, name: str, status: StepStatus) -> Changes:
        """Step ``name`` ended with ``status``: what that made ready or skipped."""
        assert status.terminal, status
        self._status[name] = status
        changes = Changes()
        self._propagate(name, status, changes)
        return self._mark(changes)

    def _propagate(self, name: str, status: StepStatus, changes: Changes) -> None:
        stack = [(name, status)]
        while stack:
            current, st = stack.pop()
            for d in self._dependants[current]:
                if self._status[d].terminal or d in self._started:
                    continue
                if st in BLOCKING:
                    self._status[d] = StepStatus.SKIPPED
                    changes.skipped.append(d)
                    stack.append((d, StepStatus.SKIPPED))
                elif st is StepStatus.SUCCEEDED:
                    self._unmet[d] -= 1
                    if self._unmet[d] == 0:
                        changes.ready.append(d)

    def _mark(self, changes: Changes) -> Changes:
        changes.ready = sorted(set(changes.ready) - set(changes.skipped), key=self._order.__getitem__)
        changes.skipped.sort(key=self._order.__getitem__)
        self._started.update(changes.ready)
        return changes
