"""Settings read from the environment, and the Serve switches a serveflow profile stands for."""

from __future__ import annotations

import pytest

from serve_app.core.settings import DEFAULT_SERVE_PROFILE, GRPC_MESSAGE_ENV, SERVE_PROFILES, Settings


def test_default_profile_is_haproxy_in_front_of_throughput_mode() -> None:
    s = Settings.from_env({})
    assert s.serve_profile == DEFAULT_SERVE_PROFILE == "haproxy"
    assert s.serve_environment({}) == {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
    }
    # The profile before it stays selectable: Serve's proxy, no HAProxy.
    assert Settings.from_env({"SERVEFLOW_SERVE_PROFILE": "throughput"}).serve_environment({}) == {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
    }


def test_replica_env_is_what_the_cluster_environment_does_not_set() -> None:
    assert Settings.from_env({}).replica_env() == GRPC_MESSAGE_ENV
    # Every gRPC profile sets it, so a cluster started with one passes it on to its replicas.
    for name in ("throughput", "haproxy"):
        assert Settings.from_env(SERVE_PROFILES[name]).replica_env() == {}
    assert Settings.from_env({"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": "9"}).replica_env() == {}
    assert Settings.from_env({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "OTHER": "x"}).serve_switches == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def test_profiles_and_explicit_switches() -> None:
    assert Settings.from_env({"SERVEFLOW_SERVE_PROFILE": "serve-defaults"}).serve_environment({}) == {}
    ha = Settings.from_env({"SERVEFLOW_SERVE_PROFILE": "haproxy"})
    assert ha.serve_environment({}) == SERVE_PROFILES["haproxy"]
    # A switch the operator set explicitly (even to 0) is left alone.
    assert ha.serve_environment({"RAY_SERVE_ENABLE_HA_PROXY": "0"}) == {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        **GRPC_MESSAGE_ENV,
    }


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="SERVEFLOW_SERVE_PROFILE must be one of"):
        Settings.from_env({"SERVEFLOW_SERVE_PROFILE": "fastest"})
