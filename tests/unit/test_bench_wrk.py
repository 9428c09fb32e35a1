"""The wrk output parser of bench/ingress.py (the benchmark itself runs outside the suite)."""

from __future__ import annotations

from bench.ingress import parse_wrk

WRK = """Running 3s test @ http://127.0.0.1:8000/v1/tasks
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    72.30ms   20.07ms    1.56s    71.45%
  Latency Distribution
     50%  870.05us
     75%   82.50ms
     90%   97.47ms
     99%    1.40s
  666 requests in 3.01s, 179.25KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:    221.21
"""


def test_parse_wrk_units_and_errors() -> None:
    assert parse_wrk(WRK) == {"rps": 221.21, "p50_ms": 0.87005, "p99_ms": 1400.0, "non_2xx": 3, "socket_errors": 3}
