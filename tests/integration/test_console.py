"""The web console in a real browser (Debian's headless Chromium, driven by Playwright) against
the session's real Serve instance.

Every test fails on any browser console error or uncaught page error (a CSP violation
is one). Screenshots land in test-artifacts/console/ (kept by CI as artifacts).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import threading
import time
from typing import Any, Iterator

import httpx
import pytest

from serve_app.testing import free_port
from tests.integration.conftest import wait_until

ROOT = pathlib.Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine's network is closed: no update or sync calls
    "--disable-component-update",
    "--disable-sync",
]
XSS = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">'


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and no Chromium for the console tests (apt-get install chromium)")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A browser tab that records every console error and page error."""

    def __init__(self, browser: Any, base: str, width: int = 1280, height: int = 900) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.tab = self.context.new_page()
        self.tab.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.tab.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.tab.on("pageerror", lambda e: self.errors.append(f"page: {e}"))
        self.base = base

    def open(self, hash_path: str = "") -> Any:
        self.tab.goto(f"{self.base}/ui/{hash_path}")
        return self.tab

    def shot(self, name: str) -> None:
        self.tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors


@pytest.fixture
def page(browser: Any, serve_instance: dict[str, Any], http: httpx.Client) -> Iterator[Page]:
    p = Page(browser, serve_instance["http"])
    yield p
    p.close()


def _start(http: httpx.Client, workflow: str, run_input: dict[str, Any]) -> str:
    r = http.post(f"/v1/workflows/{workflow}/runs", json={"input": run_input})
    assert r.status_code in (200, 202), r.text
    return str(r.json()["run_id"])


def test_overview_shows_the_health_roll_up(page: Page) -> None:
    tab = page.open()
    tab.get_by_role("heading", name=re.compile("Overview")).wait_for()
    table = tab.locator("table").first
    for name in ("Coordinator", "OrganismManager", "general", "compute"):
        assert table.get_by_text(name, exact=True).count() >= 1, name
    assert tab.get_by_text("Tasks, last 10 minutes").count() == 1
    assert tab.locator(".spark > span").count() == 2 * 60  # throughput and latency: ten minutes of 10 s buckets
    page.shot("overview")


def test_start_a_run_from_the_form_and_watch_it_succeed(page: Page, http: httpx.Client) -> None:
    tab = page.open("#/workflows")
    tab.get_by_role("link", name="resumable", exact=True).click()
    tab.get_by_role("heading", name="Workflow resumable").wait_for()
    assert tab.locator(".dag .node").count() == 3  # the definition's DAG
    tab.get_by_label("Run input (JSON)").fill('{"seconds": 2.5}')
    tab.get_by_role("button", name="Start run").click()
    tab.wait_for_url(re.compile(r"#/runs/[0-9a-f]{32}$"))
    run_id = tab.url.rsplit("/", 1)[1]
    heading = tab.get_by_role("heading", name=re.compile(f"Run {run_id}"))
    heading.locator(".s-running").wait_for()  # live: it moves from running...
    tab.locator(".dag .node.s-running").first.wait_for()
    page.shot("run-running")
    heading.locator(".s-succeeded").wait_for(timeout=60_000)  # ...to succeeded, without a reload
    assert tab.locator(".dag .node.s-succeeded").count() == 3
    assert http.get(f"/v1/runs/{run_id}").json()["run"]["status"] == "succeeded"
    page.shot("run-succeeded")


def test_a_bad_input_from_the_form_shows_the_fields(page: Page) -> None:
    tab = page.open("#/workflows/diamond")
    tab.get_by_label("Run input (JSON)").fill('{"text": 5}')
    tab.get_by_role("button", name="Start run").click()
    tab.get_by_role("alert").filter(has_text="validation_error").wait_for()
    assert tab.get_by_text("input.text: 5 is not of type 'string'").count() == 1  # the field, named
    assert "#/workflows/diamond" in tab.url  # no run was created, the page stays
    page.errors = [e for e in page.errors if "422" not in e]  # the browser logs the refused request itself


def test_cancel_a_run_from_its_page(page: Page, http: httpx.Client) -> None:
    run_id = _start(http, "long", {})
    tab = page.open(f"#/runs/{run_id}")
    heading = tab.get_by_role("heading", name=re.compile(f"Run {run_id}"))
    heading.locator(".s-running").wait_for()
    tab.get_by_role("button", name="Cancel run").click()
    heading.locator(".s-cancelled").wait_for()
    assert tab.get_by_role("button", name="Cancel run").is_disabled()
    assert http.get(f"/v1/runs/{run_id}").json()["run"]["status"] == "cancelled"


