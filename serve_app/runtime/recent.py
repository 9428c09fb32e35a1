"""Results kept by reference that a later step on the same worker replica may take as they are.

A step's ``bytes`` result kept by reference is copied into Ray's object store
(so any replica, and a remade step, can read it), and a reader gets a copy out
of it: for 100 MB, ~20 ms in and ~50 ms out on 2 cores. When the reader runs
on the replica that made the value, moments later, the value is still in that
process: :class:`RecentValues` hands it over instead of the copy out.

Only ``bytes`` (immutable: a reader cannot change what another sees, and the
object store's copy is the same bytes), only when the Coordinator said a step
that reads it is served by this pool, taken by the first local reader, and held
at most ``ttl_s`` and ``max_bytes`` in all: a reader elsewhere (another
replica, a retry after the entry went) reads the object store as before. Pure
asyncio; keys must not hold the object alive (Ray: the reference's id).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Hashable

# How long a value waits for a reader on this replica; the step that reads it is normally sent
# as soon as its maker's answer is recorded (milliseconds).
RECENT_TTL_S = 10.0


class RecentValues:
    """``bytes`` values by key, oldest dropped first beyond ``max_bytes``, each for ``ttl_s`` at most."""

    def __init__(self, max_bytes: int, *, ttl_s: float = RECENT_TTL_S) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._values: OrderedDict[Hashable, tuple[bytes, asyncio.TimerHandle]] = OrderedDict()
        self.nbytes = 0
        self.taken = 0  # values handed to a reader (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._values)

    def keep(self, key: Hashable, value: object) -> bool:
        """Hold ``value`` for a reader on this replica; False (nothing held) unless it is ``bytes``
        no larger than ``max_bytes``. Call on the event loop."""
        if type(value) is not bytes or len(value) > self.max_bytes:
            return False
        self._pop(key)
        while self._values and self.nbytes + len(value) > self.max_bytes:
            self._pop(next(iter(self._values)))
        timer = asyncio.get_running_loop().call_later(self.ttl_s, self._pop, key)
        self._values[key] = (value, timer)
        self.nbytes += len(value)
        return True

    def take(self, key: Hashable) -> bytes | None:
        """The value held for ``key`` (no longer held), or None."""
        value = self._pop(key)
        if value is not None:
            self.taken += 1
        return value

    def clear(self) -> None:
        for key in list(self._values):
            self._pop(key)

    def _pop(self, key: Hashable) -> bytes | None:
        """Stop holding ``key``'s value (its timer too); the value, or None if none was held."""
        entry = self._values.pop(key, None)
        if entry is None:
            return None
        value, timer = entry
        timer.cancel()
        self.nbytes -= len(value)
        return value
