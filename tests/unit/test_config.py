from __future__ import annotations

import re

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


def test_pools_pass_serve_scaling_and_placement_through() -> None:
    from serve_app.runtime.config import PoolConfig

    pool = PoolConfig.model_validate(
        {
            "handler_modules": ["m"],
            "task_types": ["t"],
            "autoscaling_config": {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 3},
            "num_gpus": 0.5,
            "memory": 2**30,
            "resources": {"node:worker": 0.01},
            "accelerator_type": "A100",
            "runtime_env": {"env_vars": {"X": "1"}},
        }
    )
    assert pool.can_scale_to_zero
    options = pool.deployment_options()
    assert "num_replicas" not in options
    assert options["autoscaling_config"]["min_replicas"] == 0 and options["autoscaling_config"]["target_ongoing_requests"] == 3
    assert options["ray_actor_options"] == {
        "num_cpus": 0.1,
        "num_gpus": 0.5,
        "memory": 2**30,
        "resources": {"node:worker": 0.01},
        "accelerator_type": "A100",
        "runtime_env": {"env_vars": {"X": "1"}},
    }
    fixed = PoolConfig.model_validate({"handler_modules": ["m"], "task_types": ["t"], "num_replicas": 3})
    assert fixed.deployment_options() == {"ray_actor_options": {"num_cpus": 0.1}, "num_replicas": 3}
    assert not fixed.can_scale_to_zero


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"num_replicas": 2, "autoscaling_config": {"max_replicas": 2}}, "not both"),
        ({"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas (3) must be <= max_replicas (2)"),
        ({"autoscaling_config": {"max_replicas": 2, "target_ongoing": 1}}, "target_ongoing"),
        ({"num_gpus": -1}, "num_gpus"),
        ({"resources": {"x": -1}}, "non-negative"),
    ],
)
def test_bad_pool_scaling_fails_the_deploy_naming_the_field(extra: dict, message: str) -> None:
    args = {"pools": {"p": {"handler_modules": ["m"], "task_types": ["t"], **extra}}}
    with pytest.raises(ValidationError, match=re.escape(message)):
        AppConfig.from_args(args)


def test_several_coordinators_need_postgres() -> None:
    pools = {"p": {"handler_modules": ["m"], "task_types": ["t"]}}
    with pytest.raises(ValidationError, match="several Coordinator replicas need workflows.store: postgres"):
        AppConfig.from_args({"pools": pools, "coordinator": {"num_replicas": 2}})
    with pytest.raises(ValidationError, match="min_replicas must be >= 1"):
        AppConfig.from_args({"pools": pools, "workflows": {"store": "postgres"}, "coordinator": {"autoscaling_config": {"min_replicas": 0, "max_replicas": 2}}})
    ok = AppConfig.from_args({"pools": pools, "workflows": {"store": "postgres"}, "coordinator": {"num_replicas": 2, "num_cpus": 0.2}})
    assert ok.coordinator.deployment_options() == {"ray_actor_options": {"num_cpus": 0.2}, "num_replicas": 2}


def test_replica_env_goes_into_the_runtime_env_and_the_users_values_win() -> None:
    from serve_app.core.settings import GRPC_MESSAGE_ENV
    from serve_app.runtime.config import with_env

    plain = with_env({"ray_actor_options": {"num_cpus": 0.1}, "num_replicas": 1}, GRPC_MESSAGE_ENV)
    assert plain == {"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": GRPC_MESSAGE_ENV}}, "num_replicas": 1}
    mine = {"ray_actor_options": {"runtime_env": {"pip": ["x"], "env_vars": {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": "9", "A": "1"}}}}
    merged = with_env(mine, GRPC_MESSAGE_ENV)
    assert merged["ray_actor_options"]["runtime_env"] == {
        "pip": ["x"],
        "env_vars": {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": "9", "A": "1"},
    }
    assert mine["ray_actor_options"]["runtime_env"]["env_vars"] == {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": "9", "A": "1"}
    # Nothing to add: no runtime_env at all (an empty one would still keep replicas off Ray's pre-started workers).
    assert with_env({"ray_actor_options": {"num_cpus": 0.1}}, {}) == {"ray_actor_options": {"num_cpus": 0.1}}


@pytest.mark.parametrize(
    ("cluster_env", "expected"),
    [
        ({}, {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1)}),  # plain `serve run`: the runtime_env carries it
        ({"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1)}, None),  # the profile: inherited, no runtime_env
        ({"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": "8388608"}, None),  # the operator's own value wins
    ],
)
def test_replicas_get_the_grpc_message_limit_from_the_cluster_or_their_runtime_env(
    monkeypatch: pytest.MonkeyPatch, cluster_env: dict[str, str], expected: dict[str, str] | None
) -> None:
    from ray.serve._private.build_app import build_app as serve_build

    from graphs.serveflow import build_app

    monkeypatch.delenv("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", raising=False)
    for k, v in cluster_env.items():
        monkeypatch.setenv(k, v)
    pools = {"p": {"handler_modules": ["serve_app.examples.basic"], "task_types": ["echo"]}}
    built = serve_build(build_app({"pools": pools}), name="serveflow")
    envs = {d.name: (d.ray_actor_options.get("runtime_env") or {}).get("env_vars") for d in built.deployments}
    assert set(envs) == {"Coordinator", "OrganismManager", "MetricsCollector", "HandlerWorker_p"}
    assert all(env == expected for env in envs.values()), envs