"""Importing any serveflow module must not connect to Ray or start anything."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "serve_app.core.errors",
    "serve_app.core.models",
    "serve_app.runtime.config",
    "serve_app.ingress.http",
    "serve_app.runtime.dispatch",
    "serve_app.runtime.runner",
    "serve_app.runtime.tracing",
    "serve_app.core.connect",
    "serve_app.examples.basic",
    "serve_app.examples.compute",
    "serve_app.examples.faults",
    "serve_app.examples.model",
    "deployments.coordinator",
    "deployments.organism_manager",
    "deployments.metrics",
    "deployments.handler_worker",
    "graphs.serveflow",
]


def test_imports_do_not_init_ray_or_spawn_threads() -> None:
    code = (
        "import threading, importlib\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        "import ray\n"
        "assert not ray.is_initialized(), 'ray initialised at import'\n"
        "names = sorted(t.name for t in threading.enumerate())\n"
        "assert names == ['MainThread'], names\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_pure_modules_do_not_import_ray() -> None:
    pure = [m for m in MODULES if m.startswith("serve_app.") and m != "serve_app.core.connect"]
    code = f"import importlib, sys\nfor m in {pure!r}: importlib.import_module(m)\nprint('ray' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
