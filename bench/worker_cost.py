"""What serveflow's HandlerWorker costs per task, behind one hand-written ingress.

    python -m bench.worker_cost                 # 3 workers x 2 starts, about 9 minutes on 2 cores
    python -m bench.worker_cost --repeats 3 --seconds 20

The same hand-written ingress (HTTP, a plain ``__call__``, no ASGI app) sends the same WorkItem-shaped
dict, as the Coordinator sends it, to one of three workers on the same Serve settings
(serveflow's default profile) and CPU share:

- ``plain``: a hand-written worker that answers a dict of the envelope's shape (the floor);
- ``envelope``: the same, but it reads the item as a ``WorkItem`` and answers ``TaskResult``'s
  dump (serveflow's envelope, both ways);
- ``serveflow``: serveflow's ``HandlerWorker`` running the ``noop`` handler: envelope, input
  validation, deadline, failure isolation, the handler span.

Each start is ``serve run`` from nothing; the workers alternate start by start. Under ``wrk -c16``
it reads every process's CPU time (psutil) and reports CPU per request: on a machine whose cores
the load saturates, throughput is the inverse of the CPU all processes spend on a request, so
each process's share of it says where a ratio to the hand-written app goes. Only ratios within
this one run are meant to be read. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from bench.ingress import MODES, TASK, TASKS_URL, WRK_SCRIPT, parse_wrk, wrk_binary
from bench.run import ROOT, ServeRun, _machine, insert_section
from serve_app.core.settings import DEFAULT_SERVE_PROFILE

WORKERS = ("plain", "envelope", "serveflow")
CONFIG = """\
proxy_location: HeadOnly
http_options: {{host: 0.0.0.0, port: 8000}}
applications:
  - name: worker_cost
    route_prefix: /
    import_path: bench.worker_cost:build
    args: {{worker: {worker}}}
"""


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=32)
class PlainWorker:
    """Answers a dict of the envelope's shape, built by hand."""

    def __init__(self, envelope: bool) -> None:
        self._envelope = envelope

    async def run(self, item: dict[str, Any]) -> dict[str, Any]:
        if self._envelope:
            from serve_app.core.models import TaskResult, WorkItem

            work = WorkItem.model_validate(item)
            return TaskResult(task_id=work.task_id, task_type=work.task_type, success=True, result=None).model_dump(mode="json")
        return {"task_id": item["task_id"], "task_type": item["task_type"], "success": True, "result": None, "error": None}


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class ProbeIngress:
    """Sends every request's task to the worker as the Coordinator sends a WorkItem (a JSON dict)."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker

    async def __call__(self, request: Request) -> JSONResponse:
        body = await request.json()
        result = await self._worker.run.remote(probe_item(body.get("payload") or {}))
        return JSONResponse({"success": result["success"], "result": result["result"]})


def probe_item(payload: dict[str, Any]) -> dict[str, Any]:
    """A ``noop`` task as the Coordinator sends it (``WorkItem.model_dump(mode="json")``), by hand."""
    return {
        "task_id": uuid.uuid4().hex,
        "task_type": "noop",
        "payload": payload,
        "timeout_s": 30.0,
        "trace_context": {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"},
        "by_ref_over": None,
        "keep_object": True,
        "keep_local": False,
        "hand_off": False,
    }


def build(args: dict[str, Any]) -> Any:
    """Serve's application builder: ``args.worker`` is one of :data:`WORKERS`."""
    worker = args.get("worker")
    if worker == "serveflow":
        from deployments.handler_worker import HandlerWorker
        from serve_app.runtime.config import PoolConfig

        pool = PoolConfig.model_validate({"handler_modules": ["serve_app.examples.basic"], "task_types": ["noop"]})
        bound = HandlerWorker.options(
            name="Worker", max_ongoing_requests=32, ray_actor_options={"num_cpus": pool.num_cpus}
        ).bind("general", pool.model_dump(mode="json"))
    elif worker in ("plain", "envelope"):
        bound = PlainWorker.options(name="Worker").bind(worker == "envelope")
    else:
        raise ValueError(f"worker must be one of {WORKERS}, not {worker!r}")
    return ProbeIngress.options(name="Ingress").bind(bound)


