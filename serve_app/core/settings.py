"""The one place that reads the process environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Settings:
    """Environment-derived settings for code that runs outside Serve replicas."""

    ray_address: str | None
    ray_namespace: str
    serveflow_url: str
    trace_exporter: str | None
    auth_token: str | None
    database_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            ray_address=env.get("RAY_ADDRESS") or None,
            ray_namespace=env.get("RAY_NAMESPACE") or "serveflow",
            serveflow_url=(env.get("SERVEFLOW_URL") or "http://127.0.0.1:8000").rstrip("/"),
            trace_exporter=env.get("SERVEFLOW_TRACE_EXPORTER") or None,
            auth_token=env.get("SERVEFLOW_AUTH_TOKEN") or None,
            database_url=env.get("SERVEFLOW_DATABASE_URL") or None,
        )
