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
