"""Resource snapshots: local via psutil, or the cluster view from Ray's state API."""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import psutil


def local_snapshot() -> dict[str, Any]:
    """This node's resources, measured directly (the fallback when Ray's state API is not usable)."""
    mem = psutil.virtual_memory()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "source": "local",
        "node": {
            "cpu_count": psutil.cpu_count() or 0,
            "cpu_percent": psutil.cpu_percent(interval=None),
            "load_avg": load,
            "memory_total_bytes": mem.total,
            "memory_available_bytes": mem.available,
            "memory_percent": mem.percent,
        },
    }


def cluster_snapshot(
    total: Mapping[str, float], available: Mapping[str, float], nodes: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """Cluster view from Ray: logical resources in use and per-node state."""
    keys = ("CPU", "GPU", "memory", "object_store_memory")
    return {
        "source": "ray",
        "resources": {
            k: {"total": float(total.get(k, 0.0)), "available": float(available.get(k, 0.0))}
            for k in keys
            if k in total
        },
        "nodes": [
            {
                "node_id": n.get("node_id"),
                "state": n.get("state"),
                "ip": n.get("node_ip"),
                "is_head": bool(n.get("is_head_node")),
                "resources": dict(n.get("resources_total") or {}),
            }
            for n in nodes
        ],
    }