def test_injected_html_in_an_input_renders_as_text(page: Page, http: httpx.Client) -> None:
    run_id = _start(http, "diamond", {"text": XSS, "n": 3})
    wait_until(lambda: http.get(f"/v1/runs/{run_id}").json()["run"]["status"] == "succeeded", 30, what="the run")
    tab = page.open(f"#/runs/{run_id}")
    tab.get_by_role("heading", name="Output").wait_for()
    assert tab.locator("pre", has_text="<script>window.__xss = 1</script>").count() >= 1  # shown, as text
    assert tab.locator("main script, main img").count() == 0
    assert tab.evaluate("window.__xss") is None  # and never run
    tab = page.open("#/runs?workflow=diamond")
    tab.get_by_role("heading", name="Runs").wait_for()
    assert tab.evaluate("window.__xss") is None


def test_runs_list_filters_pages_and_links_children(page: Page, http: httpx.Client) -> None:
    parent = _start(http, "regions", {"regions": ["eu", "us"], "label": "console"})
    wait_until(lambda: http.get(f"/v1/runs/{parent}").json()["run"]["status"] == "succeeded", 60, what="the parent")
    tab = page.open(f"#/runs/{parent}")
    tab.get_by_role("heading", name="Child runs (2)").wait_for()
    assert tab.locator(".progress").count() == 1 and tab.get_by_text("2/2").count() >= 1  # map progress
    page.shot("run-map-children")
    tab.get_by_role("link", name=re.compile("^[0-9a-f]{12}$")).first.click()
    tab.get_by_role("link", name=parent).wait_for()  # the child links back to its parent
    tab = page.open("#/runs")
    tab.get_by_role("heading", name="Runs", exact=True).wait_for()
    tab.get_by_label("Workflow", exact=True).select_option("region")
    tab.get_by_label("Status", exact=True).select_option("succeeded")
    tab.get_by_role("button", name="Filter").click()
    tab.wait_for_url(re.compile(r"workflow=region"))
    tab.wait_for_function(  # the list re-rendered with only what the filter lets through
        "() => { const rows = [...document.querySelectorAll('tbody tr')];"
        " return rows.length > 0 && rows.every(r => r.cells[1].textContent === 'region'"
        " && r.cells[2].textContent === 'succeeded'); }"
    )
    for _ in range(26):  # more than a page of them
        _start(http, "region", {"region": "x"})
    tab = page.open("#/runs?workflow=region")
    tab.locator("tbody tr").nth(24).wait_for()
    first = tab.locator("tbody tr").first.locator("td").first.inner_text()
    first_of = "() => document.querySelector('tbody tr td') && document.querySelector('tbody tr td').textContent"
    tab.get_by_role("button", name="Older →").click()
    tab.wait_for_url(re.compile(r"before="))
    tab.wait_for_function(f"(first) => ({first_of})() && ({first_of})() !== first", arg=first)  # the next page
    tab.get_by_role("button", name="← Newer").click()
    tab.wait_for_function(f"(first) => ({first_of})() === first", arg=first)  # and back to the first


def test_keyboard_and_a_narrow_window(browser: Any, serve_instance: dict[str, Any], http: httpx.Client) -> None:
    narrow = Page(browser, serve_instance["http"], width=360, height=740)
    try:
        tab = narrow.open()
        tab.get_by_role("heading", name=re.compile("Overview")).wait_for()
        for _ in range(6):  # skip link, then the navigation, by Tab alone
            tab.keyboard.press("Tab")
            if tab.evaluate("document.activeElement.textContent") == "Workflows":
                break
        tab.keyboard.press("Enter")
        tab.get_by_role("heading", name="Workflows").wait_for()
        assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")  # no sideways scrolling
        run_id = _start(http, "diamond", {"text": "narrow", "n": 4})
        narrow.open(f"#/runs/{run_id}").get_by_role("heading", name="Steps").wait_for()
        assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        narrow.shot("run-narrow")
    finally:
        narrow.close()


# ---------------------------------------------------------------- the same auth as the API


