from __future__ import annotations

import pytest

from serve_app.runtime.config import AppConfig

UNIT_ARGS = {
    "pools": {
        "general": {"handler_modules": ["serve_app.examples.basic"], "task_types": ["echo", "noop", "sleep", "fail"]},
        "compute": {"handler_modules": ["serve_app.examples.compute"], "task_types": ["fib", "count_primes"]},
        "fragile": {
            "handler_modules": ["serve_app.examples.faults"],
            "task_types": ["hang", "whoami", "stall", "flaky", "block_loop"],
            "max_stuck_calls": 1,
        },
    },
    "max_body_bytes": 4096,
    "timeout_grace_s": 0.5,
}


@pytest.fixture
def config() -> AppConfig:
    return AppConfig.from_args(UNIT_ARGS)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
