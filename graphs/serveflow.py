"""The serveflow graph: Coordinator -> OrganismManager -> pools + MetricsCollector."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.affinity_router import AFFINITY_ROUTER
from deployments.coordinator import Coordinator
from deployments.handler_worker import HandlerWorker
from deployments.metrics import MetricsCollector
from deployments.organism_manager import OrganismManager
from serve_app.runtime.config import AppConfig, pool_deployment_name, with_env
from serve_app.core.settings import Settings
from serve_app.workflow.loader import load_schedules, load_subscriptions, load_workflows


def build_app(args: dict[str, Any]) -> Application:
    """Build the application from ``serve_config.yaml``'s ``args``.

    The config is validated here, so a bad one fails the deploy with a message
    naming the field (visible in ``serve status``).
    """
    config = AppConfig.from_args(args)
    settings = Settings.from_env()
    exporter = settings.trace_exporter or config.tracing.exporter
    auth_token = settings.auth_token or config.auth_token
    database_url = settings.database_url or config.workflows.dsn
    replica_env = settings.replica_env()
    if config.workflows.store == "postgres" and not database_url:
        raise ValueError("workflows.store is postgres: set workflows.dsn or SERVEFLOW_DATABASE_URL")
    # Secrets travel apart (auth_token, database_url below), never inside the config every replica logs.
    raw = config.model_dump(mode="json", exclude={"auth_token": True, "workflows": {"dsn"}})
    pools = {
        # Serve's own scaling and placement, as validated by PoolConfig (autoscaling, GPUs, ...).
        name: HandlerWorker.options(
            name=pool_deployment_name(name),
            max_ongoing_requests=pool.max_ongoing_requests,
            max_queued_requests=pool.max_queued_requests,
            **with_env(pool.deployment_options(), replica_env),
            **({"request_router_config": {"request_router_class": AFFINITY_ROUTER}} if pool.result_affinity else {}),
        ).bind(name, pool.model_dump(mode="json"), exporter)
        for name, pool in config.pools.items()
    }
    metrics = MetricsCollector.options(**with_env({"ray_actor_options": {"num_cpus": config.metrics_cpus}}, replica_env)).bind(
        config.metrics_refresh_s
    )
    manager = OrganismManager.options(**with_env({"ray_actor_options": {"num_cpus": config.manager_cpus}}, replica_env)).bind(
        raw, pools, metrics
    )
    # Invalid workflows fail the deploy here, with the step named (visible in `serve status`).
    workflows = load_workflows(config.workflows, config.routes())
    load_schedules(config.workflows, workflows)  # bad cron, zone, workflow or input: the deploy fails, named
    load_subscriptions(config.workflows, workflows, config.routes())
    specs = {name: spec.model_dump(mode="json") for name, spec in workflows.items()}
    return Coordinator.options(**with_env(config.coordinator.deployment_options(), replica_env)).bind(
        raw, manager, pools, specs, exporter, auth_token, database_url
    )
