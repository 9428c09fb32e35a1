"""A handler whose module needs expensive setup (like loading a model) before serving."""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

from pydantic import BaseModel

from serve_app.runtime.handlers import handler, startup

_state: dict[str, Any] = {}


@startup
async def load_model(settings: Mapping[str, Any]) -> None:
    """Pretend to load a model; ``load_seconds`` in the pool settings says how long."""
    await asyncio.sleep(float(settings.get("load_seconds", 0)))
    _state["vocabulary"] = {w: i for i, w in enumerate(settings.get("vocabulary", ["hello", "world"]))}


class TokenizeIn(BaseModel):
    text: str


@handler("tokenize")
def tokenize(inp: TokenizeIn) -> dict[str, list[int]]:
    """Map words to ids from the loaded vocabulary (-1 for unknown words)."""
    vocab = _state["vocabulary"]
    return {"ids": [vocab.get(w, -1) for w in inp.text.split()]}
