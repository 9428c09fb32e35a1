"""The console's files as the Coordinator's HTTP app serves them (no Ray, no browser).

The browser drives the console against real Serve in tests/integration/test_console.py.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest
from starlette.testclient import TestClient

from serve_app.console import ASSETS, HEADERS
from serve_app.ingress.auth import BearerAuth
from serve_app.ingress.http import build_http_app
from serve_app.ingress.operations import Backend
from serve_app.runtime.config import AppConfig
from serve_app.testing import in_process_dispatcher


async def _status() -> dict[str, Any]:
    return {"status": "healthy"}


@pytest.fixture
def client(config: AppConfig) -> Iterator[TestClient]:
    dispatcher, board, pools = in_process_dispatcher(config)
    app = build_http_app(Backend(dispatcher, board, _status), max_body_bytes=config.max_body_bytes, auth=BearerAuth("s3cret"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    pools.close()


def test_the_page_and_its_assets_are_served_with_a_strict_policy(client: TestClient) -> None:
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "ui/"  # relative: right under any route prefix
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, value in HEADERS.items():
        assert page.headers[name] == value
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    referenced = set(re.findall(r'(?:src|href)="([^"#:]+)"', page.text))
    assert referenced == {"console.css", "console.js"}  # everything the page loads ships with it
    for name in referenced:
        asset = client.get(f"/ui/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(ASSETS[name])
    assert "innerHTML" not in client.get("/ui/console.js").text  # values are written as text, never as HTML


def test_no_cdn_and_no_inline_script(client: TestClient) -> None:
    page = client.get("/ui/").text
    script = client.get("/ui/console.js").text
    assert "<script>" not in page and "style=" not in page
    urls = set(re.findall(r"https?://[^\s\"'`)]+", page + script + client.get("/ui/console.css").text))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace name, never fetched


@pytest.mark.parametrize("path", ["/ui/../v1/status", "/ui/nope.js", "/ui/%2e%2e/pyproject.toml", "/ui/static/console.js"])
def test_anything_else_under_ui_is_the_structured_404(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (401, 404)
    assert r.json()["success"] is False and "Traceback" not in r.text


def test_the_shell_is_public_but_the_data_needs_the_token(client: TestClient) -> None:
    assert client.get("/ui/").status_code == 200
    assert client.get("/v1/status").status_code == 401
    assert client.get("/v1/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
