from __future__ import annotations

import sys
import types

import pytest
from pydantic import BaseModel

from serve_app.runtime.handlers import HandlerLoadError, HandlerRegistry, handler, startup


def _module(name: str, **attrs: object) -> str:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return name


class In(BaseModel):
    x: int


def test_marking_is_local_and_infers_model() -> None:
    @handler("t1")
    def f(inp: In) -> int:
        return inp.x

    @handler("t2")
    async def g(payload: dict) -> dict:
        return payload

    assert f.__serveflow_handler__.input_model is In  # type: ignore[attr-defined]
    assert g.__serveflow_handler__.input_model is None  # type: ignore[attr-defined]
    assert g.__serveflow_handler__.is_async  # type: ignore[attr-defined]


def test_registry_from_example_modules() -> None:
    reg = HandlerRegistry.from_modules(["serve_app.examples.basic"], ["echo", "fail"])
    assert set(reg) == {"echo", "fail"}
    assert reg["fail"].handle_error is not None


def test_missing_module_named_in_error() -> None:
    with pytest.raises(HandlerLoadError, match="'no.such.module' failed to import: ModuleNotFoundError"):
        HandlerRegistry.from_modules(["no.such.module"], ["echo"])


def test_module_raising_at_import_is_contained() -> None:
    with pytest.raises(HandlerLoadError, match="SystemExit"):
        HandlerRegistry.from_modules(["tests.unit.exits_on_import"], ["x"])


def test_missing_task_type() -> None:
    with pytest.raises(HandlerLoadError, match="no handler registered for task type.*nope"):
        HandlerRegistry.from_modules(["serve_app.examples.basic"], ["echo", "nope"])


def test_duplicate_task_type_across_modules() -> None:
    @handler("dup")
    def a(p: dict) -> None: ...

    @handler("dup")
    def b(p: dict) -> None: ...

    m1, m2 = _module("sf_test_dup1", a=a), _module("sf_test_dup2", b=b)
    with pytest.raises(HandlerLoadError, match="'dup' is defined twice"):
        HandlerRegistry.from_modules([m1, m2], ["dup"])


async def _run_hooks(reg: HandlerRegistry, settings: dict) -> None:
    await reg.run_startup_hooks(settings)


def test_startup_hooks_run_with_settings() -> None:
    import asyncio

    seen: list[dict] = []

    @startup
    def hook(settings: dict) -> None:
        seen.append(dict(settings))

    @handler("h")
    def h(p: dict) -> None: ...

    reg = HandlerRegistry.from_modules([_module("sf_test_hooks", hook=hook, h=h)], ["h"])
    asyncio.run(_run_hooks(reg, {"k": 1}))
    assert seen == [{"k": 1}]


def test_failing_startup_hook_is_a_load_error() -> None:
    import asyncio

    @startup
    async def broken(settings: dict) -> None:
        raise OSError("weights file missing")

    @handler("h2")
    def h2(p: dict) -> None: ...

    reg = HandlerRegistry.from_modules([_module("sf_test_badhook", broken=broken, h2=h2)], ["h2"])
    with pytest.raises(HandlerLoadError, match="startup hook .*broken failed: OSError: weights file missing"):
        asyncio.run(_run_hooks(reg, {}))
