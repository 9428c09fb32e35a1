"""The handler API: plain functions registered for a task type.

A handler module marks functions with :func:`handler`; marking mutates nothing
global, it only attaches a :class:`HandlerSpec` to the function. A HandlerWorker
builds its :class:`HandlerRegistry` from the modules its pool config names, so
which code can run is decided by ``serve_config.yaml``, never by request data.

Example::

    from pydantic import BaseModel
    from serve_app.runtime.handlers import handler

    class EchoIn(BaseModel):
        message: str

    @handler("echo")
    def echo(inp: EchoIn) -> dict:
        return {"message": inp.message}
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Awaitable, Callable, Iterator, Mapping, Protocol, get_type_hints

from pydantic import BaseModel

from serve_app.core.errors import ServeflowError

SPEC_ATTR = "__serveflow_handler__"
STARTUP_ATTR = "__serveflow_startup__"

StartupHook = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class HandlerErrorContext:
    """Everything an error hook may look at (one object, so fields can be added)."""

    task_type: str
    task_id: str
    payload: Mapping[str, Any]
    exception: BaseException


class ErrorHook(Protocol):
    def __call__(self, ctx: HandlerErrorContext) -> ServeflowError | None: ...


@dataclass(frozen=True)
class HandlerSpec:
    """A registered handler."""

    task_type: str
    fn: Callable[[Any], Any] | Callable[[Any], Awaitable[Any]]
    input_model: type[BaseModel] | None
    handle_error: ErrorHook | None
    is_async: bool
    description: str


def handler(
    task_type: str,
    *,
    input_model: type[BaseModel] | None = None,
    handle_error: ErrorHook | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark ``fn`` as the handler for ``task_type``.

    The input model defaults to the annotation of the function's first
    parameter when that is a pydantic model; otherwise the payload dict is
    passed as is. ``handle_error`` may return a :class:`ServeflowError` to
    report instead of the default ``handler_error`` (or ``None`` to keep it).
    """

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        model = input_model if input_model is not None else _infer_input_model(fn)
        spec = HandlerSpec(
            task_type=task_type,
            fn=fn,
            input_model=model,
            handle_error=handle_error,
            is_async=inspect.iscoroutinefunction(fn),
            description=inspect.getdoc(fn) or "",
        )
        setattr(fn, SPEC_ATTR, spec)
        return fn

    return mark


def startup(fn: StartupHook) -> StartupHook:
    """Mark ``fn(settings)`` (sync or async) to run once when a replica loads the module.

    Use it for expensive setup such as loading a model; the pool is not ready
    until every hook has finished. ``settings`` is the pool's ``settings`` map
    from ``serve_config.yaml``. A hook that raises makes the pool unhealthy.
    """
    setattr(fn, STARTUP_ATTR, True)
    return fn


def _infer_input_model(fn: Callable[..., Any]) -> type[BaseModel] | None:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return None
    try:
        hint = get_type_hints(fn).get(params[0].name)
    except Exception:  # unresolvable forward refs: fall back to the raw payload
        return None
    if inspect.isclass(hint) and issubclass(hint, BaseModel):
        return hint
    return None


class HandlerLoadError(Exception):
    """A pool's handlers could not be loaded; the message says which and why."""


class HandlerRegistry(Mapping[str, HandlerSpec]):
    """Immutable task type -> handler mapping for one pool."""

    def __init__(self, specs: Mapping[str, HandlerSpec], startup_hooks: list[StartupHook] | None = None) -> None:
        self._specs = dict(specs)
        self.startup_hooks: tuple[StartupHook, ...] = tuple(startup_hooks or ())

    def __getitem__(self, task_type: str) -> HandlerSpec:
        return self._specs[task_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    @classmethod
    def from_modules(cls, modules: list[str], task_types: list[str]) -> HandlerRegistry:
        """Import ``modules`` and keep the handlers for ``task_types``.

        Raises :class:`HandlerLoadError` naming every module that failed to
        import, duplicated task types, and configured task types no module
        provides.
        """
        found: dict[str, HandlerSpec] = {}
        hooks: list[StartupHook] = []
        problems: list[str] = []
        for name in modules:
            try:
                module = importlib.import_module(name)
            except BaseException as exc:  # a module may even call sys.exit
                problems.append(f"handler module {name!r} failed to import: {type(exc).__name__}: {exc}")
                continue
            hooks.extend(v for v in vars(module).values() if callable(v) and getattr(v, STARTUP_ATTR, False) is True)
            for spec in _specs_in(module):
                if spec.task_type in found and found[spec.task_type].fn is not spec.fn:
                    problems.append(f"task type {spec.task_type!r} is defined twice (module {name!r})")
                found[spec.task_type] = spec
        missing = [t for t in task_types if t not in found]
        if missing and not problems:
            problems.append(f"no handler registered for task type(s) {', '.join(sorted(missing))} in modules {modules}")
        if problems:
            raise HandlerLoadError("; ".join(problems))
        return cls({t: found[t] for t in task_types}, hooks)

    async def run_startup_hooks(self, settings: Mapping[str, Any]) -> None:
        """Run every module's startup hook; raises HandlerLoadError naming the one that failed."""
        for hook in self.startup_hooks:
            try:
                if inspect.iscoroutinefunction(hook):
                    await hook(settings)
                else:
                    await asyncio.to_thread(hook, settings)
            except Exception as exc:
                name = f"{hook.__module__}.{hook.__qualname__}"
                raise HandlerLoadError(f"startup hook {name} failed: {type(exc).__name__}: {exc}") from exc


def _specs_in(module: ModuleType) -> Iterator[HandlerSpec]:
    for value in vars(module).values():
        spec = getattr(value, SPEC_ATTR, None)
        if isinstance(spec, HandlerSpec):
            yield spec
