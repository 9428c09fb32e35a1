"""The only place serveflow calls ``ray.init``.

Code that runs outside Serve (tests, the load tool, bootstrap scripts) calls
:func:`connect` before touching Ray. Replicas never call it: Serve has already
connected them.
"""

from __future__ import annotations

import threading
from typing import Any

from serve_app.core.settings import Settings

_lock = threading.Lock()


def connect(*, address: str | None = None, namespace: str | None = None, **init_kwargs: Any) -> None:
    """Connect this process to Ray once; later calls are no-ops.

    ``address``/``namespace`` default to ``RAY_ADDRESS``/``RAY_NAMESPACE``. With
    no address (or ``"local"``) a local cluster is started (``init_kwargs`` such as
    ``num_cpus`` apply only then), with Serve's switches of ``SERVEFLOW_SERVE_PROFILE``
    (default ``haproxy``) in its environment: its processes inherit it from here. An
    existing cluster keeps the switches it was started with.
    """
    import ray

    with _lock:
        if ray.is_initialized():
            return
        settings = Settings.from_env()
        address = address if address is not None else settings.ray_address
        if address in (None, "local"):
            settings.export_serve_environment()
        ray.init(
            address=address,
            namespace=namespace if namespace is not None else settings.ray_namespace,
            **init_kwargs,
        )


def disconnect() -> None:
    """Shut down this process's Ray connection (and a local cluster it started)."""
    import ray

    with _lock:
        if ray.is_initialized():
            ray.shutdown()
