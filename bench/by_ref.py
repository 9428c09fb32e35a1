"""Results by reference: a 10 MB and a 100 MB result between two steps, on real Serve.

    python -m bench.by_ref [--repeats 5] [--sizes 1,10,100]

One Ray cluster, one run, alternating:

* **plain Ray**: ``stats.remote(make.remote(n))`` — two Ray tasks, the first's result passed to
  the second as an ObjectRef (what a hand-written pipeline on Ray does);
* **serveflow, by reference**: the ``pair`` workflow (``make_blob`` → ``blob_stats``) started
  with ``wait`` over HTTP on the SQLite store; ``stats`` is ``make``'s one reader, in its pool,
  so the bytes stay in the maker's worker alone (no ``ray.put``) and the reader is sent to that
  replica and takes them (``serve_app.runtime.recent``); only a marker reaches the Coordinator
  and the database;
* **serveflow, by reference, read from the object store**: the same with the pool's
  ``reuse_results_bytes: 0``: the maker puts the value into the object store and the reader
  copies it out, as for a result with several readers read on another replica;
* **serveflow, by reference, two replicas**: reuse on, the pool at two replicas; the maker goes
  to a replica chosen by the run's id and the reader to the maker's replica
  (``deployments/affinity_router.py``);
* **serveflow, inline** (JSON text of the same size, ``result_by_ref_bytes: null``): what every
  result cost before, through the Coordinator's memory and the database (10 MB and below).

Both handlers do the same work in both systems (make ``n`` zero bytes; length and adler32 of
them). Two serveflow times: over HTTP (the client's view: ingress, the run's records, two Serve
handle calls, the answer) and from the run's start to its end as recorded (what the chain
benchmark of ``bench.run`` measures per step: the two steps and the hand-off between them,
without the ingress). A run's fixed cost is measured at 0 bytes; the "beyond" ratio compares
what the data itself adds in each system. Also reported: the Coordinator replica's peak RSS growth while the runs go (sampled every
10 ms), which shows whether the result passed through it. Ratios within one run are what to
compare; these machines are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import zlib
from typing import Any

import httpx
import psutil

MB = 1 << 20
WORKFLOWS = [
    {
        "name": "pair",
        "steps": [
            {"name": "make", "task_type": "make_blob", "input": {"size": "${input.size}", "text": "${input.text}"}},
            {"name": "stats", "task_type": "blob_stats", "input": {"data": "${steps.make.result}"}},
        ],
    }
]


def app_args(store_path: str, threshold: int | None, *, reuse: bool = True, replicas: int = 1) -> dict[str, Any]:
    return {
        "max_body_bytes": 1 << 20,
        "pools": {
            "general": {"handler_modules": ["serve_app.examples.basic"], "task_types": ["echo"]},
            "blobs": {
                "handler_modules": ["serve_app.examples.compute"],
                "task_types": ["make_blob", "blob_stats"],
                "max_concurrency": 2,
                "num_cpus": 0.1,
                "num_replicas": replicas,
                **({} if reuse else {"reuse_results_bytes": 0}),
            },
        },
        "workflows": {"store": "sqlite", "store_path": store_path, "definitions": WORKFLOWS, "result_by_ref_bytes": threshold},
    }


class PeakRss:
    """Peak RSS growth of one process while a block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self._base = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss - self._base)
            time.sleep(0.01)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def coordinator_pid() -> int:
    import ray

    for a in ray.util.list_named_actors(all_namespaces=True):
        if "serveflow#Coordinator#" in a["name"]:
            actor = ray.get_actor(a["name"], namespace=a["namespace"])
            return ray.get(actor.__ray_call__.remote(lambda self: __import__("os").getpid()))
    raise RuntimeError("no Coordinator replica")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sizes", default="0,1,10,100", help="MB (0: the fixed cost of a run, subtracted for the marginal ratio)")
    parser.add_argument("--modes", default="reuse,store,replicas,inline", help="which serveflow modes (all by default)")
    args = parser.parse_args()
    sizes = [int(s) * MB for s in args.sizes.split(",")]

    import ray
    from ray import serve

    from bench.run import wait_ready
    from serve_app.testing import free_port
    from graphs.serveflow import build_app
    from serve_app.core.connect import connect, disconnect

    @ray.remote(num_cpus=0.1)
    def make(n: int) -> bytes:
        return bytes(n)

    @ray.remote(num_cpus=0.1)
    def stats(data: bytes) -> dict[str, int]:
        return {"bytes": len(data), "adler32": zlib.adler32(data)}

    def plain(n: int) -> float:
        t = time.perf_counter()
        out = ray.get(stats.remote(make.remote(n)))
        assert out["bytes"] == n
        return time.perf_counter() - t

    def run(http: httpx.Client, n: int, text: bool) -> tuple[float, float]:
        """(seconds over HTTP, seconds from the run's start to its end as recorded)."""
        t = time.perf_counter()
        r = http.post("/v1/workflows/pair/runs", json={"input": {"size": n, "text": text}, "wait": True, "wait_timeout_s": 300})
        elapsed = time.perf_counter() - t
        body = r.json()
        assert body["success"], body["error"]
        stats = {s["name"]: s for s in body["run"]["steps"]}["stats"]
        assert stats["status"] == "succeeded" and stats["result"]["bytes"] == n, body
        return elapsed, body["run"]["finished_at"] - body["run"]["started_at"]

    port = free_port()
    connect(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, object_store_memory=2 << 30)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # Touch the object store's shared memory once before anything is timed: its pages are first
    # faulted in by whichever row comes first (10 MB pairs of both systems ran 2-3x slower in the
    # first row than in later ones).
    warm = ray.put(bytes(1 << 30))
    del warm
    plain(100 * MB)
    url = f"http://127.0.0.1:{port}"
    rows: list[str] = []
    base: dict[str, tuple[float, float]] = {}  # mode -> medians at size 0
    try:
        with tempfile.TemporaryDirectory() as tmp, httpx.Client(base_url=url, timeout=600) as http:
            modes = {
                "reuse": ("by reference", MB, True, 1),
                "store": ("by reference, read from the object store", MB, False, 1),
                "replicas": ("by reference, two replicas", MB, True, 2),
                "inline": ("inline", None, True, 1),
            }
            chosen = [modes[m] for m in args.modes.split(",")]
            for i, (mode, threshold, reuse, replicas) in enumerate(chosen):
                args_i = app_args(f"{tmp}/{i}.sqlite3", threshold, reuse=reuse, replicas=replicas)
                serve.run(build_app(args_i), name="serveflow", route_prefix="/")
                wait_ready(url + "/readyz", 120)
                pid = coordinator_pid()
                for n in sizes:
                    if mode == "inline" and n > 10 * MB:
                        continue  # 100 MB of JSON through the Coordinator and SQLite: not practical
                    text = mode == "inline"
                    run(http, n, text), plain(n)  # warm-up: workers, pools, object store
                    ours, spans, theirs, peak = [], [], [], 0
                    for _ in range(args.repeats):
                        with PeakRss(pid) as rss:
                            elapsed, span = run(http, n, text)
                        ours.append(elapsed)
                        spans.append(span)
                        peak = max(peak, rss.peak)
                        theirs.append(plain(n))
                    o, s, p = statistics.median(ours), statistics.median(spans), statistics.median(theirs)
                    if n == 0:
                        base[mode] = (o, p)
                    o0, p0 = base.get(mode, (0.0, 0.0))
                    marginal = f"{(o - o0) / (p - p0):.2f}" if n and p > p0 else "-"
                    row = (
                        f"| {n / MB:g} MB | serveflow, {mode} | {o * 1000:.1f} | {s * 1000:.1f} | {p * 1000:.1f} "
                        f"| {o / p:.2f} | {s / p:.2f} | {marginal} | {peak / MB:.1f} MiB |"
                    )
                    print(row, flush=True)
                    rows.append(row)
                serve.delete("serveflow")
    finally:
        serve.shutdown()
        disconnect()
    print(
        "\n| result | serveflow | ms per run over HTTP (median) | ms from the run's start to its end | plain Ray ms "
        "| ratio over HTTP | ratio start to end | ratio beyond the 0-byte run (HTTP) | Coordinator peak RSS growth |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
