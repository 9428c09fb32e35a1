from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.runtime.config import AppConfig, pool_deployment_name
from tests.unit.conftest import UNIT_ARGS


def test_routes(config: AppConfig) -> None:
    routes = config.routes()
    assert routes["echo"] == "general" and routes["fib"] == "compute"


def test_task_type_in_two_pools_is_rejected() -> None:
    args = {
        "pools": {
            "a": {"handler_modules": ["m"], "task_types": ["echo"]},
            "b": {"handler_modules": ["m"], "task_types": ["echo"]},
        }
    }
    with pytest.raises(ValidationError, match="routed to both pool 'a' and 'b'"):
        AppConfig.from_args(args)


@pytest.mark.parametrize("bad", ["1pool", "po-ol", "p ool"])
def test_bad_pool_names(bad: str) -> None:
    with pytest.raises(ValidationError, match="pool name"):
        AppConfig.from_args({"pools": {bad: {"handler_modules": ["m"], "task_types": ["t"]}}})


def test_unknown_fields_and_empty_pools_rejected() -> None:
    with pytest.raises(ValidationError):
        AppConfig.from_args({"pools": {}})
    with pytest.raises(ValidationError, match="extra"):
        AppConfig.from_args({**UNIT_ARGS, "typo_field": 1})


def test_deployment_name() -> None:
    assert pool_deployment_name("general") == "HandlerWorker_general"


def test_shipped_serve_config_is_valid() -> None:
    import pathlib

    import yaml

    doc = yaml.safe_load((pathlib.Path(__file__).parents[2] / "serve_config.yaml").read_text())
    (app,) = doc["applications"]
    assert app["import_path"] == "graphs.serveflow:build_app"
    cfg = AppConfig.from_args(app["args"])
    assert len(cfg.pools) >= 2
