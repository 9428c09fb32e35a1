from __future__ import annotations

import grpc
import pytest

from serve_app.core.codec import grpc_status, http_headers, http_status
from serve_app.core.errors import classify
from serve_app.core.errors import (
    ErrorCode,
    HandlerError,
    Internal,
    NotReady,
    Overloaded,
    ServeflowError,
    TaskTimeout,
    UnknownTaskType,
    ValidationFailed,
    error_class_for,
)
from serve_app.core.models import ErrorInfo


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_maps_to_both_protocols(code: ErrorCode) -> None:
    # Every failure is an HTTP error status, except a handler's: the task ran (200, success: false).
    assert 400 <= http_status(code) <= 599 or code is ErrorCode.HANDLER_ERROR and http_status(code) == 200
    assert isinstance(grpc_status(code), grpc.StatusCode)
    assert grpc_status(code) is not grpc.StatusCode.OK
    assert error_class_for(code).code is code


@pytest.mark.parametrize(
    "err, status, grpc_code",
    [
        (ValidationFailed("x"), 422, grpc.StatusCode.INVALID_ARGUMENT),
        (UnknownTaskType("x"), 404, grpc.StatusCode.NOT_FOUND),
        (NotReady("x"), 503, grpc.StatusCode.UNAVAILABLE),
        (TaskTimeout("x"), 504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (Overloaded("x"), 503, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (HandlerError("x"), 200, grpc.StatusCode.UNKNOWN),
    ],
)
def test_mapping_table(err: ServeflowError, status: int, grpc_code: grpc.StatusCode) -> None:
    assert http_status(err.code) == status
    assert grpc_status(err.code) == grpc_code


def test_unknown_code_is_internal() -> None:
    assert error_class_for("no_such_code") is Internal
    assert http_status("no_such_code") == 500


def test_classify_hides_unknown_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise KeyError("/secret/path/module.py")
    except KeyError as exc:
        err = classify(exc, trace_id="abc")
    assert err.code is ErrorCode.INTERNAL
    assert "secret" not in err.message and "Traceback" not in err.message
    assert err.details == {"trace_id": "abc"}
    assert "Traceback" in caplog.text  # the log keeps it


def test_classify_passes_serveflow_errors_through() -> None:
    err = NotReady("starting")
    assert classify(err) is err


def test_defaults_and_read_only_fields() -> None:
    assert NotReady("x").retryable and not ValidationFailed("x").retryable
    assert HandlerError("x", retryable=True).retryable
    err = HandlerError("x", details={"a": 1})
    err.details["a"] = 2
    assert err.details == {"a": 1}
    with pytest.raises(AttributeError):
        err.retryable = False  # type: ignore[misc]


def test_retry_after_header() -> None:
    info = ErrorInfo.from_error(Overloaded("busy", retry_after_s=2.2))
    assert http_headers(info) == {"Retry-After": "3"}
    assert http_headers(ErrorInfo.from_error(NotReady("x"))) == {"Retry-After": "1"}
    assert http_headers(ErrorInfo.from_error(ValidationFailed("x"))) == {}


def test_error_text() -> None:
    from serve_app.core.errors import error_text

    assert error_text(NotReady("pool starting")) == "pool starting"
    assert error_text(TimeoutError("slow")) == "TimeoutError: slow"


def test_a_bare_grpc_status_maps_to_a_code_retryable_when_it_is_transient() -> None:
    from serve_app.core.codec import transport_failure

    app_missing = transport_failure(grpc.StatusCode.NOT_FOUND, "Application 'serveflow' not found. Ping /ray.serve...")
    assert app_missing.code == "unavailable" and app_missing.retryable and app_missing.details["transport"] is True
    assert transport_failure(grpc.StatusCode.DEADLINE_EXCEEDED, None).code == "timeout"
    assert not transport_failure(grpc.StatusCode.INTERNAL, "boom").retryable
    too_big = transport_failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "CLIENT: Received message larger than max (6000097 vs. 4194304)")
    assert too_big.code == "payload_too_large" and not too_big.retryable  # sending it again cannot help
    assert transport_failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full").code == "overloaded"
