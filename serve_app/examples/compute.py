"""CPU-bound example handlers."""

from __future__ import annotations

import zlib
from typing import Any

from pydantic import BaseModel, Field

from serve_app.runtime.handlers import handler


class FibIn(BaseModel):
    n: int = Field(ge=0, le=100_000)


@handler("fib")
def fib(inp: FibIn) -> dict[str, int | str]:
    """The n-th Fibonacci number (as a string when it is too big for JSON numbers)."""
    a, b = 0, 1
    for _ in range(inp.n):
        a, b = b, a + b
    return {"n": inp.n, "value": a if a < 2**53 else str(a)}


class PrimesIn(BaseModel):
    limit: int = Field(ge=2, le=5_000_000)


@handler("count_primes")
def count_primes(inp: PrimesIn) -> dict[str, int]:
    """Count primes below ``limit`` with a sieve (burns CPU on purpose)."""
    sieve = bytearray([1]) * inp.limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(inp.limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, inp.limit, i)))
    return {"limit": inp.limit, "primes": sum(sieve)}


class BlobIn(BaseModel):
    size: int = Field(ge=0, le=1 << 30, description="Bytes to make.")
    text: bool = Field(False, description="A JSON string of `size` characters instead of bytes.")


@handler("make_blob")
def make_blob(inp: BlobIn) -> bytes | str:
    """``size`` bytes. Not JSON: in a workflow it stays in Ray's object store (kept by reference)
    and goes straight to the step that reads it. With ``text`` a JSON string, kept by reference
    only above ``workflows.result_by_ref_bytes``."""
    return "x" * inp.size if inp.text else bytes(inp.size)


@handler("blob_stats")
def blob_stats(payload: dict[str, Any]) -> dict[str, Any]:
    """Size and checksum of ``payload["data"]`` (bytes from an upstream step, or a string)."""
    data = payload.get("data")
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data is a {type(data).__name__}, not bytes")
    return {"bytes": len(data), "adler32": zlib.adler32(data)}
