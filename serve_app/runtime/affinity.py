"""Which worker replica a run's by-reference hand-off goes to: rendezvous hashing, free of Ray.

A step's ``bytes`` result kept by reference is also held for a moment in the replica that
made it (:mod:`serve_app.runtime.recent`), and a reader of the same pool takes it there
without a copy out of Ray's object store, but only if Serve sends the reader to that
replica. With several replicas in the pool, the Coordinator gives the maker's call and its
one reader's call the same key (the run's id and the maker's name), and the pool's request
router sends a call with a key to the replica that ranks first for it. Highest-random-weight hashing: every
Coordinator ranks alike with no shared state, keys spread evenly over the replicas, and a
replica that leaves moves only the keys it ranked first. Calls without a key are routed as
Serve always routes them. (The reader of a value its maker holds alone, with no copy in the
object store, is keyed by the maker's replica id instead, and goes there only.)
"""

from __future__ import annotations

import hashlib
from typing import Iterable


def rank(key: str, replica_ids: Iterable[str]) -> list[str]:
    """``replica_ids`` from the one ``key`` should go to first, to the last."""
    return sorted(replica_ids, key=lambda rid: (_weight(key, rid), rid), reverse=True)


def _weight(key: str, replica_id: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
