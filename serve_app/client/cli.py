"""``serveflow`` command line: talks to a running app over HTTP.

    serveflow status                 # health table; exit 0 healthy, 1 degraded, 2 unhealthy/unreachable
    serveflow submit echo --payload '{"message": "hi"}'
    serveflow run-workflow fanout --input '{"seconds": 1}' --wait
    serveflow get-run RUN_ID | cancel-run RUN_ID | list-runs | workflows
    serveflow signal RUN_ID NAME --payload '{"approved": true}'
    serveflow schedules [list | pause NAME | resume NAME | trigger NAME]
    serveflow send-event order.placed --key acme --payload '{"amount": 3}' | dead-letters [--replay SEQ]

The base URL comes from ``--url`` or ``SERVEFLOW_URL`` (default http://127.0.0.1:8000).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence, TextIO

import httpx

from serve_app.core.settings import Settings

EXIT_OK, EXIT_DEGRADED, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2, 64


def _ago(since: float | None, now: float) -> str:
    if not since:
        return "-"
    secs = max(0, int(now - since))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


def _replicas(doc: dict[str, Any], deployment: str) -> str:
    states = (doc.get("deployments") or {}).get(deployment, {}).get("replica_states") or {}
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "-"


def render_status(doc: dict[str, Any], *, url: str, now: float | None = None) -> str:
    """A readable health table of the /v1/status document."""
    now = time.time() if now is None else now
    rows = [("COMPONENT", "KIND", "STATUS", "REPLICAS", "SINCE", "ERROR")]
    for name, comp in sorted((doc.get("components") or {}).items()):
        rows.append((name, "component", comp.get("status", "?"), _replicas(doc, name), _ago(comp.get("since"), now), comp.get("error") or ""))
    for name, pool in sorted((doc.get("pools") or {}).items()):
        dep = pool.get("deployment", name)
        counts = pool.get("replicas") or {}
        replicas = f"{counts['running']} running / {counts['target']} target" if counts else _replicas(doc, dep)
        rows.append((name, "pool", pool.get("status", "?"), replicas, _ago(pool.get("since"), now), pool.get("error") or ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = [f"serveflow at {url}: {doc.get('status', 'unknown')}"]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + str(r[5])[:160])
    return "\n".join(line.rstrip() for line in lines)


def status_exit_code(doc: dict[str, Any]) -> int:
    state = doc.get("status")
    if state == "healthy":
        return EXIT_OK
    if state == "degraded":
        return EXIT_DEGRADED
    return EXIT_UNHEALTHY


def _json_value(raw: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise SystemExit(f"serveflow: {what} is not valid JSON: {exc}") from None


def _json_arg(raw: str, what: str) -> dict[str, Any]:
    value = _json_value(raw, what)
    if not isinstance(value, dict):
        raise SystemExit(f"serveflow: {what} must be a JSON object")
    return value


def _parser() -> argparse.ArgumentParser:
    settings = Settings.from_env()
    p = argparse.ArgumentParser(prog="serveflow", description="Talk to a running serveflow app over HTTP.")
    p.add_argument("--url", default=settings.serveflow_url, help="base URL (env SERVEFLOW_URL)")
    p.add_argument("--timeout", type=float, default=330.0, help="HTTP timeout in seconds")
    p.add_argument("--token", default=settings.auth_token, help="bearer token (env SERVEFLOW_AUTH_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="health of every deployment and pool")
    st.add_argument("--json", action="store_true", help="print the raw status document")
    sm = sub.add_parser("submit", help="run one task and print its envelope")
    sm.add_argument("task_type")
    sm.add_argument("--payload", default="{}", help="JSON object")
    sm.add_argument("--task-id")
    sm.add_argument("--task-timeout", type=float, help="handler deadline in seconds")
    rw = sub.add_parser("run-workflow", help="start a workflow run")
    rw.add_argument("workflow")
    rw.add_argument("--input", default="{}", help="JSON object")
    rw.add_argument("--wait", action="store_true", help="wait for the run to finish")
    rw.add_argument("--wait-timeout", type=float, default=60.0)
    rw.add_argument("--idempotency-key")
    rw.add_argument("--priority", type=int, choices=(1, 2, 3), help="3 runs first among queued runs")
    for name in ("get-run", "cancel-run"):
        sub.add_parser(name).add_argument("run_id")
    lr = sub.add_parser("list-runs", help="recent runs, newest first")
    lr.add_argument("--status")
    lr.add_argument("--workflow")
    lr.add_argument("--limit", type=int, default=20)
    lr.add_argument("--parent", help="only the child runs of this run")
    sg = sub.add_parser("signal", help="deliver a named signal to a run")
    sg.add_argument("run_id")
    sg.add_argument("name")
    sg.add_argument("--payload", default="null", help="JSON value")
    sg.add_argument("--signal-id", help="the same id again is ignored")
    se = sub.add_parser("send-event", help="append an event to the log")
    se.add_argument("type")
    se.add_argument("--payload", default="null", help="JSON value")
    se.add_argument("--key", help="events of one key are delivered in order")
    se.add_argument("--id", help="the same id again appends nothing")
    dl = sub.add_parser("dead-letters", help="list dead letters, or replay one")
    dl.add_argument("--subscription")
    dl.add_argument("--replay", type=int, metavar="SEQ", help="deliver this dead letter again (needs --subscription)")
    sc = sub.add_parser("schedules", help="list schedules, or pause / resume / trigger one")
    sc.add_argument("action", nargs="?", choices=("list", "pause", "resume", "trigger"), default="list")
    sc.add_argument("name", nargs="?")
    sub.add_parser("workflows", help="list workflow definitions")
    ld = sub.add_parser("load", help="send bounded load and print a summary")
    ld.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ld.add_argument("--grpc-target", default="127.0.0.1:9000", help="host:port of the gRPC proxy")
    ld.add_argument("--task-type", default="echo")
    ld.add_argument("--payload", default='{"message": "load"}', help="JSON object")
    ld.add_argument("--count", type=int, default=100, help="requests in all (ignored with --continuous)")
    ld.add_argument("--continuous", action="store_true", help="send until --duration is up")
    ld.add_argument("--interval", type=float, default=0.1, help="pause per worker between requests (--continuous)")
    ld.add_argument("--workers", type=int, default=4)
    ld.add_argument("--duration", type=float, default=60.0, help="hard stop in seconds")
    ld.add_argument("--request-timeout", type=float, default=30.0, help="a request without an answer by then is 'hung'")
    ld.add_argument("--task-timeout", type=float)
    ld.add_argument("--idempotent", action="store_true", help="let the server re-send tasks whose replica died")
    return p


def _print(out: TextIO, doc: Any) -> None:
    out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _envelope_exit(doc: dict[str, Any]) -> int:
    return EXIT_OK if doc.get("success") else EXIT_DEGRADED


def run(argv: Sequence[str], *, client_factory: Callable[[str, float], httpx.Client] | None = None, out: TextIO = sys.stdout) -> int:
    """Run the CLI; returns the exit code (``client_factory`` lets tests inject a transport)."""
    args = _parser().parse_args(argv)
    if args.command == "load":
        return _load(args, out)
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    factory = client_factory or (lambda url, timeout: httpx.Client(base_url=url, timeout=timeout, headers=headers))
    try:
        with factory(args.url, args.timeout) as http:
            return _dispatch(args, http, out)
    except httpx.HTTPError as exc:
        out.write(f"serveflow at {args.url}: unreachable ({type(exc).__name__}: {exc})\n")
        return EXIT_UNHEALTHY


def _dispatch(args: argparse.Namespace, http: httpx.Client, out: TextIO) -> int:
    if args.command == "status":
        doc = http.get("/v1/status").json()
        if "error" in doc and "status" not in doc:  # an error envelope, not a status document
            _print(out, doc)
            return EXIT_UNHEALTHY
        out.write((json.dumps(doc, indent=2) if args.json else render_status(doc, url=args.url)) + "\n")
        return status_exit_code(doc)
    if args.command == "submit":
        body: dict[str, Any] = {"task_type": args.task_type, "payload": _json_arg(args.payload, "--payload")}
        if args.task_id:
            body["task_id"] = args.task_id
        if args.task_timeout:
            body["timeout_s"] = args.task_timeout
        doc = http.post("/v1/tasks", json=body).json()
    elif args.command == "run-workflow":
        body = {"input": _json_arg(args.input, "--input"), "wait": args.wait, "wait_timeout_s": args.wait_timeout}
        if args.idempotency_key:
            body["idempotency_key"] = args.idempotency_key
        if args.priority:
            body["priority"] = args.priority
        doc = http.post(f"/v1/workflows/{args.workflow}/runs", json=body).json()
        _print(out, doc)
        run = doc.get("run") or {}
        return EXIT_OK if doc.get("success") and run.get("status") not in ("failed", "cancelled") else EXIT_DEGRADED
    elif args.command == "get-run":
        doc = http.get(f"/v1/runs/{args.run_id}").json()
    elif args.command == "cancel-run":
        doc = http.post(f"/v1/runs/{args.run_id}/cancel").json()
    elif args.command == "signal":
        body = {"payload": _json_value(args.payload, "--payload")}
        if args.signal_id:
            body["signal_id"] = args.signal_id
        doc = http.post(f"/v1/runs/{args.run_id}/signals/{args.name}", json=body).json()
    elif args.command == "send-event":
        body = {"type": args.type, "payload": _json_value(args.payload, "--payload")}
        body.update({k: v for k, v in {"key": args.key, "id": args.id}.items() if v})
        doc = http.post("/v1/events", json=body).json()
    elif args.command == "dead-letters":
        if args.replay is not None:
            if not args.subscription:
                raise SystemExit("serveflow: dead-letters --replay needs --subscription")
            doc = http.post(f"/v1/dead-letters/{args.subscription}/{args.replay}/replay").json()
        else:
            doc = http.get("/v1/dead-letters", params={k: v for k, v in {"subscription": args.subscription}.items() if v}).json()
    elif args.command == "schedules":
        if args.action == "list":
            doc = http.get("/v1/schedules").json()
        elif not args.name:
            raise SystemExit(f"serveflow: schedules {args.action} needs a schedule name")
        else:
            doc = http.post(f"/v1/schedules/{args.name}/{args.action}").json()
    elif args.command == "list-runs":
        given = {"status": args.status, "workflow": args.workflow, "limit": args.limit, "parent_run_id": args.parent}
        params = {k: v for k, v in given.items() if v}
        doc = http.get("/v1/runs", params=params).json()
    else:  # workflows
        doc = http.get("/v1/workflows").json()
        _print(out, doc)
        return EXIT_OK
    _print(out, doc)
    return _envelope_exit(doc)


def _load(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    from serve_app.client.load import LoadConfig, progress_bar, run_load

    if not 1 <= args.workers <= 1024 or args.duration <= 0:
        raise SystemExit("serveflow: --workers must be 1..1024 and --duration positive")
    cfg = LoadConfig(
        target=args.url if args.protocol == "http" else args.grpc_target,
        protocol=args.protocol,
        task_type=args.task_type,
        payload=_json_arg(args.payload, "--payload"),
        count=None if args.continuous else args.count,
        continuous=args.continuous,
        interval_s=args.interval,
        workers=args.workers,
        duration_s=args.duration,
        request_timeout_s=args.request_timeout,
        task_timeout_s=args.task_timeout,
        idempotent=args.idempotent,
        token=args.token,
    )
    report = asyncio.run(run_load(cfg, progress=progress_bar(cfg.count, sys.stderr)))
    sys.stderr.write("\n")
    _print(out, report.summary())
    return EXIT_OK if report.lost == 0 and report.hung == 0 and not report.transport else EXIT_DEGRADED


def main() -> None:
    raise SystemExit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
