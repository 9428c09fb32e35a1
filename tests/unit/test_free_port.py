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
