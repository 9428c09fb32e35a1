"""How errors of deployment-handle calls become serveflow's errors (no cluster needed)."""

from __future__ import annotations

import grpc
from grpc.aio import AioRpcError, Metadata

from deployments.ray_calls import downstream_error
from serve_app.core.errors import ErrorCode


def _rpc_error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


def test_a_message_over_the_grpc_limit_between_replicas_is_payload_too_large_not_internal() -> None:
    limit = _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (6291502 vs. 4194304)")
    err = downstream_error(limit, target="HandlerWorker_compute")
    assert err.code == ErrorCode.PAYLOAD_TOO_LARGE and not err.retryable
    assert "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH" in str(err)
    # The same when Serve raises its own error caused by the channel's.
    try:
        try:
            raise limit
        except AioRpcError as inner:
            raise RuntimeError("request failed") from inner
    except RuntimeError as wrapped:
        assert downstream_error(wrapped, target="x").code == ErrorCode.PAYLOAD_TOO_LARGE


def test_other_grpc_failures_stay_internal() -> None:
    other = _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many pings")
    assert downstream_error(other, target="x").code == ErrorCode.INTERNAL
    assert downstream_error(ValueError("boom"), target="x").code == ErrorCode.INTERNAL