def cpu_seconds(procs: list[psutil.Process]) -> dict[str, float]:
    """CPU seconds so far by role: ``Ingress``, ``Worker``, ``other`` (HAProxy, Serve, Ray)."""
    out = {"Ingress": 0.0, "Worker": 0.0, "other": 0.0}
    for proc in procs:
        try:
            times = proc.cpu_times()
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        role = next((r for r in ("Ingress", "Worker") if f"ServeReplica:worker_cost:{r}" in cmd), "other")
        out[role] += times.user + times.system
    return out


def measure(worker: str, seconds: float, tmp: Path) -> dict[str, float]:
    config, script = tmp / f"{worker}.yaml", tmp / "post.lua"
    config.write_text(CONFIG.format(worker=worker))
    script.write_text(WRK_SCRIPT)
    # As bench.ingress runs serveflow's default profile; the ingress answers on any path.
    env = {**MODES[DEFAULT_SERVE_PROFILE], "HOME": str(tmp / f"home-{uuid.uuid4().hex[:8]}"), "RAY_AUTH_MODE": "token"}
    run = ServeRun(config, env, tmp / f"{worker}.log")
    try:
        run.wait_ready(lambda: httpx.post(TASKS_URL, json=TASK, timeout=2).status_code == 200)
        wrk = [wrk_binary(), "-t1", "-c16", "-s", str(script)]
        subprocess.run([*wrk, "-d5s", TASKS_URL], capture_output=True, check=True)  # warm-up
        root = psutil.Process(run.proc.pid)
        procs = [root, *root.children(recursive=True)]
        before = cpu_seconds(procs)
        out = subprocess.run([*wrk, "--latency", f"-d{seconds:g}s", TASKS_URL], capture_output=True, text=True, check=True).stdout
        after = cpu_seconds(procs)
    finally:
        run.stop()
    stats = parse_wrk(out)
    if stats["non_2xx"] or stats["socket_errors"]:
        raise RuntimeError(f"{worker}: some requests failed:\n{out}")
    requests = int(next(x for x in out.splitlines() if "requests in" in x).split()[0])
    per = {role: (after[role] - before[role]) * 1000 / requests for role in before}
    return {"rps": stats["rps"], **per, "total": sum(per.values())}


def write_report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
    med = {w: {k: statistics.median(s[k] for s in samples) for k in samples[0]} for w, samples in results.items()}
    plain = med["plain"]
    lines = [
        f"### Worker cost — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"`python -m bench.worker_cost --repeats {args.repeats} --seconds {args.seconds:g}`; {_machine()}; Serve profile"
        f" `{DEFAULT_SERVE_PROFILE}`; one hand-written ingress, `wrk -t1 -c16`, medians of {args.repeats} starts a worker.",
        "",
        "| worker | req/s | ratio | ingress ms/req | worker ms/req | other ms/req | total CPU ms/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for worker, m in med.items():
        lines.append(
            f"| {worker} | {m['rps']:.0f} | {m['rps'] / plain['rps']:.2f} | {m['Ingress']:.3f} | {m['Worker']:.3f}"
            f" | {m['other']:.3f} | {m['total']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--workers", nargs="+", choices=WORKERS, default=list(WORKERS))
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    if "plain" not in args.workers:
        parser.error("--workers must include plain: the ratios are to it")
    results: dict[str, list[dict[str, float]]] = {w: [] for w in args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for worker in args.workers:  # alternating: a slow spell lands on every worker's samples
                results[worker].append(measure(worker, args.seconds, Path(tmp)))
                print(worker, {k: round(v, 3) for k, v in results[worker][-1].items()}, flush=True)
    report = write_report(results, args)
    print(report)
    insert_section(Path(args.out), report)


if __name__ == "__main__":
    main()