@pytest.fixture(scope="module")
def secured_app() -> Iterator[str]:
    """The Coordinator's HTTP app (the same ASGI app Serve serves) with bearer auth on, over
    real HTTP from uvicorn, in-process pools behind it: Serve's session instance runs without auth."""
    import uvicorn

    from serve_app.ingress.auth import BearerAuth
    from serve_app.ingress.http import build_http_app
    from serve_app.ingress.operations import Backend
    from serve_app.runtime.config import AppConfig
    from serve_app.testing import in_process_dispatcher

    async def status() -> dict[str, Any]:
        return {"status": "healthy", "components": {}, "pools": {}, "deployments": {}, "resources": {}, "tasks": {}}

    config = AppConfig.from_args({"pools": {"general": {"handler_modules": ["serve_app.examples.basic"], "task_types": ["echo"]}}})
    dispatcher, board, pools = in_process_dispatcher(config)
    app = build_http_app(Backend(dispatcher, board, status), max_body_bytes=65536, auth=BearerAuth("console-secret"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, 20, what="the secured app")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(10)
        pools.close()


def test_with_auth_on_the_console_asks_for_the_token_and_shows_nothing_without_it(browser: Any, secured_app: str) -> None:
    p = Page(browser, secured_app)
    # The failed API calls the sign-in is about are expected here: 401s are logged by the browser.
    try:
        tab = p.open()
        tab.get_by_role("heading", name="Sign in").wait_for()
        assert tab.get_by_role("heading", name=re.compile("Overview")).count() == 0
        tab.get_by_label(re.compile("API token")).fill("wrong")
        tab.get_by_role("button", name="Continue").click()
        tab.get_by_text("invalid bearer token").wait_for()
        tab.get_by_label(re.compile("API token")).fill("console-secret")
        tab.get_by_role("button", name="Continue").click()
        tab.get_by_role("heading", name=re.compile("Overview")).wait_for()
        tab.get_by_role("button", name="Sign out").click()
        tab.get_by_role("heading", name="Sign in").wait_for()
        p.shot("sign-in")
    finally:
        p.errors = [e for e in p.errors if "401" not in e]
        p.close()
    time.sleep(0)


def test_send_a_signal_from_the_run_page(page: Page, http: httpx.Client) -> None:
    run_id = _start(http, "approval", {"what": "console"})
    tab = page.open(f"#/runs/{run_id}")
    tab.get_by_text("waiting for signal approved").wait_for()
    tab.get_by_label("Payload (JSON)").fill('{"by": "<b>console</b>"}')
    tab.get_by_role("button", name="Send signal").click()
    tab.get_by_role("heading", name=re.compile(f"Run {run_id}")).locator(".s-succeeded").wait_for()
    assert http.get(f"/v1/runs/{run_id}").json()["run"]["output"]["after"] == {"message": "<b>console</b>"}
    assert tab.locator("main b").count() == 0  # the payload's markup is text
    page.shot("run-signal")


def test_schedules_page_pauses_resumes_and_triggers(page: Page, http: httpx.Client) -> None:
    tab = page.open("#/schedules")
    tab.get_by_role("heading", name="Schedules").wait_for()
    row = tab.locator("tbody tr", has_text="ticker")
    row.get_by_role("button", name="Pause ticker").click()
    row.locator(".s-paused").wait_for()
    assert http.get("/v1/schedules").json()["schedules"][0]["paused"] is True
    page.shot("schedules")
    row.get_by_role("button", name="Resume ticker").click()
    row.locator(".s-active").wait_for()
    row.get_by_role("button", name="Trigger ticker now").click()
    tab.wait_for_url(re.compile(r"#/runs/[0-9a-f]{32}$"))
    tab.get_by_role("heading", name=re.compile("Run ")).locator(".s-succeeded").wait_for()


def test_events_page_shows_subscriptions_dead_letters_and_replays(page: Page, http: httpx.Client) -> None:
    tag = "console-" + str(int(time.time() * 1000))
    http.post("/v1/events", json={"type": "order.placed", "key": tag, "id": f"{tag}-bad", "payload": {"amount": XSS}})
    wait_until(
        lambda: any(d["event"]["id"] == f"{tag}-bad" for d in http.get("/v1/dead-letters").json()["dead_letters"]), 30, what="a dead letter"
    )
    tab = page.open("#/events")
    tab.get_by_role("heading", name="Dead letters").wait_for()
    tab.locator("tbody tr", has_text="orders").first.wait_for()
    row = tab.locator("tbody tr", has_text=f"{tag}-bad")
    row.first.wait_for()
    assert tab.evaluate("window.__xss") is None  # the payload is text here too
    page.shot("events")
    row.get_by_role("button", name=re.compile("^Replay")).click()
    tab.get_by_role("alert").filter(has_text="failed again").wait_for()  # still poison: said, kept
    page.errors = [e for e in page.errors if "409" not in e]
