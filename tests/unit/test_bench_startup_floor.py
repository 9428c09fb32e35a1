"""bench.run's start-up floor: the same deployment graph as serveflow's, none of its code.

The benchmark itself runs outside the suite; this keeps its comparison honest as the graph
changes (a floor with fewer or cheaper deployments would flatter nobody but Ray).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application

from bench.baseline import build_startup_floor
from bench.run import startup_floor_config
from graphs.serveflow import build_app

ROOT = Path(__file__).resolve().parents[2]


def _deployments(app: Application) -> dict[str, tuple[Any, Any, Any]]:
    """Every deployment bound into ``app``: name -> (CPU share, replicas, autoscaling)."""
    found: dict[str, tuple[Any, Any, Any]] = {}

    def visit(value: Any) -> None:
        if isinstance(value, Application):
            d = value._bound_deployment
            found[d.name] = (d.ray_actor_options.get("num_cpus"), d.num_replicas, d._deployment_config.autoscaling_config)
            for arg in [*d.init_args, *d.init_kwargs.values()]:
                visit(arg)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    visit(app)
    return found


def _args() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]


def test_floor_has_serveflows_deployments_with_their_cpu_shares() -> None:
    serveflow = _deployments(build_app(_args()))
    assert set(serveflow) >= {"Coordinator", "OrganismManager", "MetricsCollector"}
    assert any(name.startswith("HandlerWorker_") for name in serveflow)
    assert _deployments(build_startup_floor(_args())) == serveflow


def test_floor_config_keeps_everything_but_the_import_path(tmp_path: Path) -> None:
    ours = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    floor = yaml.safe_load(startup_floor_config(tmp_path / "floor.yaml").read_text())
    assert floor["applications"][0].pop("import_path") == "bench.baseline:build_startup_floor"
    assert ours["applications"][0].pop("import_path") == "graphs.serveflow:build_app"
    assert floor == ours
