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
replica, a retry after the entry went) reads the object store as before.

A value whose one reader is sent to this replica (a hand-off) is held here
*alone*: it was never put into the object store, so it is not dropped to make
room, and it waits longer (``HELD_ALONE_TTL_S``); if it goes all the same, the
reader's maker is run again. Pure asyncio; keys must not hold the object alive
(Ray: the reference's id; a value held alone: its name).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Hashable, NamedTuple

# How long a value waits for a reader on this replica; the step that reads it is normally sent
# as soon as its maker's answer is recorded (milliseconds).
RECENT_TTL_S = 10.0
# How long a value held here alone (a one-to-one hand-off: no copy in the object store) waits for
# its reader, which may queue for a step slot; if it goes, the reader's maker is run again.
HELD_ALONE_TTL_S = 120.0


class InStore(NamedTuple):
    """Held alone in place of a value that is in the object store (it did not fit, or is not
    ``bytes``): its reference, which keeps the object alive while it is held here."""

    handle: Any


class RecentValues:
    """``bytes`` values by key, oldest dropped first beyond ``max_bytes`` (except those held alone),
    each for ``ttl_s`` (held alone: ``HELD_ALONE_TTL_S``) at most."""

    def __init__(self, max_bytes: int, *, ttl_s: float = RECENT_TTL_S) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._values: OrderedDict[Hashable, tuple[bytes | InStore, asyncio.TimerHandle]] = OrderedDict()
        self._alone: set[Hashable] = set()  # values with no copy elsewhere: never dropped for room
        self.alone_nbytes = 0
        self.nbytes = 0
        self.taken = 0  # bytes handed to a reader (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._values)

    def keep(self, key: Hashable, value: object, *, alone: bool = False) -> bool:
        """Hold ``value`` for a reader on this replica; False (nothing held) unless it is ``bytes``
        that fit in ``max_bytes``. Older values make room, oldest first, except values held
        ``alone`` (no copy in the object store): those go only when taken or after
        ``HELD_ALONE_TTL_S``, and a value that would need their room is not held. Call on the
        event loop."""
        if type(value) is not bytes:
            return False
        self._pop(key)
        if self.alone_nbytes + len(value) > self.max_bytes:
            return False
        if self.nbytes + len(value) > self.max_bytes:  # the oldest values not held alone make room
            spare = iter([k for k in self._values if k not in self._alone])
            while self.nbytes + len(value) > self.max_bytes:
                self._pop(next(spare))
        self._hold(key, value, alone)
        return True

    def keep_in_store(self, key: Hashable, handle: Any) -> None:
        """Hold alone the reference of a value in the object store (it takes none of
        ``max_bytes``), for a reader on this replica. Call on the event loop."""
        self._pop(key)
        self._hold(key, InStore(handle), True)

    def _hold(self, key: Hashable, value: bytes | InStore, alone: bool) -> None:
        timer = asyncio.get_running_loop().call_later(HELD_ALONE_TTL_S if alone else self.ttl_s, self._pop, key)
        self._values[key] = (value, timer)
        self.nbytes += _size(value)
        if alone:
            self._alone.add(key)
            self.alone_nbytes += _size(value)

    def take(self, key: Hashable) -> bytes | InStore | None:
        """What is held for ``key`` (no longer held), or None."""
        value = self._pop(key)
        if type(value) is bytes:
            self.taken += 1
        return value

    def hold_again(self, key: Hashable, value: bytes | InStore) -> bool:
        """Hold alone again what :meth:`take` gave for ``key`` (its reader did not finish); False
        when there is no room for it any more (its reader then has its maker run again)."""
        if isinstance(value, InStore):
            self.keep_in_store(key, value.handle)  # takes no room: always held
            return True
        return self.keep(key, value, alone=True)

    def clear(self) -> None:
        for key in list(self._values):
            self._pop(key)

    def _pop(self, key: Hashable) -> bytes | InStore | None:
        """Stop holding ``key``'s value (its timer too); the value, or None if none was held."""
        entry = self._values.pop(key, None)
        if entry is None:
            return None
        value, timer = entry
        timer.cancel()
        if key in self._alone:
            self._alone.discard(key)
            self.alone_nbytes -= _size(value)
        self.nbytes -= _size(value)
        return value


def _size(value: bytes | InStore) -> int:
    return 0 if isinstance(value, InStore) else len(value)
