"""House rules that are cheap to check mechanically."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).parents[2]
SOURCES = [p for d in ("serve_app", "deployments", "graphs") for p in (ROOT / d).rglob("*.py")]


def test_ray_init_only_in_connect() -> None:
    offenders = [p for p in SOURCES if re.search(r"\bray\.init\(", p.read_text()) and p.name != "connect.py"]
    assert offenders == []


def test_environment_read_in_one_place() -> None:
    offenders = [
        p.relative_to(ROOT)
        for p in SOURCES
        if re.search(r"os\.environ|os\.getenv", p.read_text()) and p.name != "settings.py"
    ]
    assert offenders == []


def test_deployment_constructors_are_async() -> None:
    for p in (ROOT / "deployments").glob("*.py"):
        text = p.read_text()
        if "@serve.deployment" in text:
            assert "async def __init__" in text and "def __init__(self" not in text.replace("async def __init__", ""), p
            assert "async def check_health" in text and "async def get_status" in text, p
            assert "run_until_complete" not in text, p


# What the client side (SDK, CLI, load tool) may import of serveflow: the shared core and the
# generated protobuf code, never a server module (dispatcher, engine, store, ingress, runtime).
CLIENT_MAY_IMPORT = (
    "serve_app",
    "serve_app.client",
    "serve_app.core",
    "serve_app.core.codec",
    "serve_app.core.errors",
    "serve_app.core.jsonio",
    "serve_app.core.models",
    "serve_app.core.retry",
    "serve_app.core.settings",
    "serve_app.proto",
)


def test_the_client_imports_no_server_module() -> None:
    import subprocess
    import sys

    code = (
        "import sys, serve_app.client, serve_app.client.cli, serve_app.client.load;"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith(('serve_app', 'deployments', 'graphs', 'ray')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    loaded = out.split()
    assert "serve_app.client.sdk" in loaded  # the probe itself works

    def allowed(module: str) -> bool:
        return module in CLIENT_MAY_IMPORT or module.startswith(("serve_app.client.", "serve_app.proto."))

    assert [m for m in loaded if m.startswith("serve_app") and not allowed(m)] == []
    assert [m for m in loaded if m.startswith(("deployments", "graphs", "ray"))] == []


def test_pure_modules_do_not_import_ray() -> None:
    pure = [p for p in (ROOT / "serve_app").rglob("*.py") if p.name != "connect.py"]
    offenders = [p.relative_to(ROOT) for p in pure if re.search(r"^\s*(import ray|from ray)", p.read_text(), re.M)]
    assert offenders == []
