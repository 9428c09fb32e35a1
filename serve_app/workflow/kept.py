"""The results of one run kept by reference, while an engine drives the run.

A step whose result is large (or not JSON) keeps it in Ray's object store: its
worker answers with a marker (stored as the step's result) and an object
reference, which only the driving engine holds, in memory. The next step's
worker gets the reference and reads the value straight from the object store,
so it never passes through the Coordinator or the database.

A value whose one reader is in the maker's pool stays in the maker's process
alone (no copy in the object store): the worker answers with a name of it
(``result_refs.local_handle``) in place of the reference, and the reader's call
goes to that replica.

Durability: a reference lives as long as the worker that made the value (and
its node) and this engine's hold on it, which ends once every step that reads it
is done (succeeded or skipped). When the run stops being driven here
(it ends, parks, its Coordinator restarts or loses the lease) the references
go, and the objects with them. A step that needs a result that is gone has its
producer run again first (:meth:`RunEngine._remake`): at-least-once, like any
step in flight at a crash.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping

from serve_app.core import result_refs
from serve_app.core.models import TaskResult
from serve_app.workflow.spec import StepSpec, WorkflowSpec

# Lost upstream results are made again at most this often for one step attempt.
MAX_REMAKES = 3


class KeptResults:
    """Object references of one run's results, by producing step."""

    def __init__(self, spec: WorkflowSpec, threshold: int) -> None:
        self.spec = spec  # the definition the run is driven by (a producer is made again from it)
        self._threshold = threshold
        self._passable = spec.passable_by_reference()
        # step -> the steps whose results its input reads (ordering alone needs no value)
        self._reads = spec.input_reads()
        self._read = spec.read_by_steps()
        self._reader_types = spec.reader_task_types()
        self._readers = spec.readers()
        self._hand_offs = spec.hand_offs()
        self._hand_off_makers = spec.hand_off_makers()
        self._refs: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def by_ref_over(self, step: StepSpec) -> int | None:
        """The size above which this step's result stays in the object store; None: inline."""
        return self._threshold if step.name in self._passable else None

    def read_by_a_step(self, step: str) -> bool:
        """Whether a later step reads this step's result. If not (only the output, or nobody),
        its worker need not keep the value: the marker is all the store and the API ever show."""
        return step in self._read

    def reader_task_types(self, step: str) -> frozenset[str]:
        """The task types of the steps that read this step's result (their pools may take a
        ``bytes`` result from the replica that made it, without a copy)."""
        return self._reader_types.get(step, frozenset())

    def affinity(self, run_id: str, step: str) -> str | None:
        """The routing key of ``step``'s call: its maker and its one reader share it, so a pool
        with several replicas runs both on one (serve_app.runtime.affinity); None: no key."""
        root = self._hand_offs.get(step)
        return None if root is None else f"{run_id}/{root}"

    def hand_off(self, step: str) -> bool:
        """Whether ``step``'s one reader takes its value over: its worker may then keep a
        ``bytes`` result in its own process alone, and the reader is sent to that replica."""
        return step in self._hand_off_makers

    def _kept_inputs(self, step: str, results: Mapping[str, Any]) -> list[str]:
        return sorted(d for d in self._reads.get(step, ()) if result_refs.step_of(results.get(d)) == d)

    def missing(self, step: str, results: Mapping[str, Any]) -> list[str]:
        """Upstream steps whose kept result this step reads but whose reference is not held."""
        return [d for d in self._kept_inputs(step, results) if d not in self._refs]

    def inputs(self, step: str, results: Mapping[str, Any]) -> dict[str, Any]:
        """The references this step's worker needs, by producing step."""
        return {d: self._refs[d] for d in self._kept_inputs(step, results) if d in self._refs}

    def held(self, step: str) -> bool:
        return step in self._refs

    def keep(self, step: str, res: TaskResult) -> None:
        """Hold the reference of a successful answer; its marker gets the producing step's name."""
        ref = res._object_ref
        inner = result_refs.marker_of(res.result)
        if inner is None:
            return
        if ref is not None:  # None: nobody reads it, so no object was made
            self._refs[step] = ref
        res.result = result_refs.marker(inner["bytes"], inner["kind"], step)

    def forget(self, step: str) -> None:
        self._refs.pop(step, None)

    def release_read(self, step: str, done: Callable[[str], bool]) -> list[str]:
        """``step`` is done (succeeded or skipped): let go of each result it read whose readers
        are all ``done``, so that the object store frees it now, not when the run ends. Returns
        the steps let go of."""
        held = [d for d in self._reads.get(step, ()) if d in self._refs]
        released = [d for d in held if all(map(done, self._readers.get(d, ())))]
        for d in released:
            del self._refs[d]
        return released

    def lock(self, step: str) -> asyncio.Lock:
        """One remake of ``step`` at a time, however many dependants find it gone."""
        return self._locks.setdefault(step, asyncio.Lock())


def lost_result(res: TaskResult) -> str | None:
    """The upstream step whose kept result a worker could not read, or None."""
    return None if res.error is None else result_refs.lost_step(res.error.details)
