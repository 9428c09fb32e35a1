"""free_port(): ports for the servers tests start, outside the range the kernel hands out."""

from __future__ import annotations

import socket

import pytest

from serve_app import testing


def test_ports_are_distinct_below_the_ephemeral_range_and_bindable() -> None:
    ports = [testing.free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    low, _ = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    assert all(20000 <= p < min(32000, low) for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("", 0))  # any port; the draw is forced to it first
        taken.listen()
        busy = taken.getsockname()[1]
        draws = iter([busy, busy, 23456])
        monkeypatch.setattr(testing.random, "choice", lambda _: next(draws))
        monkeypatch.setattr(testing, "_handed_out", set())
        assert testing.free_port() == 23456


def test_haproxy_host_env_moves_every_host_wide_file_and_port() -> None:
    env = testing.haproxy_host_env("/tmp/x", http_ports=range(35000, 36000), grpc_ports=range(45000, 46000))
    paths = {k: v for k, v in env.items() if not k.endswith("_PORT")}
    assert paths and all(v == "/tmp/x" or v.startswith("/tmp/x/") for v in paths.values())
    ports = [int(env[k]) for k in env if k.endswith("_PORT") and "DIRECT_INGRESS" not in k]
    assert len(ports) == len(set(ports)) == 4 and 8404 not in ports and 9101 not in ports
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("35000", "35999")
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"]) == ("45000", "45999")
    # Every name is one Serve reads.
    from ray.serve._private import constants

    assert all(hasattr(constants, k) for k in env)
