"""The HandlerWorker pools' request router: Serve's own, plus affinity for keyed calls.

A call whose handle sets a ``session_id`` (the Coordinator sets one on the call that makes a
result kept by reference and on the call of its one reader: ``WorkItem.affinity``) goes to
the replica that ranks first for that key (:func:`serve_app.runtime.affinity.rank`), or, when that one
is full, to the next two. A key that is a replica's id (the reader of a result held in that
replica's process alone: ``serve_app.core.result_refs.local_handle``) goes to that replica
only. Every other call is routed exactly as by Serve's default (power of two choices, in
arrival order). Affinity is a hint for speed, never for correctness: a reader routed elsewhere
reads the object store as before, or, for a result held alone, has its maker run again.
"""

from __future__ import annotations

from typing import List, Optional

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from serve_app.runtime.affinity import rank

# Import path of the router class, for the pools' ``request_router_config``.
AFFINITY_ROUTER = f"{__name__}:ResultAffinityRouter"
# Replicas tried after the first-ranked one when it refuses the call (full).
FALLBACK_REPLICAS = 2


class ResultAffinityRouter(PowerOfTwoChoicesRequestRouter):
    async def choose_replicas(
        self, candidate_replicas: List[RunningReplica], pending_request: Optional[PendingRequest] = None
    ) -> List[List[RunningReplica]]:
        key = pending_request.metadata.session_id if pending_request is not None else ""
        if not key or len(candidate_replicas) < 2:
            return await super().choose_replicas(candidate_replicas, pending_request)
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        if key in by_id:
            # The reader of a result held in that replica's process alone: there, or nowhere. It
            # waits while the replica is full; if the replica is gone, the key ranks as any other
            # and the reader, finding nothing, has its maker run again.
            return [[by_id[key]]]
        order = rank(key, by_id)
        return [[by_id[order[0]]], [by_id[rid] for rid in order[1 : 1 + FALLBACK_REPLICAS]]]

    def _fulfill_next_pending_request(self, replica: RunningReplica, request_metadata=None) -> None:  # type: ignore[no-untyped-def]
        # A replica chosen for a keyed call serves that call (Serve's exact match), not the
        # oldest pending one as the FIFO order would have it.
        if request_metadata is not None and request_metadata.session_id:
            RequestRouter._fulfill_next_pending_request(self, replica, request_metadata)
        else:
            super()._fulfill_next_pending_request(replica, request_metadata)
